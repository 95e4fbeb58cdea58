"""The Scheduler lab: where each scheduler's timesteps sit on the training schedule (plotted on
load), and the schedulers run side by side on the Generate tab's prompt and seed."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from pipelines.schedulers import SIGMA_KINDS

from .. import docs, labs
from .. import engine as eng
from .. import generate as gen
from .parts import endpoint, pixel_gallery, run_button

DEFAULT_SCHEDULERS = ["DDIM", "Euler a", "DPM++ 2M Karras", "Heun"]


def build(g, demo: gr.Blocks, gpu: dict) -> SimpleNamespace:
    """Lay out the Scheduler lab (``g``: the Generate tab's namespace: prompt, negative prompt,
    guidance and seed of the comparison) and wire it; returns its components."""
    gr.Markdown(docs.LAB_INTROS["scheduler"], elem_classes="lab-note")
    s = {}
    with gr.Row():
        s["schedulers"] = gr.CheckboxGroup(eng.known_schedulers(), value=DEFAULT_SCHEDULERS, label="Schedulers")
    with gr.Row():
        s["steps"] = gr.Slider(1, 50, value=10, step=1, label="Steps")
        s["spacing"] = gr.Dropdown(list(gen.SPACINGS), value="model default", label="Timestep spacing",
                                   info=docs.INFO["spacing"])
        s["sigmas"] = gr.Dropdown(list(SIGMA_KINDS), value="default", label="Sigmas", info=docs.INFO["sigmas"])
    with gr.Row():
        s["plot_btn"] = gr.Button("Plot schedules", elem_id="schedule-btn")
        s["compare_btn"], status, stop = run_button("Compare samplers on the Generate prompt and seed",
                                                    "compare-status", stop=True)
    # below the run buttons, so the buttons stay on the first screen at 1280x720
    with gr.Accordion("Sampler notes: which need more steps on this model, and why", open=False):
        gr.Markdown(docs.scheduler_notes_markdown() + docs.INFO["log_snr"])
    s["plot"] = gr.Plot(label="Training schedule and chosen timesteps", show_label=False, elem_id="schedule-plot")
    with gr.Accordion("Chosen timesteps (data)", open=False):
        s["data"] = gr.JSON(label="Chosen timesteps", show_label=False)
    s["finals"] = pixel_gallery("Final images", 4, elem_id="compare-finals")
    s["trajectories"] = pixel_gallery("x0 trajectories (one row per sampler: predicted x0 at the labeled steps)",
                                      labs.TRAJECTORY_FRAMES, elem_id="compare-trajectories",
                                      elem_classes="trajectories")
    s["calls"] = gr.Plot(label="Model calls", show_label=False)

    gr.on([s["plot_btn"].click, demo.load], labs.schedule, [s["schedulers"], s["steps"], s["spacing"], s["sigmas"]],
          [s["plot"], s["data"]], api_name="schedule")
    f = g.form
    event = endpoint(s["compare_btn"], labs.compare_schedulers,
                     [f["prompt"], f["negative_prompt"], s["schedulers"], s["steps"], f["guidance_scale"], f["seed"]],
                     [s["finals"], s["trajectories"], s["calls"]], "compare_schedulers", show_progress_on=status, **gpu)
    stop.click(None, cancels=[event], api_visibility="private", queue=False)
    return SimpleNamespace(**s)
