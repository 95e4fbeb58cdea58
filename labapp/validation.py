"""Input checks for every handler: each failure is a ``gr.Error`` naming the field, the bad
value and what is allowed, so API clients and the browser get the same clear message.

Every event of the app runs with ``preprocess=False`` (``labapp/fields.py``): the handlers get
the JSON values the client sent, and these checks are the only ones. Gradio's own component checks
would run first, name the value but not the field ("Value 0 is less than minimum value 1."), and
silently coerce (``1.5`` -> 2 for a Number with precision 0, ``True`` -> 1 step, ``"yes"`` -> a
ticked checkbox, a list prompt -> its ``str()``). Here nothing is coerced: a value of the wrong
JSON type is refused with the field named, and bounds print as written (4294967295, not 4.29e+09).
"""
from __future__ import annotations

import json
import math
import re

import gradio as gr

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
MAX_LIST_ITEMS = 8
MAX_LORA_CHARS = 4000


def fail(field: str, value, allowed: str) -> gr.Error:
    try:
        shown = repr(value)
    except ValueError:  # an int too long to print (sys.set_int_max_str_digits)
        shown = f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    if len(shown) > 80:
        shown = shown[:60] + f"... ({len(value) if isinstance(value, str) else len(shown)} characters)"
    return gr.Error(f"{field}={shown} is not allowed: {allowed}.", title="Invalid input")


def bound(x: float) -> str:
    """A range bound as written: 4294967295 (not 4.29497e+09), 7.5, -2."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def text(field: str, value, max_chars: int = MAX_PROMPT_CHARS, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise fail(field, value, f"text (a JSON string), not {type(value).__name__}")
    if len(value) > max_chars:
        raise fail(field, value, f"at most {max_chars} characters (got {len(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone UTF-16 surrogate ("\ud800"), sent as JSON
        raise fail(field, value, f"valid Unicode text (a lone surrogate at character {error.start})") from None
    if required and not value.strip():
        raise fail(field, value, "must not be empty")
    return value


def boolean(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise fail(field, value, "true or false")
    return value


def number(field: str, value, lo: float, hi: float) -> float:
    """A JSON number (bool and numeric strings are refused, not converted) in [lo, hi]."""
    allowed = f"a finite number in [{bound(lo)}, {bound(hi)}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(field, value, allowed)
    if isinstance(value, int) and not lo <= value <= hi:  # compared as int: 10**400 has no float
        raise fail(field, value, allowed)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise fail(field, value, allowed)
    return float(value)


def integer(field: str, value, lo: int, hi: int, multiple_of: int = 1) -> int:
    """A whole JSON number in [lo, hi] (2.0 is 2; 2.5 is refused, never rounded)."""
    allowed = f"an integer in [{bound(lo)}, {bound(hi)}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(field, value, allowed)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise fail(field, value, allowed)
    if not lo <= value <= hi:
        raise fail(field, value, allowed)
    value = int(value)
    if value % multiple_of:
        raise fail(field, value, f"a multiple of {multiple_of} in [{lo}, {hi}]")
    return value


def choice(field: str, value, allowed) -> str:
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise fail(field, value, f"one of {allowed}")
    return value


def choices(field: str, values, allowed, at_least: int = 1, at_most: int = MAX_LIST_ITEMS) -> list[str]:
    """A JSON list of names (a string is refused: Gradio would iterate it per character)."""
    if not isinstance(values, (list, tuple)):
        raise fail(field, values, f"a list of names from {list(allowed)}")
    for v in values:
        choice(field, v, allowed)
    if not at_least <= len(values) <= at_most:
        raise fail(field, values, f"between {at_least} and {at_most} names from {list(allowed)}")
    return list(dict.fromkeys(values))


def number_list(field: str, values, lo: float, hi: float, at_least: int = 1, at_most: int = MAX_LIST_ITEMS) -> list[float]:
    """'1, 3, 7.5' or [1, 3, 7.5] -> floats, each finite and in range."""
    if isinstance(values, str):
        parts = [p for p in re.split(r"[,\s;]+", values.strip()) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise fail(field, values, f"numbers in [{bound(lo)}, {bound(hi)}] separated by commas") from None
    if not isinstance(values, (list, tuple)) or not at_least <= len(values) <= at_most:
        raise fail(field, values, f"{at_least} to {at_most} numbers in [{bound(lo)}, {bound(hi)}]")
    return [number(field, v, lo, hi) for v in values]


def json_value(field: str, value, allowed: str):
    if isinstance(value, (list, dict)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise fail(field, value, allowed) from None


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
