"""Parts every tab builder uses: the crisp pixel gallery, a lab's run button with its status line,
an endpoint whose page event shows readable errors, and the chain that follows a new trace into
the labs (the Timestep explorer and the CFG lab)."""
from __future__ import annotations

import functools
import html
import inspect

import gradio as gr

from .. import trace_views


def pixel_gallery(label: str, columns: int, height="auto", **kwargs) -> gr.Gallery:
    """A gallery for small generated images: whole images (contain), crisp pixels, sized to its items."""
    classes = ["pixelated", *([kwargs.pop("elem_classes")] if "elem_classes" in kwargs else [])]
    return gr.Gallery(label=label, columns=columns, height=height, object_fit="contain", elem_classes=classes, **kwargs)


def run_button(label: str, status_id: str, variant: str = "primary", stop: bool = False,
               **button_kwargs) -> tuple[gr.Button, gr.Markdown] | tuple[gr.Button, gr.Markdown, gr.Button]:
    """A lab's run button with its status line under it, in one column: progress and errors show
    beside the button, so a failed run (bad input) leaves the last good grid and plot on screen
    instead of covering them with Error pills (wire the event with ``show_progress_on=status``).
    ``stop``: a Stop button beside it as well (long runs; wire it with ``cancels=``)."""
    with gr.Column(min_width=160):
        with gr.Row():
            button = gr.Button(label, variant=variant, elem_id=f"{status_id.removesuffix('-status')}-btn",
                               **button_kwargs)
            stopper = (gr.Button("Stop", variant="stop", scale=0, min_width=70, elem_classes="lab-stop") if stop
                       else None)
        status = gr.Markdown("", elem_id=status_id, elem_classes="run-status")
    return (button, status, stopper) if stop else (button, status)


def readable_errors(handler):
    """``handler`` for a page event: its gr.Error text HTML-escaped. Gradio's toast renders the
    message as HTML, so a value such as ``mask_drawing='<nothing painted>'`` would lose its
    ``<...>`` part; API clients keep the raw text (their event is ``endpoint``'s hidden twin)."""
    def escaped(error: gr.Error) -> gr.Error:
        return gr.Error(html.escape(str(error.message)), title=error.title, duration=error.duration)

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def stream(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except gr.Error as error:
                raise escaped(error) from None
        return stream

    @functools.wraps(handler)
    def call(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error as error:
            raise escaped(error) from None
    return call


def endpoint(trigger: gr.Button, fn, inputs: list, outputs: list, api_name: str, page_inputs: list | None = None,
             **kwargs):
    """The API endpoint ``api_name`` (``fn`` on ``inputs``, raw error text) on a hidden twin button,
    and ``trigger``'s page event: ``fn`` on ``page_inputs`` (default ``inputs``; a lab may offer its
    own controls without changing the endpoint's parameters or defaults) with readable errors.
    Returns the page event (chain ``.success`` on it)."""
    twin = gr.Button(api_name, visible=False, elem_classes="api-twin")
    twin.click(fn, inputs, outputs, api_name=api_name, **kwargs)
    return trigger.click(readable_errors(fn), page_inputs or inputs, outputs, api_visibility="private", **kwargs)


def follow_trace(event, trace: gr.State, explorer, cfg, gpu: dict):
    """After ``event`` stored a new trace: the explorer's and the CFG lab's sliders move to its steps,
    the explorer shows its frames and details, and the CFG lab the step where guidance shows most."""
    return (event.success(trace_views.step_slider_updates, trace, [explorer.slider, cfg.step],
                          api_visibility="private")
            .then(trace_views.explore_frames, [trace, explorer.decoder], explorer.frames, api_visibility="private",
                  **gpu)
            .then(trace_views.explore_details, [trace, explorer.slider], explorer.details, api_visibility="private")
            .then(trace_views.cfg_step, [trace, cfg.step, cfg.decoder], cfg.views, api_visibility="private", **gpu))
