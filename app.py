"""Diffusion Lab: watch a Stable Diffusion denoising loop, step by step.

Layout and event wiring only; handlers, plots, validation and model access live in labapp/.
`python app.py` loads the embedded shapes model on a machine without CUDA and Stable Diffusion
1.5 with CUDA, and says which and why; `python app.py --help` lists the flags.
"""
from __future__ import annotations

import argparse
import functools
import os

from pipelines.models import EMBEDDED_MODEL, GPU_DEFAULT_MODEL, model_names

MODEL_SWITCH_ENV = "DIFFUSION_LAB_MODEL_SWITCH"  # 1/0: let visitors switch the model (see --allow-model-switch)
CLIP_GUIDANCE_ENV = "DIFFUSION_LAB_CLIP_GUIDANCE_MODEL"  # = pipelines.guidance_gradient.CLIP_GUIDANCE_ENV (no torch here)


class _OneLineErrors(argparse.ArgumentParser):
    """Usage errors as one line (`app.py: error: ...`) and exit status 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def parse_args(argv=None) -> argparse.Namespace:
    parser = _OneLineErrors(
        prog="app.py", description="Diffusion Lab: watch a Stable Diffusion denoising loop, step by step.")
    parser.add_argument("--model", default=None, choices=model_names(), metavar="ID",
                        help=f"model registry id, one of: {', '.join(model_names())} (default: {GPU_DEFAULT_MODEL} "
                             f"with CUDA, {EMBEDDED_MODEL} without; Hub models download on first use)")
    # a Space sets GRADIO_SERVER_NAME=0.0.0.0 (and the port): honour them, else stay on localhost
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on (default: %(default)s, or env GRADIO_SERVER_NAME); 0.0.0.0 serves "
                             "every network interface")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port to serve on (default: %(default)s, or env GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link (off by default)")
    parser.add_argument("--allow-model-switch", action=argparse.BooleanOptionalAction, default=None,
                        help=f"let visitors switch the model for everyone (default: off on a Space, on elsewhere; "
                             f"env {MODEL_SWITCH_ENV}=1/0)")
    parser.add_argument("--clip-guidance-model", default=os.environ.get(CLIP_GUIDANCE_ENV), metavar="ID",
                        help="CLIP checkpoint for CLIP guidance (guidance_method 'classifier' on models without a "
                             "trained classifier), or 'none' (default: openai/clip-vit-base-patch32 for a Hub model "
                             f"on CUDA, none on CPU and for {EMBEDDED_MODEL}; env {CLIP_GUIDANCE_ENV})")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the warm-up at start (one tiny generation and the LoRA presets loaded, a few seconds "
                             "on CPU, so the first visitor's Generate and LoRA grid are not the slow ones)")
    parser.add_argument("--max-lora-mb", type=_positive_int, default=None, metavar="MB",
                        help="largest user LoRA upload or Hub file, in MB (default: 256, or env DIFFUSION_LAB_MAX_LORA_MB)")
    parser.add_argument("--max-user-loras", type=_positive_int, default=None, metavar="N",
                        help="user LoRAs held on the server for all sessions, least recently used unloaded first "
                             "(default: 8, or env DIFFUSION_LAB_MAX_USER_LORAS)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and bad flags answer here, before gradio and torch load (~9 s)

import gradio as gr

from labapp import console
from labapp import engine as eng
from labapp import gradio_cache, gradio_guards
from labapp import generate as gen
from labapp import guidance_kinds, labs, lora_ui, lora_user_ui, models_ui, settings_file, trace_store, trace_views
from labapp import uploads
from labapp import validation as check
from labapp import warmup
from labapp import img2img as img2img_ui
from labapp import inpaint as inpaint_ui
from labapp import docs
from labapp.tabs import attention as attention_tab
from labapp.docs import example_rows, header
from labapp.page import CSS, EXPLORER_JS, KEYBOARD_JS, PLAY_JS
from pipelines.guidance import GUIDANCE_METHODS, SCALE_SCHEDULES
from pipelines.schedulers import SIGMA_KINDS

PIPELINE = "pipeline"  # one concurrency group for every event that touches the model
QUEUE_MAX_SIZE = 32
MAX_FILE_SIZE = uploads.MAX_IMAGE_BYTES  # bytes; data: URLs get the same limit (labapp/uploads.py)
# Gradio keeps ~0.3 MB of per-session config for every visitor (SessionState), 10000 sessions by
# default (3 GB); past this many the least recently used session is dropped (its trace with it).
MAX_SESSIONS = 1000
DELETE_CACHE = (3600, 3600)  # previews are temp files: sweep hourly, drop those older than an hour
THEME = gr.themes.Soft(primary_hue="violet", secondary_hue="sky", radius_size="md")
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
DEFAULT_SCHEDULERS = ["DDIM", "Euler a", "DPM++ 2M Karras", "Heun"]


def pixel_gallery(label: str, columns: int, height="auto", **kwargs) -> gr.Gallery:
    """A gallery for small generated images: whole images (contain), crisp pixels, sized to its items."""
    return gr.Gallery(label=label, columns=columns, height=height, object_fit="contain", elem_classes="pixelated",
                      **kwargs)


def run_button(label: str, status_id: str, variant: str = "primary", **button_kwargs) -> tuple[gr.Button, gr.Markdown]:
    """A lab's run button with its status line under it, in one column: progress and errors show
    beside the button, so a failed run (bad input) leaves the last good grid and plot on screen
    instead of covering them with Error pills (wire the event with ``show_progress_on=status``)."""
    with gr.Column(min_width=160):
        button = gr.Button(label, variant=variant, **button_kwargs)
        status = gr.Markdown("", elem_id=status_id, elem_classes="run-status")
    return button, status


def preview_header(engine: eng.Engine) -> str:
    return header(engine.model_id, engine.device, engine.reason,
                  engine.previews.reason if engine.previews else "")


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
    preset_list = engine.lora_presets()
    presets = [p.id for p in preset_list]
    decoders, stream_decoder = gen.decoders(engine), gen.engine_decoder(engine)
    view_decoder = "vae" if "vae" in decoders else decoders[-1]
    default_scheduler, default_steps, default_guidance = engine.defaults()
    gpu = dict(concurrency_id=PIPELINE, concurrency_limit=concurrency_limit)

    with gr.Blocks(title="Diffusion Lab", delete_cache=DELETE_CACHE) as demo:
        header_md = gr.Markdown(preview_header(engine))
        with gr.Accordion("How the tabs fit together, and the formulas", open=False, elem_id="overview"):
            gr.Markdown(docs.OVERVIEW)
            gr.Markdown(docs.HOW_IT_WORKS, latex_delimiters=LATEX)
        trace = gr.State(None, time_to_live=trace_store.TRACE_TTL_SECONDS,
                         delete_callback=trace_store.forget)  # a handle; the records live in trace_store

        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Generate", id="generate", elem_id="generate-tab"):
                with gr.Row():
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(label="Prompt", value="a large red circle in the top left", lines=2,
                                            max_length=gen.check.MAX_PROMPT_CHARS, elem_id="prompt",
                                            info="Enter runs Generate; Shift+Enter starts a new line.")
                        negative_prompt = gr.Textbox(label="Negative prompt", value="", max_length=gen.check.MAX_PROMPT_CHARS)
                        with gr.Row():
                            model = gr.Dropdown(models_ui.choices(engine.device == "cuda", engine.model_id),
                                                value=engine.model_id,
                                                label="Model", interactive=switchable, elem_id="model",
                                                info="Beside each name: why it may not load here. A failed switch "
                                                     "keeps the current model.")
                            scheduler = gr.Dropdown(schedulers, value=default_scheduler, label="Scheduler")
                        with gr.Row():
                            steps = gr.Slider(1, gen.MAX_STEPS, value=default_steps, step=1, label="Steps", elem_id="steps")
                            guidance_scale = gr.Slider(*gen.GUIDANCE_RANGE, value=default_guidance, step=0.5,
                                                       label="Guidance scale", info=docs.INFO["guidance_scale"])
                        with gr.Row(equal_height=True):
                            seed = gr.Number(value=0, precision=0, minimum=0, maximum=gen.check.MAX_SEED, label="Seed",
                                             elem_id="seed", scale=3)
                            random_seed_btn = gr.Button("Random", elem_id="random-seed", scale=0, min_width=70,
                                                        size="sm")
                            reuse_seed_btn = gr.Button("Last", elem_id="reuse-seed", scale=0, min_width=60, size="sm")
                            randomize_seed = gr.Checkbox(value=False, label="Randomize seed", scale=2)
                        with gr.Accordion("Guidance method", open=False):
                            guidance_method = gr.Radio(list(GUIDANCE_METHODS), value="cfg", label="Method")
                            with gr.Row():
                                guidance_rescale = gr.Slider(0, 1, value=0.0, step=0.05, label="CFG rescale (phi)",
                                                             info=docs.INFO["guidance_rescale"])
                                guidance_schedule = gr.Dropdown(list(SCALE_SCHEDULES), value="constant", label="Scale schedule")
                            with gr.Row():
                                interval_start = gr.Slider(0, 1, value=0.0, step=0.05, label="Guide from (fraction of steps)")
                                interval_end = gr.Slider(0, 1, value=1.0, step=0.05, label="Guide until")
                            with gr.Row():
                                apg_momentum = gr.Slider(-1, 1, value=-0.5, step=0.05, label="APG momentum (beta)",
                                                         info=docs.INFO["apg_momentum"])
                                apg_norm_threshold = gr.Slider(0, 100, value=15, step=0.5, label="APG norm threshold (r)",
                                                               info=docs.INFO["apg_norm_threshold"])
                                apg_eta = gr.Slider(0, 1, value=0.0, step=0.05, label="APG eta", info=docs.INFO["apg_eta"])
                            with gr.Row():
                                cfg_zero_init_steps = gr.Slider(0, 10, value=1, step=1, label="CFG-Zero* zero-init steps")
                                perp_neg_scale = gr.Slider(0, 10, value=1.0, step=0.1, label="Perp-Neg negative scale")
                            classifier_scale = gr.Slider(*gen.CLASSIFIER_SCALE_RANGE, value=gen.DEFAULT_CLASSIFIER_SCALE, step=0.5,
                                                         label="Classifier scale s (classifier, classifier+cfg)")
                        with gr.Accordion("Sampler, size and previews", open=False):
                            with gr.Row():
                                timestep_spacing = gr.Dropdown(list(gen.SPACINGS), value="model default", label="Timestep spacing",
                                                               info=docs.INFO["spacing"])
                                sigmas = gr.Dropdown(list(SIGMA_KINDS), value="default", label="Sigmas", info=docs.INFO["sigmas"])
                            with gr.Row():
                                width = gr.Slider(size_lo, size_hi, value=engine.native_size, step=size_step, label="Width")
                                height = gr.Slider(size_lo, size_hi, value=engine.native_size, step=size_step, label="Height")
                                num_images = gr.Slider(1, gen.MAX_IMAGES, value=1, step=1, label="Images",
                                               elem_id="num-images")
                            with gr.Row():
                                preview_every = gr.Slider(0, 25, value=2, step=1, label="Preview every N steps (0: off)")
                                preview_decoder = gr.Radio(list(decoders), value=stream_decoder, label="Preview decoder",
                                                           info=f"Chosen for this model: {stream_decoder} "
                                                                f"({engine.previews.reason if engine.previews else 'not measured'}).")
                        with gr.Accordion("LoRA blend", open=False):
                            lora = gr.Textbox(label="LoRA blend applied by Generate (JSON or 'name:weight, ...')", value="",
                                              elem_id="lora-blend")
                        with gr.Row(equal_height=True):
                            lora_chip = gr.Dropdown([(p.id + f" (add at {p.default_weight:g})", p.id) for p in preset_list],
                                                    value=[], multiselect=True, label="LoRA", info=lora_ui.CHIPS_NONE,
                                                    interactive=bool(preset_list), elem_id="lora-chip",
                                                    elem_classes="lora-chip", scale=4)
                            clear_lora = gr.Button("No LoRA", size="sm", scale=0, min_width=90)
                        with gr.Row():
                            run = gr.Button("Generate", variant="primary", elem_id="generate-btn", scale=3)
                            stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1)
                            api_generate = gr.Button("generate (API)", visible=False)
                        with gr.Accordion("Load settings from a PNG or a settings JSON", open=False,
                                          elem_id="load-settings"):
                            settings_upload = gr.File(label="A PNG made here or by AUTOMATIC1111, or a settings JSON",
                                                      file_types=[".png", ".json"], file_count="single",
                                                      elem_id="settings-file", height=120)
                            loaded_settings = gr.JSON(label="Read from the file", elem_id="loaded-settings")
                        example_labels, examples = example_rows(engine.is_embedded, preset_list)
                        gr.Examples(examples, [prompt, guidance_scale, lora], label="Examples (click one, then Generate)",
                                    example_labels=example_labels)
                    with gr.Column(scale=3, elem_id="results"):
                        with gr.Row(elem_id="preview-row"):
                            x_t_preview = gr.Image(label="x_t (noisy latent)", height=220, elem_classes="pixelated",
                                                   elem_id="xt-preview", interactive=False)
                            x0_preview = gr.Image(label="predicted x0", height=220, elem_classes="pixelated",
                                                  elem_id="x0-preview", interactive=False)
                        image = gr.Image(label="Image (PNG with its settings)", format="png", height=300,
                                         elem_id="final-image", interactive=False)
                        gallery = pixel_gallery("All images (each has its own seed)", 4, 200, format="png",
                                                visible=False, elem_id="gallery")
                        picked_seed = gr.State(None)
                        image_seed_btn = gr.Button("Select an image above to make it again alone", size="sm",
                                                   visible=False, interactive=False, elem_id="image-seed-btn")
                        status = gr.Markdown("Ready.", elem_id="status")
                        with gr.Row(visible=False) as send_row:  # shown once a run has finished
                            to_cfg = gr.Button("This run in the CFG lab", size="sm", elem_id="to-cfg")
                            to_explorer = gr.Button("This run in the Timestep explorer", size="sm", elem_id="to-explorer")
                        settings = gr.Code(label="Settings (JSON)", language="json", interactive=False, max_lines=14,
                                           wrap_lines=True, elem_id="settings-json")

            with gr.Tab("CFG lab", id="cfg"):
                gr.Markdown(docs.LAB_INTROS["cfg"], elem_classes="lab-note")
                with gr.Row():
                    cfg_step = gr.Slider(1, 2, value=1, step=1, label="Step (opens where guidance shows most)",
                                         interactive=False, elem_id="cfg-step")
                    cfg_decoder = gr.Radio(list(decoders), value=view_decoder, label="Decoder")
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
                        sweep_btn, sweep_status = run_button("Run sweep", "sweep-status")
                    sweep_grid = pixel_gallery("Same seed, rising guidance", 6, elem_id="sweep-grid")
                    with gr.Row():
                        adherence_plot = gr.Plot(label="Prompt adherence (scorer)", show_label=False)
                        adherence_table = gr.Markdown("")
                with gr.Accordion("Guidance methods compared", open=True):
                    with gr.Row():
                        methods = gr.CheckboxGroup(list(GUIDANCE_METHODS), value=["cfg", "apg", "cfg-zero-star"], label="Methods")
                        methods_btn, methods_status = run_button("Compare methods", "methods-status")
                    methods_grid = pixel_gallery("Same seed, different guidance", 4, elem_id="methods-grid")
                with gr.Accordion("Classifier vs classifier-free", open=False):  # issue 15
                    gr.Markdown(guidance_kinds.FORMULAS, latex_delimiters=[{"left": "$", "right": "$", "display": False}])
                    with gr.Row():
                        kinds_cfg_scales = gr.Textbox(value="1, 1.5, 3, 5", label="CFG scales w")
                        kinds_cg_scales = gr.Textbox(value="0, 2, 4, 8, 16", label="Classifier scales s")
                        kinds_prompts = gr.Slider(0, guidance_kinds.MAX_ADHERENCE_PROMPTS, value=guidance_kinds.DEFAULT_ADHERENCE_PROMPTS, step=1,
                                                  label="Shapes-world prompts per point")
                        kinds_heat_step = gr.Slider(0, 1, value=0.5, step=0.05, label="Heat maps at (fraction of steps)")
                        kinds_btn, kinds_status = run_button("Compare CG / CFG / CG+CFG", "kinds-status")
                    kinds_grid = pixel_gallery("Same seed: CG over s, then CFG over w", 5, elem_id="kinds-grid")
                    with gr.Row():
                        kinds_adherence = gr.Plot(label="Adherence curves", show_label=False)
                        kinds_probs = gr.Plot(label="Classifier probability per step", show_label=False)
                    with gr.Row():
                        kinds_grad = gr.Plot(label="Classifier gradient", show_label=False)
                        kinds_eps = gr.Plot(label="|eps_c - eps_u|", show_label=False)
                    kinds_table = gr.Markdown("")
                    kinds_note = gr.Markdown("", elem_classes="lab-note")

            with gr.Tab("Scheduler lab", id="scheduler"):
                gr.Markdown(docs.LAB_INTROS["scheduler"] + " " + docs.INFO["log_snr"], elem_classes="lab-note")
                with gr.Row():
                    lab_schedulers = gr.CheckboxGroup(schedulers, value=DEFAULT_SCHEDULERS, label="Schedulers")
                with gr.Row():
                    lab_steps = gr.Slider(1, 50, value=10, step=1, label="Steps")
                    lab_spacing = gr.Dropdown(list(gen.SPACINGS), value="model default", label="Timestep spacing",
                                              info=docs.INFO["spacing"])
                    lab_sigmas = gr.Dropdown(list(SIGMA_KINDS), value="default", label="Sigmas", info=docs.INFO["sigmas"])
                with gr.Row():
                    schedule_btn = gr.Button("Plot schedules")
                    compare_btn, compare_status = run_button("Compare samplers on the Generate prompt and seed",
                                                             "compare-status")
                schedule_plot = gr.Plot(label="Training schedule and chosen timesteps", show_label=False,
                                        elem_id="schedule-plot")
                with gr.Accordion("Chosen timesteps (data)", open=False):
                    schedule_data = gr.JSON(label="Chosen timesteps", show_label=False)
                compare_finals = pixel_gallery("Final images", 4, elem_id="compare-finals")
                compare_traj = pixel_gallery("x0 trajectories (one row per sampler: predicted x0 at the labeled steps)",
                                             labs.TRAJECTORY_FRAMES, elem_id="compare-trajectories")
                calls_plot = gr.Plot(label="Model calls", show_label=False)

            with gr.Tab("Timestep explorer", id="explorer"):
                gr.Markdown("### The last run, step by step")
                gr.Markdown(docs.LAB_INTROS["explorer"], elem_classes="lab-note")
                with gr.Row():
                    explore_slider = gr.Slider(1, 2, value=1, step=1, label="Recorded step", interactive=False,
                                               elem_id="explore-step", scale=4, info=docs.INFO["explore_step"])
                    explore_play = gr.Button("Play", elem_id="explore-play", scale=0, min_width=80, size="sm")
                    explore_decoder = gr.Radio(list(decoders), value=view_decoder, label="Decoder", scale=2)
                explore_frames = gr.HTML(trace_views.NO_FRAMES, elem_id="explore-frames", js_on_load=None)
                explore_info = gr.Markdown(trace_views.NO_TRACE)
                gr.Markdown(docs.INFO["explore_terms"], elem_classes="lab-note")
                explore_eps = gr.Plot(label="Noise prediction", show_label=False)
                gr.Markdown("### The forward process: noise any image with the model's own schedule")
                gr.Markdown(docs.LAB_INTROS["forward"], elem_classes="lab-note")
                with gr.Row():
                    with gr.Column():
                        noise_image = gr.Image(labs.shapes_sample(3), label="Image (upload, or load a shapes-world sample)",
                                               type="pil", sources=["upload", "clipboard"], height=200, elem_classes="pixelated")
                        with gr.Accordion("What the model sees (center crop)", open=True):
                            noise_crop = gr.Image(label="The center square, outlined; the rest is not used", height=140,
                                                  interactive=False, elem_id="noise-crop", show_label=False)
                            noise_crop_note = gr.Markdown("", elem_id="noise-crop-note")
                        with gr.Row():
                            sample_index = gr.Number(value=3, precision=0, minimum=0, maximum=1_000_000, label="Sample #")
                            sample_btn = gr.Button("Load sample")
                        noise_t = gr.Slider(0, engine.num_train_timesteps - 1, value=400, step=1, label="Timestep t",
                                            info=docs.INFO["noise_t"])
                        noise_seed = gr.Number(value=0, precision=0, minimum=0, maximum=gen.check.MAX_SEED, label="Noise seed")
                        noise_btn, noise_status = run_button("Add noise", "noise-status")
                    with gr.Column():
                        with gr.Row():
                            noised_pixels = gr.Image(label="x_t in pixel space", height=200, elem_classes="pixelated", interactive=False)
                            noised_latent = gr.Image(label="x_t in latent space (decoded)", height=200,
                                                     elem_classes="pixelated", interactive=False)
                        noise_info = gr.Markdown("")
                        noise_plot = gr.Plot(label="Signal and noise", show_label=False)
                # img2img / SDEdit (issue 16): the reverse process started from the image above
                gr.Markdown("### Denoise from here: img2img (SDEdit) from the image above, with the Generate tab's "
                            "scheduler, steps, guidance and negative prompt; the result's steps land in the explorer")
                with gr.Row():
                    with gr.Column():
                        i2i_prompt = gr.Textbox(label="img2img prompt", value="a blue circle",
                                                max_length=gen.check.MAX_PROMPT_CHARS)
                        i2i_strength = gr.Slider(0, 1, value=0.6, step=0.05, label="Strength (start at t ~ strength x T)")
                        i2i_btn, i2i_status = run_button("Denoise from here", "i2i-status")
                    with gr.Column():
                        i2i_image = gr.Image(label="img2img result", height=200, elem_classes="pixelated", interactive=False)
                        i2i_info = gr.Markdown("")
                inpaint_box = inpaint_ui.build(noise_image)  # issue 16: mask drawn or uploaded, two methods
                gr.Markdown("### The schedule flaw: what is left of the image above at t = T")
                with gr.Row():
                    snr_seeds = gr.Number(value=256, precision=0, minimum=16, maximum=2048, label="Noise seeds")
                    snr_block = gr.Radio(["2", "4", "8", "16"], value="8", label="Blur block (px)")
                    snr_btn, snr_status = run_button("Compare x_T: SD 1.5 vs zero terminal SNR", "snr-status",
                                                     variant="secondary")
                snr_gallery = gr.Gallery(label="x_T side by side", columns=6, height=240, elem_classes="pixelated")
                snr_info = gr.Markdown("")

            with gr.Tab("LoRA mixer", id="lora"):
                gr.Markdown(docs.LAB_INTROS["lora"], elem_classes="lab-note")
                gr.Markdown(lora_ui.presets_table(engine.lora_presets()), elem_classes="wide-table")
                slots = []
                for i in range(lora_ui.NUM_SLOTS):
                    with gr.Accordion(f"Adapter {i + 1}", open=i < 2):
                        with gr.Row():
                            name = gr.Dropdown([lora_ui.NONE] + presets, value=lora_ui.NONE, label="Preset",
                                               interactive=bool(presets), elem_id=f"slot-{i + 1}-preset")
                            weight = gr.Slider(*gen.LORA_WEIGHT_RANGE, value=1.0, step=0.05, label="UNet weight",
                                               elem_id=f"slot-{i + 1}-weight",
                                               info="Picking a preset sets its weight from the table above.")
                            te_weight = gr.Slider(*gen.LORA_WEIGHT_RANGE, value=1.0, step=0.05,
                                                  label="Text-encoder weight")
                        with gr.Row():
                            down = gr.Slider(0, 2, value=1, step=0.05, label="Down blocks x")
                            mid = gr.Slider(0, 2, value=1, step=0.05, label="Mid block x")
                            up = gr.Slider(0, 2, value=1, step=0.05, label="Up blocks x")
                            start = gr.Slider(0, 1, value=0, step=0.05, label="Active from (fraction)")
                            end = gr.Slider(0, 1, value=1, step=0.05, label="Active until")
                        slots += [name, weight, te_weight, down, mid, up, start, end]
                with gr.Row(equal_height=True):
                    mixer_chip = gr.Markdown(lora_ui.chips([]), elem_id="mixer-chip", elem_classes="lora-chip")
                    example_blend = gr.Button(f"Example: {lora_ui.example_spec(preset_list) or '-'}", size="sm",
                                              scale=0, min_width=160, interactive=bool(lora_ui.example_spec(preset_list)),
                                              elem_id="example-blend")
                    mixer_clear = gr.Button("No LoRA", size="sm", scale=0, min_width=90)
                gr.Markdown(lora_ui.BLEND_NOTE, elem_classes="lab-note")
                lora_btn, lora_status = run_button("Comparison grid: none / each / blend", "lora-status")
                lora_gallery = pixel_gallery("LoRA comparison", 5, elem_id="lora-grid")
                user_lora_panel(lora, gpu)
            with gr.Tab("What each word does", id="attention"):  # issue 32: a self-contained builder (labapp/tabs)
                attention_tab.build(engine, gpu)

        # ---------------------------------------------------------------- wiring
        generate_inputs = [prompt, negative_prompt, scheduler, steps, guidance_scale, seed, randomize_seed, width,
                           height, num_images, guidance_method, guidance_rescale, guidance_schedule, interval_start,
                           interval_end, apg_momentum, apg_norm_threshold, apg_eta, cfg_zero_init_steps,
                           perp_neg_scale, timestep_spacing, sigmas, preview_every, preview_decoder, lora,
                           classifier_scale]
        generate_outputs = [x_t_preview, x0_preview, image, gallery, settings, status, seed, trace]
        # progress on the status line only: Gradio's overlay would cover the streaming previews.
        # The button streams labeled images; /generate (plain values for API clients) hangs on a hidden trigger.
        generated = run.click(gen.generate_live, generate_inputs, generate_outputs, api_visibility="private",
                              show_progress="full", show_progress_on=status, **gpu)
        api_generate.click(gen.generate, generate_inputs, generate_outputs, api_name="generate",
                           show_progress_on=status, **gpu)
        form_fields = dict(zip(settings_file.FORM_FIELDS, [
            prompt, negative_prompt, scheduler, steps, guidance_scale, seed, width, height, num_images, guidance_method,
            guidance_rescale, guidance_schedule, interval_start, interval_end, apg_momentum, apg_norm_threshold, apg_eta,
            cfg_zero_init_steps, perp_neg_scale, timestep_spacing, sigmas, lora, classifier_scale]))
        (settings_upload.upload(settings_file.read_settings, settings_upload, loaded_settings, api_name="read_settings",
                                show_progress_on=status)
         .success(settings_file.fill_form, loaded_settings, [*form_fields.values(), status], api_visibility="private",
                  show_progress="hidden"))
        stop.click(gen.request_stop, None, None, queue=False, show_progress="hidden", api_visibility="private")
        random_seed_btn.click(gen.random_seed, None, seed, queue=False, api_visibility="private")
        reuse_seed_btn.click(gen.last_seed, [trace, seed], seed, queue=False, api_visibility="private")
        generated.then(gen.after_run, trace, [image_seed_btn, send_row], queue=False, api_visibility="private")
        gallery.select(gen.pick_image, trace, [picked_seed, image_seed_btn], queue=False, api_visibility="private")
        image_seed_btn.click(gen.use_picked_seed, picked_seed, [seed, num_images, status], queue=False,
                             api_visibility="private")
        to_cfg.click(lambda: gr.Tabs(selected="cfg"), None, tabs, queue=False, api_visibility="private")
        to_explorer.click(lambda: gr.Tabs(selected="explorer"), None, tabs, queue=False, api_visibility="private")
        explore_outputs = [explore_eps, explore_info]
        cfg_outputs = [x0_uncond, x0_cond, x0_guided, eps_heatmap, guidance_plot, cfg_note]
        (generated.success(trace_views.step_slider_updates, trace, [explore_slider, cfg_step], api_visibility="private")
         .then(trace_views.explore_frames, [trace, explore_decoder], explore_frames, api_visibility="private", **gpu)
         .then(trace_views.explore_details, [trace, explore_slider], explore_outputs, api_visibility="private")
         .then(trace_views.cfg_step, [trace, cfg_step, cfg_decoder], cfg_outputs, api_visibility="private", **gpu))
        # the images flip in the browser while the slider moves (page.EXPLORER_JS); the server adds the
        # noise plot and the numbers when it is released, and decodes all frames again for another decoder
        explore_slider.release(trace_views.explore_details, [trace, explore_slider], explore_outputs,
                               api_visibility="private", show_progress="hidden")
        explore_decoder.input(trace_views.explore_frames, [trace, explore_decoder, explore_slider], explore_frames,
                              api_visibility="private", **gpu)
        (explore_play.click(None, js=PLAY_JS)
         .then(trace_views.explore_details, [trace, explore_slider], explore_outputs, api_visibility="private",
               show_progress="hidden"))
        gr.on([cfg_step.release, cfg_decoder.input], trace_views.cfg_step, [trace, cfg_step, cfg_decoder], cfg_outputs,
              api_visibility="private", **gpu)

        sweep_btn.click(labs.cfg_sweep, [prompt, negative_prompt, sweep_scales, seed, steps, scheduler, adherence_prompts],
                        [sweep_grid, adherence_plot, adherence_table], api_name="cfg_sweep", show_progress_on=sweep_status,
                        **gpu)
        methods_btn.click(labs.compare_guidance, [prompt, negative_prompt, methods, guidance_scale, seed, steps, scheduler],
                          methods_grid, api_name="compare_guidance", show_progress_on=methods_status, **gpu)

        kinds_btn.click(guidance_kinds.compare_guidance_kinds,
                        [prompt, seed, steps, scheduler, guidance_scale, kinds_cfg_scales, kinds_cg_scales,
                         classifier_scale, kinds_prompts, kinds_heat_step],
                        [kinds_grid, kinds_adherence, kinds_table, kinds_probs, kinds_grad, kinds_eps, kinds_note],
                        api_name="compare_guidance_kinds", show_progress_on=kinds_status, **gpu)

        schedule_inputs = [lab_schedulers, lab_steps, lab_spacing, lab_sigmas]
        gr.on([schedule_btn.click, demo.load], labs.schedule, schedule_inputs, [schedule_plot, schedule_data],
              api_name="schedule")
        compare_btn.click(labs.compare_schedulers, [prompt, negative_prompt, lab_schedulers, lab_steps, guidance_scale, seed],
                          [compare_finals, compare_traj, calls_plot], api_name="compare_schedulers",
                          show_progress_on=compare_status, **gpu)

        sample_btn.click(labs.shapes_sample, sample_index, noise_image, api_name="shapes_sample")
        gr.on([noise_image.change, demo.load], labs.forward_crop, noise_image, [noise_crop, noise_crop_note],
              api_visibility="private", show_progress="hidden")
        noise_btn.click(labs.forward_noise, [noise_image, noise_t, noise_seed],
                        [noised_pixels, noised_latent, noise_info, noise_plot], api_name="forward_noise",
                        show_progress_on=noise_status, **gpu)
        (i2i_btn.click(img2img_ui.img2img, [noise_image, i2i_prompt, negative_prompt, i2i_strength, scheduler, steps,
                                            guidance_scale, noise_seed], [i2i_image, i2i_info, trace],
                       api_name="img2img", show_progress_on=i2i_status, **gpu)
         .success(trace_views.step_slider_updates, trace, [explore_slider, cfg_step], api_visibility="private")
         .then(trace_views.explore_frames, [trace, explore_decoder], explore_frames, api_visibility="private", **gpu)
         .then(trace_views.explore_details, [trace, explore_slider], explore_outputs, api_visibility="private"))
        inpaint_ui.wire(inpaint_box, noise_image, negative_prompt, scheduler, steps, guidance_scale, noise_seed, trace,
                        [explore_slider, cfg_step], explore_outputs, [explore_slider, explore_decoder], explore_frames, gpu)
        snr_btn.click(img2img_ui.terminal_snr, [noise_image, snr_seeds, snr_block], [snr_gallery, snr_info],
                      api_name="terminal_snr", show_progress_on=snr_status)

        # one blend: the text is the state, the slots edit it and follow it (labapp/lora_ui.py)
        lora_views = [lora_chip, mixer_chip, *slots]
        gr.on([lora.change, demo.load], lora_ui.spec_to_slots, lora, lora_views, api_visibility="private",
              show_progress="hidden", queue=False)
        slot_names = slots[::lora_ui.SLOT_FIELDS]
        for i, name in enumerate(slot_names):
            weights = slots[i * lora_ui.SLOT_FIELDS + 1:i * lora_ui.SLOT_FIELDS + 3]
            (name.input(functools.partial(lora_ui.preset_weights, preset_list), name, weights,
                        api_visibility="private", queue=False)
             .then(lora_ui.slots_to_spec, slots, lora, api_visibility="private", queue=False))
        slot_sliders = [c for c in slots if isinstance(c, gr.Slider)]
        gr.on([c.release for c in slot_sliders], lora_ui.slots_to_spec, slots, lora, api_visibility="private",
              queue=False)
        lora_btn.click(labs.lora_grid, [prompt, lora, seed, steps, guidance_scale, scheduler], lora_gallery,
                       api_name="lora_grid", show_progress_on=lora_status, **gpu)
        example_blend.click(functools.partial(lora_ui.example_spec, preset_list), None, lora,
                            api_visibility="private", queue=False)
        gr.on([clear_lora.click, mixer_clear.click], lambda: "", None, lora, api_visibility="private", queue=False)
        lora_chip.input(lora_ui.chips_to_spec, [lora, lora_chip], lora, api_visibility="private", queue=False,
                        show_progress="hidden")
        demo.load(None, js=KEYBOARD_JS)
        demo.load(None, js=EXPLORER_JS)
        if switchable:  # not wired at all otherwise: a forged queue call finds no event to run
            model.input(models_ui.switch_model, model, [status, model], api_visibility="private",
                        show_progress_on=status, **gpu)
        demo.load(page_for_current_model, None, [header_md, model, width, height, noise_t], api_visibility="private")
        demo.unload(lora_user_ui.forget_session)  # a closed tab unloads its user LoRAs

    check.take_raw_inputs(demo)  # no Gradio preprocess: our checks name the field (labapp/validation.py)
    demo.queue(max_size=QUEUE_MAX_SIZE)
    return demo


def user_lora_panel(blend: gr.Textbox, gpu: dict) -> None:
    """Bring your own LoRA (labapp/lora_user_ui.py): upload or Hub id, inspect, add to the blend, unload."""
    with gr.Accordion("Your own LoRA: upload a .safetensors or give a Hub id", open=False, elem_id="user-lora"):
        with gr.Row():
            file = gr.File(label=f"LoRA file (.safetensors, at most {lora_user_ui.max_upload_bytes() // 2**20} MB)",
                           file_types=[".safetensors"], file_count="single", elem_id="user-lora-file")
            with gr.Column():
                hub_id = gr.Textbox(label="or a Hub id (owner/name or owner/name/file.safetensors)", value="",
                                    max_length=lora_user_ui.MAX_HUB_ID_CHARS, elem_id="user-lora-hub")
                inspect_btn = gr.Button("Load and inspect", variant="primary", elem_id="user-lora-inspect")
                name = gr.Textbox(label="Loaded adapter (this session only)", interactive=False,
                                  elem_id="user-lora-name")
                with gr.Row():
                    add_btn = gr.Button("Add to blend", elem_id="user-lora-add")
                    unload_btn = gr.Button("Unload", variant="stop", elem_id="user-lora-unload")
        status = gr.Markdown("", elem_id="user-lora-status", elem_classes="run-status")
        summary = gr.Markdown("", elem_id="user-lora-summary")
        heat = gr.Plot(label="||(alpha/r) B A||_F per block", show_label=False, elem_id="user-lora-heat")
        with gr.Accordion("Full report (JSON)", open=False):
            report = gr.JSON(label="Inspection")
    inspect_btn.click(lora_user_ui.lora_inspect, [file, hub_id], [name, summary, report, heat], api_name="lora_inspect",
                      show_progress_on=status, **lora_user_ui.FETCH_SLOT)  # outside the pipeline slot (issue 30)
    add_btn.click(lora_user_ui.add_to_blend, [blend, name], blend, api_visibility="private")
    unload_btn.click(lora_user_ui.lora_unload, name, status, api_name="lora_unload", show_progress_on=status, **gpu)


def page_for_current_model():
    """On page load: the header, sizes and timestep range of the model loaded now (it may have been switched)."""
    engine = eng.current()
    lo, hi, step = gen.size_range(engine)
    size = gr.update(minimum=lo, maximum=hi, step=step, value=engine.native_size)
    return (preview_header(engine), gr.update(value=engine.model_id), size, size,
            gr.update(maximum=engine.num_train_timesteps - 1))


def launch_kwargs() -> dict:
    # show_error: Gradio's own input errors (e.g. text where a number belongs) reach API clients too
    # one upload limit for every file: the LoRA limit (images are held to theirs by labapp/uploads.py)
    return dict(theme=THEME, css=CSS, max_file_size=max(MAX_FILE_SIZE, lora_user_ui.max_upload_bytes()), show_error=True,
                footer_links=["api", "gradio", "settings"], state_session_capacity=MAX_SESSIONS)


def main(argv=None):
    args = parse_args(argv)
    console.configure(eng.log)

    import torch

    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # One torch thread on CPU (BENCHMARKS.md, "Multi-LoRA blending" / "CPU threads under load",
        # bench/bench_lora.py --threads): with two, every op's OpenMP threads wait for each other,
        # so a generation stalls whenever another process or request holds a core (single 25-step
        # runs up to 2.5 s against a 0.26 s median in issue 22); one thread is as fast and steady.
        torch.set_num_threads(1)
    lora_user_ui.configure(args.max_lora_mb, args.max_user_loras)
    model_id, reason = eng.choose_model(args.model, torch.cuda.is_available())
    engine = eng.load_engine(model_id, reason, clip_guidance_model=args.clip_guidance_model)
    demo = build_demo(engine, allow_model_switch=args.allow_model_switch)
    if args.warmup:  # after build_demo (it installs the engine and the temp dir), before the page opens
        eng.log.info("Diffusion Lab: %s", warmup.warm_up(engine))
    # quiet: Gradio's own banner suggests `share=True in launch()`; this app's flag is --share
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True,
                prevent_thread_lock=True, **launch_kwargs())
    where = demo.share_url or demo.local_url
    eng.log.info("Diffusion Lab: open %s%s", where, "" if args.share else " (--share for a public link)")
    demo.block_thread()


if __name__ == "__main__":
    main()
