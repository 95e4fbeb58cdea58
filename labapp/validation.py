"""Input checks for every handler: each failure is a ``gr.Error`` naming the field, the bad
value and what is allowed, so API clients and the browser get the same clear message. The checks
themselves are ``pipelines/fields.py`` (no gradio there); here they raise ``gr.Error``, and
``gradio_errors`` is every handler's one ValueError -> gr.Error path.

Every event of the app runs with ``preprocess=False`` (``labapp/fields.py``): the handlers get
the JSON values the client sent, and these checks are the only ones. Gradio's own component checks
would run first, name the value but not the field ("Value 0 is less than minimum value 1."), and
silently coerce (``1.5`` -> 2 for a Number with precision 0, ``True`` -> 1 step, ``"yes"`` -> a
ticked checkbox, a list prompt -> its ``str()``). Here nothing is coerced: a value of the wrong
JSON type is refused with the field named, and bounds print as written (4294967295, not 4.29e+09).
"""
from __future__ import annotations

import functools
import inspect

import gradio as gr

from pipelines import fields
from pipelines.fields import MAX_LIST_ITEMS, MAX_LORA_CHARS, MAX_PROMPT_CHARS, MAX_SEED, FieldError, bound  # noqa: F401  (re-exported: the handlers check fields through validation)

TITLE_INPUT, TITLE_SETTINGS = "Invalid input", "Invalid settings"


def as_gradio(error: ValueError) -> gr.Error:
    """A refused value (FieldError: the field, the value, what is allowed) or a combination the
    pipeline refuses (any other ValueError) as the message Gradio shows its clients."""
    if isinstance(error, gr.Error):
        return error
    return gr.Error(str(error), title=TITLE_INPUT if isinstance(error, FieldError) else TITLE_SETTINGS)


def gradio_errors(handler):
    """Every handler's one error path: ValueError (FieldError included) -> gr.Error with its message.

    Generators too (the error may come at any yield). The signature is kept (``functools.wraps``):
    Gradio reads a handler's inputs, gr.Progress and gr.Request from it."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def stream(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except ValueError as error:
                raise as_gradio(error) from None
        return stream

    @functools.wraps(handler)
    def call(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except ValueError as error:
            raise as_gradio(error) from None
    return call


def fail(field: str, value, allowed: str) -> gr.Error:
    return as_gradio(FieldError(field, value, allowed))


# the checks of pipelines/fields.py, raising gr.Error (handlers call them before any work)
text = gradio_errors(fields.text)
boolean = gradio_errors(fields.boolean)
number = gradio_errors(fields.number)
integer = gradio_errors(fields.integer)
choice = gradio_errors(fields.choice)
choices = gradio_errors(fields.choices)
number_list = gradio_errors(fields.number_list)
json_value = gradio_errors(fields.json_value)


def take_raw_inputs(demo) -> None:
    """Every event of ``demo`` gets its inputs as sent (``preprocess=False``): the handlers' checks
    above are then the only ones, with the field named and nothing coerced, and Gradio's
    ``Image.preprocess`` (which opened any path a forged payload named) never runs: images go
    through ``labapp.uploads.read_image``. States still arrive as stored values.

    Except ``gr.Examples``' own event (its input is a ``gr.Dataset``): its preprocess turns the
    clicked row's index into that row of the server's own example list, which reads no file and
    cannot be steered outside the list; without it the example rows stop filling the inputs."""
    import gradio as gr

    for block_fn in demo.fns.values():
        if any(isinstance(block, gr.Dataset) for block in block_fn.inputs):
            continue
        block_fn.preprocess = False
