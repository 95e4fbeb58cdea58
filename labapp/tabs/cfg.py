"""The CFG lab: one step of the last run (three x0 guesses, where they differ, guidance over the
steps), the guidance-scale sweep, the guidance methods side by side, classifier vs classifier-free.
Before any run it says what it will show and offers Generate from here."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from pipelines.guidance import GUIDANCE_METHODS

from .. import docs, guidance_kinds, labs, trace_views
from .. import generate as gen
from .parts import endpoint, pixel_gallery, run_button

METHODS_SCALE = 12.0  # at the Generate tab's w = 3 the methods agree (their difference is how they tame large updates)
METHODS_DEFAULT = ["cfg", "apg", "cfg-zero-star"]
EMPTY = ("Nothing to show yet: **Generate** (here or on the Generate tab) makes a run, and this lab opens it at the "
         "step where guidance shows most: the unconditional, conditional and guided x0 side by side, where the two "
         "noise predictions differ, and the guidance norm over the steps.")
RUN_GENERATE_JS = "() => { document.querySelector('#generate-btn')?.click(); return []; }"


def _step_view(decoders, view_decoder) -> SimpleNamespace:
    v = {}
    with gr.Row(equal_height=True):
        v["run"] = gr.Button("Generate a run to look into", variant="primary", elem_id="cfg-generate", scale=0,
                             elem_classes="small-button",
                             min_width=220)
        v["step"] = gr.Slider(1, 2, value=1, step=1, label="Step (opens where guidance shows most)", interactive=False,
                              elem_id="cfg-step", scale=3)
        v["decoder"] = gr.Radio(list(decoders), value=view_decoder, label="Decoder", scale=1)
    v["note"] = gr.Markdown(EMPTY, elem_id="cfg-note")
    with gr.Row():
        images = [gr.Image(label=label, height=200, elem_classes="pixelated caption-outside", interactive=False,
                           placeholder=f"**{label}**", elem_id=f"cfg-{key}")
                  for key, label in (("uncond", "x0 unconditional"), ("cond", "x0 conditional"),
                                     ("guided", "x0 guided"))]
    with gr.Row():
        heat = gr.Plot(label="|eps_cond - eps_uncond|", show_label=False)
        over_steps = gr.Plot(label="Guidance norm and scale over the steps", show_label=False)
    v["views"] = [*images, heat, over_steps, v["note"]]  # trace_views.cfg_step's outputs
    return SimpleNamespace(**v)


def _sweep(g, gpu: dict) -> None:
    with gr.Accordion("Guidance-scale sweep", open=True):
        with gr.Row():
            scales = gr.Textbox(value="1, 2, 4, 7.5, 12", label="Scales (comma-separated)")
            prompts = gr.Slider(0, labs.MAX_ADHERENCE_PROMPTS, value=8, step=1,
                                label="Shapes-world prompts for the adherence curve")
            button, status, stop = run_button("Run sweep", "sweep-status", stop=True)
        grid = pixel_gallery("Same seed, rising guidance", 6, elem_id="sweep-grid")
        with gr.Row():
            plot = gr.Plot(label="Prompt adherence (scorer)", show_label=False)
            table = gr.Markdown("")
    f = g.form
    event = endpoint(button, labs.cfg_sweep, [f["prompt"], f["negative_prompt"], scales, f["seed"], f["steps"],
                                              f["scheduler"], prompts],
                     [grid, plot, table], "cfg_sweep", show_progress_on=status, **gpu)
    stop.click(None, cancels=[event], api_visibility="private", queue=False)


def _methods(g, gpu: dict) -> None:
    with gr.Accordion("Guidance methods compared", open=True):
        gr.Markdown(f"The methods differ in how they handle a large guidance update, so this comparison runs at its "
                    f"own scale (default w = {METHODS_SCALE:g}); at small w they agree.", elem_classes="lab-note")
        with gr.Row():
            methods = gr.CheckboxGroup(list(GUIDANCE_METHODS), value=METHODS_DEFAULT, label="Methods")
            scale = gr.Slider(*gen.GUIDANCE_RANGE, value=METHODS_SCALE, step=0.5, label="Guidance scale w",
                              elem_id="methods-scale")
            button, status = run_button("Compare methods", "methods-status")
        grid = pixel_gallery("Same seed, different guidance", 4, elem_id="methods-grid")
    f = g.form
    api = [f["prompt"], f["negative_prompt"], methods, f["guidance_scale"], f["seed"], f["steps"], f["scheduler"]]
    page = [f["prompt"], f["negative_prompt"], methods, scale, f["seed"], f["steps"], f["scheduler"]]
    endpoint(button, labs.compare_guidance, api, grid, "compare_guidance", page_inputs=page,
             show_progress_on=status, **gpu)


def _kinds(g, gpu: dict) -> None:
    with gr.Accordion("Classifier vs classifier-free", open=False):  # issue 15
        gr.Markdown(guidance_kinds.FORMULAS, latex_delimiters=[{"left": "$", "right": "$", "display": False}])
        with gr.Row():
            cfg_scales = gr.Textbox(value="1, 1.5, 3, 5", label="CFG scales w")
            cg_scales = gr.Textbox(value="0, 2, 4, 8, 16", label="Classifier scales s")
            prompts = gr.Slider(0, guidance_kinds.MAX_ADHERENCE_PROMPTS, value=guidance_kinds.DEFAULT_ADHERENCE_PROMPTS,
                                step=1, label="Shapes-world prompts per point")
            heat_step = gr.Slider(0, 1, value=0.5, step=0.05, label="Heat maps at (fraction of steps)")
            button, status, stop = run_button("Compare CG / CFG / CG+CFG", "kinds-status", stop=True)
        grid = pixel_gallery("Same seed: CG over s, then CFG over w", 5, elem_id="kinds-grid")
        with gr.Row():
            adherence = gr.Plot(label="Adherence curves", show_label=False)
            probs = gr.Plot(label="Classifier probability per step", show_label=False)
        with gr.Row():
            grad = gr.Plot(label="Classifier gradient", show_label=False)
            eps = gr.Plot(label="|eps_c - eps_u|", show_label=False)
        table = gr.Markdown("")
        note = gr.Markdown("", elem_classes="lab-note")
    f = g.form
    event = endpoint(button, guidance_kinds.compare_guidance_kinds,
                     [f["prompt"], f["seed"], f["steps"], f["scheduler"], f["guidance_scale"], cfg_scales, cg_scales,
                      f["classifier_scale"], prompts, heat_step],
                     [grid, adherence, table, probs, grad, eps, note], "compare_guidance_kinds",
                     show_progress_on=status, **gpu)
    stop.click(None, cancels=[event], api_visibility="private", queue=False)


def build(g, trace: gr.State, decoders, view_decoder: str, gpu: dict) -> SimpleNamespace:
    """Lay out the CFG lab (``g``: the Generate tab's namespace, whose prompt, seed, steps and scheduler
    the sweeps use); returns the step view the runs' traces open in (step, decoder, views)."""
    gr.Markdown(docs.LAB_INTROS["cfg"], elem_classes="lab-note")
    view = _step_view(decoders, view_decoder)
    view.run.click(None, js=RUN_GENERATE_JS, api_visibility="private", queue=False)
    gr.on([view.step.release, view.decoder.input], trace_views.cfg_step, [trace, view.step, view.decoder], view.views,
          api_visibility="private", **gpu)
    _sweep(g, gpu)
    _methods(g, gpu)
    _kinds(g, gpu)
    return view
