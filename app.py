"""Diffusion Lab: watch a Stable Diffusion denoising loop, step by step.

Layout and event wiring only; handlers, plots, validation and model access live in labapp/.
`python app.py` (flags: --model, --host, --port, --share) loads the embedded shapes model on a
machine without CUDA and Stable Diffusion 1.5 with CUDA, and says which and why.
"""
from __future__ import annotations

import argparse
import logging
import os

import gradio as gr

from labapp import engine as eng
from labapp import gradio_cache, gradio_guards
from labapp import generate as gen
from labapp import labs, lora_ui, trace_store, trace_views, uploads
from labapp import validation as check
from labapp.docs import HOW_IT_WORKS, header
from pipelines.guidance import GUIDANCE_METHODS, SCALE_SCHEDULES
from pipelines.previews import PREVIEW_DECODERS
from pipelines.schedulers import SIGMA_KINDS

PIPELINE = "pipeline"  # one concurrency group for every event that touches the model
QUEUE_MAX_SIZE = 32
MAX_FILE_SIZE = uploads.MAX_IMAGE_BYTES  # bytes; data: URLs get the same limit (labapp/uploads.py)
# Gradio keeps ~0.3 MB of per-session config for every visitor (SessionState), 10000 sessions by
# default (3 GB); past this many the least recently used session is dropped (its trace with it).
MAX_SESSIONS = 1000
MODEL_SWITCH_ENV = "DIFFUSION_LAB_MODEL_SWITCH"
DELETE_CACHE = (3600, 3600)  # previews are temp files: sweep hourly, drop those older than an hour
CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.pixelated .image-frame img, .pixelated .upload-container img { width: 100%; height: 100%; object-fit: contain; }
#final-image img { image-rendering: pixelated; object-fit: contain; }
.lab-note { color: var(--body-text-color-subdued); font-size: 0.9em; }
"""
THEME = gr.themes.Soft(primary_hue="violet", secondary_hue="sky", radius_size="md")
DEFAULT_SCHEDULERS = ["DDIM", "Euler a", "DPM++ 2M Karras", "Heun"]


def pixel_gallery(label: str, columns: int, height: int, **kwargs) -> gr.Gallery:
    """A gallery for small generated images: whole images (contain), crisp pixels."""
    return gr.Gallery(label=label, columns=columns, height=height, object_fit="contain", elem_classes="pixelated",
                      **kwargs)


def model_switch_allowed(flag: bool | None = None) -> bool:
    """Whether visitors may switch the model for everyone: off by default on a Space (SPACE_ID is
    set there; a switch is a multi-GB download holding the GPU slot), on elsewhere; the
    --allow-model-switch flag or DIFFUSION_LAB_MODEL_SWITCH=1/0 decides explicitly."""
    if flag is not None:
        return flag
    env = os.environ.get(MODEL_SWITCH_ENV, "").strip().lower()
    if env:
        return env in ("1", "true", "yes", "on")
    return not os.environ.get("SPACE_ID")


def build_demo(engine: eng.Engine, concurrency_limit: int = 1, allow_model_switch: bool | None = None) -> gr.Blocks:
    """The whole app around ``engine`` (tests pass one built from tiny components)."""
    eng.install(engine)
    uploads.use_own_temp_dir()  # before any component exists: Gradio reads it for its cache dir
    gradio_guards.install()  # files per upload, unknown fn_index, headers of 206 replies
    switchable = model_switch_allowed(allow_model_switch)
    gradio_cache.install()  # image outputs written once, atomically (see labapp/gradio_cache.py)
    size_lo, size_hi, size_step = gen.size_range(engine)
    schedulers = eng.known_schedulers()
    presets = [p.id for p in engine.lora_presets()]
    default_scheduler, default_steps, default_guidance = engine.defaults()
    gpu = dict(concurrency_id=PIPELINE, concurrency_limit=concurrency_limit)

    with gr.Blocks(title="Diffusion Lab", delete_cache=DELETE_CACHE) as demo:
        header_md = gr.Markdown(header(engine.model_id, engine.device, engine.reason))
        trace = gr.State(None, time_to_live=trace_store.TRACE_TTL_SECONDS,
                         delete_callback=trace_store.forget)  # a handle; the records live in trace_store

        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(label="Prompt", value="a large red circle in the top left", lines=2,
                                        max_length=gen.check.MAX_PROMPT_CHARS)
                    negative_prompt = gr.Textbox(label="Negative prompt", value="", max_length=gen.check.MAX_PROMPT_CHARS)
                    with gr.Row():
                        model = gr.Dropdown(eng.model_choices(), value=engine.model_id, label="Model",
                                            allow_custom_value=True, interactive=switchable)
                        scheduler = gr.Dropdown(schedulers, value=default_scheduler, label="Scheduler")
                    with gr.Row():
                        steps = gr.Slider(1, gen.MAX_STEPS, value=default_steps, step=1, label="Steps")
                        guidance_scale = gr.Slider(*gen.GUIDANCE_RANGE, value=default_guidance, step=0.5,
                                                   label="Guidance scale")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, minimum=0, maximum=gen.check.MAX_SEED, label="Seed")
                        randomize_seed = gr.Checkbox(value=False, label="Randomize seed")
                    with gr.Accordion("Guidance method", open=False):
                        guidance_method = gr.Radio(list(GUIDANCE_METHODS), value="cfg", label="Method")
                        with gr.Row():
                            guidance_rescale = gr.Slider(0, 1, value=0.0, step=0.05, label="CFG rescale (phi)")
                            guidance_schedule = gr.Dropdown(list(SCALE_SCHEDULES), value="constant", label="Scale schedule")
                        with gr.Row():
                            interval_start = gr.Slider(0, 1, value=0.0, step=0.05, label="Guide from (fraction of steps)")
                            interval_end = gr.Slider(0, 1, value=1.0, step=0.05, label="Guide until")
                        with gr.Row():
                            apg_momentum = gr.Slider(-1, 1, value=-0.5, step=0.05, label="APG momentum (beta)")
                            apg_norm_threshold = gr.Slider(0, 100, value=15, step=0.5, label="APG norm threshold (r)")
                            apg_eta = gr.Slider(0, 1, value=0.0, step=0.05, label="APG eta")
                        with gr.Row():
                            cfg_zero_init_steps = gr.Slider(0, 10, value=1, step=1, label="CFG-Zero* zero-init steps")
                            perp_neg_scale = gr.Slider(0, 10, value=1.0, step=0.1, label="Perp-Neg negative scale")
                    with gr.Accordion("Sampler, size and previews", open=False):
                        with gr.Row():
                            timestep_spacing = gr.Dropdown(list(gen.SPACINGS), value="model default", label="Timestep spacing")
                            sigmas = gr.Dropdown(list(SIGMA_KINDS), value="default", label="Sigmas")
                        with gr.Row():
                            width = gr.Slider(size_lo, size_hi, value=engine.native_size, step=size_step, label="Width")
                            height = gr.Slider(size_lo, size_hi, value=engine.native_size, step=size_step, label="Height")
                            num_images = gr.Slider(1, gen.MAX_IMAGES, value=1, step=1, label="Images")
                        with gr.Row():
                            preview_every = gr.Slider(0, 25, value=2, step=1, label="Preview every N steps (0: off)")
                            preview_decoder = gr.Radio(list(PREVIEW_DECODERS), value="linear", label="Preview decoder")
                    run = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                with gr.Column(scale=3):
                    with gr.Row():
                        x_t_preview = gr.Image(label="x_t (noisy latent)", height=220, elem_classes="pixelated",
                                               elem_id="xt-preview", interactive=False)
                        x0_preview = gr.Image(label="predicted x0", height=220, elem_classes="pixelated",
                                              elem_id="x0-preview", interactive=False)
                    image = gr.Image(label="Image (PNG with its settings)", format="png", height=300,
                                     elem_id="final-image", interactive=False)
                    gallery = pixel_gallery("All images", 4, 200, format="png", visible=False)
                    status = gr.Markdown("", elem_id="status")
                    settings = gr.Code(label="Settings (JSON)", language="json", interactive=False, max_lines=14)

        with gr.Tab("CFG lab"):
            gr.Markdown("Guidance at one step of the last run, then sweeps on the prompt, seed and steps of the Generate tab.",
                        elem_classes="lab-note")
            with gr.Row():
                cfg_step = gr.Slider(0, 1, value=0, step=1, label="Step", interactive=False)
                cfg_decoder = gr.Radio(list(PREVIEW_DECODERS), value="vae", label="Decoder")
            with gr.Row():
                x0_uncond = gr.Image(label="x0 unconditional", height=200, elem_classes="pixelated", interactive=False)
                x0_cond = gr.Image(label="x0 conditional", height=200, elem_classes="pixelated", interactive=False)
                x0_guided = gr.Image(label="x0 guided", height=200, elem_classes="pixelated", interactive=False)
            with gr.Row():
                eps_heatmap = gr.Plot(label="|eps_cond - eps_uncond|", show_label=False)
                guidance_plot = gr.Plot(label="Guidance norm and scale over the steps", show_label=False)
            cfg_note = gr.Markdown("")
            with gr.Accordion("Guidance-scale sweep", open=True):
                with gr.Row():
                    sweep_scales = gr.Textbox(value="1, 2, 4, 7.5, 12", label="Scales (comma-separated)")
                    adherence_prompts = gr.Slider(0, labs.MAX_ADHERENCE_PROMPTS, value=8, step=1,
                                                  label="Shapes-world prompts for the adherence curve")
                    sweep_btn = gr.Button("Run sweep", variant="primary")
                sweep_grid = pixel_gallery("Same seed, rising guidance", 6, 240)
                with gr.Row():
                    adherence_plot = gr.Plot(label="Prompt adherence (scorer)", show_label=False)
                    adherence_table = gr.Markdown("")
            with gr.Accordion("Guidance methods compared", open=True):
                with gr.Row():
                    methods = gr.CheckboxGroup(list(GUIDANCE_METHODS), value=["cfg", "apg", "cfg-zero-star"], label="Methods")
                    methods_btn = gr.Button("Compare methods", variant="primary")
                methods_grid = pixel_gallery("Same seed, different guidance", 4, 240)

        with gr.Tab("Scheduler lab"):
            with gr.Row():
                lab_schedulers = gr.CheckboxGroup(schedulers, value=DEFAULT_SCHEDULERS, label="Schedulers")
            with gr.Row():
                lab_steps = gr.Slider(1, 50, value=10, step=1, label="Steps")
                lab_spacing = gr.Dropdown(list(gen.SPACINGS), value="model default", label="Timestep spacing")
                lab_sigmas = gr.Dropdown(list(SIGMA_KINDS), value="default", label="Sigmas")
            with gr.Row():
                schedule_btn = gr.Button("Plot schedules")
                compare_btn = gr.Button("Compare samplers on the Generate prompt and seed", variant="primary")
            schedule_plot = gr.Plot(label="Training schedule and chosen timesteps", show_label=False)
            with gr.Accordion("Chosen timesteps (data)", open=False):
                schedule_data = gr.JSON(label="Chosen timesteps", show_label=False)
            compare_finals = pixel_gallery("Final images", 4, 240)
            compare_traj = pixel_gallery("x0 trajectories", 1, 420)
            calls_plot = gr.Plot(label="Model calls", show_label=False)

        with gr.Tab("Timestep explorer"):
            gr.Markdown("### The last run, step by step", elem_classes="lab-note")
            with gr.Row():
                explore_slider = gr.Slider(0, 1, value=0, step=1, label="Recorded step", interactive=False)
                explore_decoder = gr.Radio(list(PREVIEW_DECODERS), value="vae", label="Decoder")
            explore_info = gr.Markdown(trace_views.NO_TRACE)
            with gr.Row():
                explore_xt = gr.Image(label="x_t", height=220, elem_classes="pixelated", interactive=False)
                explore_x0 = gr.Image(label="predicted x0", height=220, elem_classes="pixelated", interactive=False)
            explore_eps = gr.Plot(label="Noise prediction", show_label=False)
            gr.Markdown("### The forward process: noise any image with the model's own schedule")
            with gr.Row():
                with gr.Column():
                    noise_image = gr.Image(label="Image (upload, or load a shapes-world sample)", type="pil",
                                           sources=["upload", "clipboard"], height=200, elem_classes="pixelated")
                    with gr.Row():
                        sample_index = gr.Number(value=3, precision=0, minimum=0, maximum=1_000_000, label="Sample #")
                        sample_btn = gr.Button("Load sample")
                    noise_t = gr.Slider(0, engine.num_train_timesteps - 1, value=400, step=1, label="Timestep t")
                    noise_seed = gr.Number(value=0, precision=0, minimum=0, maximum=gen.check.MAX_SEED, label="Noise seed")
                    noise_btn = gr.Button("Add noise", variant="primary")
                with gr.Column():
                    with gr.Row():
                        noised_pixels = gr.Image(label="x_t in pixel space", height=200, elem_classes="pixelated", interactive=False)
                        noised_latent = gr.Image(label="x_t in latent space (decoded)", height=200,
                                                 elem_classes="pixelated", interactive=False)
                    noise_info = gr.Markdown("")
                    noise_plot = gr.Plot(label="Signal and noise", show_label=False)

        with gr.Tab("LoRA mixer"):
            gr.Markdown(lora_ui.presets_table(engine.lora_presets()))
            slots = []
            for i in range(lora_ui.NUM_SLOTS):
                with gr.Accordion(f"Adapter {i + 1}", open=i == 0):
                    with gr.Row():
                        name = gr.Dropdown(["(none)"] + presets, value="(none)", label="Preset", interactive=bool(presets))
                        weight = gr.Slider(*gen.LORA_WEIGHT_RANGE, value=0.8, step=0.05, label="UNet weight")
                        te_weight = gr.Slider(*gen.LORA_WEIGHT_RANGE, value=0.8, step=0.05, label="Text-encoder weight")
                    with gr.Row():
                        down = gr.Slider(0, 2, value=1, step=0.05, label="Down blocks x")
                        mid = gr.Slider(0, 2, value=1, step=0.05, label="Mid block x")
                        up = gr.Slider(0, 2, value=1, step=0.05, label="Up blocks x")
                        start = gr.Slider(0, 1, value=0, step=0.05, label="Active from (fraction)")
                        end = gr.Slider(0, 1, value=1, step=0.05, label="Active until")
                    slots += [name, weight, te_weight, down, mid, up, start, end]
            lora = gr.Textbox(label="LoRA blend (used by Generate; JSON or 'name:weight, ...')", value="")
            lora_btn = gr.Button("Comparison grid: none / each / blend", variant="primary")
            lora_gallery = pixel_gallery("LoRA comparison", 5, 240)
            with gr.Accordion("How it works", open=False):
                gr.Markdown(HOW_IT_WORKS, latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                                           {"left": "$", "right": "$", "display": False}])

        # ---------------------------------------------------------------- wiring
        generate_inputs = [prompt, negative_prompt, scheduler, steps, guidance_scale, seed, randomize_seed, width,
                           height, num_images, guidance_method, guidance_rescale, guidance_schedule, interval_start,
                           interval_end, apg_momentum, apg_norm_threshold, apg_eta, cfg_zero_init_steps,
                           perp_neg_scale, timestep_spacing, sigmas, preview_every, preview_decoder, lora]
        generated = run.click(
            gen.generate, generate_inputs, [x_t_preview, x0_preview, image, gallery, settings, status, seed, trace],
            api_name="generate", **gpu,
        )
        explore_outputs = [explore_xt, explore_x0, explore_eps, explore_info]
        cfg_outputs = [x0_uncond, x0_cond, x0_guided, eps_heatmap, guidance_plot, cfg_note]
        (generated.success(trace_views.step_slider_updates, trace, [explore_slider, cfg_step], api_visibility="private")
         .then(trace_views.explore_step, [trace, explore_slider, explore_decoder], explore_outputs,
               api_visibility="private", **gpu)
         .then(trace_views.cfg_step, [trace, cfg_step, cfg_decoder], cfg_outputs, api_visibility="private", **gpu))
        gr.on([explore_slider.release, explore_decoder.input], trace_views.explore_step,
              [trace, explore_slider, explore_decoder], explore_outputs, api_visibility="private", **gpu)
        gr.on([cfg_step.release, cfg_decoder.input], trace_views.cfg_step, [trace, cfg_step, cfg_decoder], cfg_outputs,
              api_visibility="private", **gpu)

        sweep_btn.click(labs.cfg_sweep, [prompt, negative_prompt, sweep_scales, seed, steps, scheduler, adherence_prompts],
                        [sweep_grid, adherence_plot, adherence_table], api_name="cfg_sweep", **gpu)
        methods_btn.click(labs.compare_guidance, [prompt, negative_prompt, methods, guidance_scale, seed, steps, scheduler],
                          methods_grid, api_name="compare_guidance", **gpu)

        schedule_inputs = [lab_schedulers, lab_steps, lab_spacing, lab_sigmas]
        gr.on([schedule_btn.click, demo.load], labs.schedule, schedule_inputs, [schedule_plot, schedule_data],
              api_name="schedule")
        compare_btn.click(labs.compare_schedulers, [prompt, negative_prompt, lab_schedulers, lab_steps, guidance_scale, seed],
                          [compare_finals, compare_traj, calls_plot], api_name="compare_schedulers", **gpu)

        sample_btn.click(labs.shapes_sample, sample_index, noise_image, api_name="shapes_sample")
        noise_btn.click(labs.forward_noise, [noise_image, noise_t, noise_seed],
                        [noised_pixels, noised_latent, noise_info, noise_plot], api_name="forward_noise", **gpu)

        gr.on([c.change for c in slots], lora_ui.slots_to_spec, slots, lora, api_visibility="private")
        lora_btn.click(labs.lora_grid, [prompt, lora, seed, steps, guidance_scale, scheduler], lora_gallery,
                       api_name="lora_grid", **gpu)
        if switchable:  # not wired at all otherwise: a forged queue call finds no event to run
            model.input(switch_model, model, status, api_visibility="private", **gpu)
        demo.load(page_for_current_model, None, [header_md, model, width, height, noise_t], api_visibility="private")

    check.take_raw_inputs(demo)  # no Gradio preprocess: our checks name the field (labapp/validation.py)
    demo.queue(max_size=QUEUE_MAX_SIZE)
    return demo


def switch_model(model_id):
    """Reload with another registry model; the page shows the new one after a reload."""
    current = eng.current()
    model_id = check.text("model", model_id, 200)
    if model_id == current.model_id:
        return f"Model `{model_id}` is already loaded."
    try:
        eng.install(eng.load_engine(model_id, "picked in the UI"))
    except Exception as error:  # an offline machine or an unknown id: keep the current model
        raise gr.Error(f"model={model_id!r} could not be loaded ({error}); still using {current.model_id!r}.") from None
    return f"Loaded `{model_id}`: reload the page to update sizes and LoRA presets."


def page_for_current_model():
    """On page load: the header, sizes and timestep range of the model loaded now (it may have been switched)."""
    engine = eng.current()
    lo, hi, step = gen.size_range(engine)
    size = gr.update(minimum=lo, maximum=hi, step=step, value=engine.native_size)
    return (header(engine.model_id, engine.device, engine.reason), gr.update(value=engine.model_id), size, size,
            gr.update(maximum=engine.num_train_timesteps - 1))


def launch_kwargs() -> dict:
    # show_error: Gradio's own input errors (e.g. text where a number belongs) reach API clients too
    return dict(theme=THEME, css=CSS, max_file_size=MAX_FILE_SIZE, show_error=True,
                footer_links=["api", "gradio", "settings"], state_session_capacity=MAX_SESSIONS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model registry id (default: sd15 with CUDA, tiny-shapes without)")
    # a Space sets GRADIO_SERVER_NAME=0.0.0.0 (and the port): honour them, else stay on localhost
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true")
    parser.add_argument("--allow-model-switch", action=argparse.BooleanOptionalAction, default=None,
                        help=f"let visitors switch the model for everyone (default: off on a Space, on elsewhere; "
                             f"env {MODEL_SWITCH_ENV}=1/0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    model_id, reason = eng.choose_model(args.model, torch.cuda.is_available())
    demo = build_demo(eng.load_engine(model_id, reason), allow_model_switch=args.allow_model_switch)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs())


if __name__ == "__main__":
    main()
