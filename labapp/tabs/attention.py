"""The attention tab (issue 32): what each word does. Lays out the tab and wires its own events;
the page (app.py) only places it. Handlers: labapp/attention_view.py.

    with gr.Tab("What each word does", id="attention"):
        components = attention.build(engine, gpu)
"""
from __future__ import annotations

import gradio as gr

from .. import attention_view as view
from .. import engine as eng
from .. import validation as check
from ..generate import MAX_STEPS

INTRO = (
    "The prompt reaches the UNet only through cross-attention: at every step each latent pixel spreads its "
    "attention over the prompt's tokens. **Record** runs one generation and keeps, per step, where each word's "
    "attention goes (the conditional branch, mean over heads and layers; DAAM, Tang et al. 2023). Pick a word: "
    "its map over the image and over the predicted x0 at the step on the slider, and the curve of when it "
    "matters. Emphasis works here as in Generate: `(red:1.4)`, `(red)`, `[red]`."
)


def build(engine: eng.Engine, gpu: dict, prompt_value: str = "a large red circle in the top left") -> dict:
    """Lay out the tab inside the caller's ``gr.Tab`` and wire its events; returns its components
    by name (the prompt box, for a page that wants to send Generate's prompt here)."""
    default_scheduler, default_steps, default_guidance = engine.defaults()
    gr.Markdown(INTRO, elem_classes="lab-note")
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value=prompt_value, lines=2, max_length=check.MAX_PROMPT_CHARS,
                                elem_id="attention-prompt")
            negative_prompt = gr.Textbox(label="Negative prompt", value="", max_length=check.MAX_PROMPT_CHARS)
        with gr.Column(scale=1):
            scheduler = gr.Dropdown(eng.known_schedulers(), value=default_scheduler, label="Scheduler")
            with gr.Row():
                steps = gr.Slider(1, MAX_STEPS, value=default_steps, step=1, label="Steps")
                guidance_scale = gr.Slider(0, 30, value=default_guidance, step=0.5, label="Guidance scale")
            seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, maximum=check.MAX_SEED)
        with gr.Column(scale=1, min_width=160):
            record_btn = gr.Button("Record attention", variant="primary", elem_id="attention-record")
            status = gr.Markdown("", elem_id="attention-status", elem_classes="run-status")
    word_index = gr.Number(value=0, precision=0, visible=False)  # /attention_maps' word_index (the chips' value later)
    lora = gr.Textbox(value="", visible=False)  # /attention_maps' lora (a blend spec, as /generate's)
    words = gr.Radio([], label="Words (pick one)", elem_id="attention-words", elem_classes="word-chips")
    step = gr.Slider(view.ALL_STEPS, max(1, default_steps - 1), value=view.ALL_STEPS, step=1,
                     label="Step (-1: mean over all steps)", elem_id="attention-step")
    with gr.Row():
        over_image = gr.Image(label="Its map over the image", type="pil", elem_id="attention-over-image",
                              elem_classes="pixelated")
        over_x0 = gr.Image(label="Its map over the predicted x0 at the step", type="pil",
                           elem_id="attention-over-x0", elem_classes="pixelated")
    trust = gr.Markdown("", elem_id="attention-trust")
    curve = gr.Plot(label="When does this word matter", elem_id="attention-curve")
    with gr.Accordion("The numbers (what /attention_maps returns)", open=False):
        numbers = gr.JSON(label="words, map, attention share per step")
    with gr.Row():
        weights_btn = gr.Button("This word at weights 0.5 / 1 / 1.5", size="sm", elem_id="attention-weights")
    weights_gallery = gr.Gallery(label="Image and map at each weight", columns=6, height="auto", object_fit="contain",
                                 elem_classes="pixelated", elem_id="attention-weights-grid")
    run = gr.State(None)

    shown = [over_image, over_x0, curve, trust, numbers]
    record_btn.click(view.record, [prompt, negative_prompt, scheduler, steps, guidance_scale, seed, word_index, step,
                                   lora],
                     [words, *shown, run, step], api_name="attention_maps", show_progress_on=status, **gpu)
    words.input(view.view, [run, words, step], shown, api_visibility="private", show_progress="hidden")
    # scrubbing: every user move of the slider or its number box (no model call; the latest move wins)
    step.input(view.view, [run, words, step], shown, api_visibility="private", show_progress="hidden",
               trigger_mode="always_last")
    weights_btn.click(view.compare_weights, [run, words], weights_gallery, api_visibility="private",
                      show_progress_on=status, **gpu)
    return dict(prompt=prompt, negative_prompt=negative_prompt, words=words, step=step, over_image=over_image,
                over_x0=over_x0, curve=curve, trust=trust, numbers=numbers, run=run, record=record_btn)
