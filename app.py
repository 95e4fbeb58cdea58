"""Diffusion Lab: watch a Stable Diffusion denoising loop, step by step.

Layout and event wiring only; handlers, plots, validation and model access live in labapp/.
`python app.py` loads the embedded shapes model on a machine without CUDA and Stable Diffusion
1.5 with CUDA, and says which and why; `python app.py --help` lists the flags.
"""
from __future__ import annotations

import argparse
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

from labapp import console, docs, gradio_cache, gradio_guards, lora_user_ui, models_ui, trace_store, uploads
from labapp import engine as eng
from labapp import generate as gen
from labapp import validation as check
from labapp import warmup
from labapp.docs import header
from labapp.page import CSS, EXPLORER_JS, KEYBOARD_JS
from labapp.tabs import attention as attention_tab
from labapp.tabs import cfg as cfg_tab
from labapp.tabs import explorer as explorer_tab
from labapp.tabs import generate as generate_tab
from labapp.tabs import lora as lora_tab
from labapp.tabs import schedulers as schedulers_tab
from labapp.tabs.parts import follow_trace

PIPELINE = "pipeline"  # one concurrency group for every event that touches the model
QUEUE_MAX_SIZE = 32
MAX_FILE_SIZE = uploads.MAX_IMAGE_BYTES  # bytes; data: URLs get the same limit (labapp/uploads.py)
# Gradio keeps ~0.3 MB of per-session config for every visitor (SessionState), 10000 sessions by
# default (3 GB); past this many the least recently used session is dropped (its trace with it).
MAX_SESSIONS = 1000
DELETE_CACHE = (3600, 3600)  # previews are temp files: sweep hourly, drop those older than an hour
THEME = gr.themes.Soft(primary_hue="violet", secondary_hue="sky", radius_size="md")
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]


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
    """The whole app around ``engine`` (tests pass one built from tiny components): the header, one
    builder per tab (labapp/tabs/), and the events that cross the tabs."""
    eng.install(engine)
    uploads.use_own_temp_dir()  # before any component exists: Gradio reads it for its cache dir
    gradio_guards.install()  # files per upload, unknown fn_index, headers of 206 replies
    switchable = model_switch_allowed(allow_model_switch)
    gradio_cache.install()  # image outputs written once, atomically (see labapp/gradio_cache.py)
    preset_list = engine.lora_presets()
    decoders = gen.decoders(engine)
    view_decoder = "vae" if "vae" in decoders else decoders[-1]
    gpu = dict(concurrency_id=PIPELINE, concurrency_limit=concurrency_limit)

    with gr.Blocks(title="Diffusion Lab", delete_cache=DELETE_CACHE) as demo:
        header_md = gr.Markdown(preview_header(engine), elem_id="page-header")
        with gr.Accordion("How the tabs fit together, and the formulas", open=False, elem_id="overview"):
            gr.Markdown(docs.OVERVIEW)
            gr.Markdown(docs.HOW_IT_WORKS, latex_delimiters=LATEX)
        trace = gr.State(None, time_to_live=trace_store.TRACE_TTL_SECONDS,
                         delete_callback=trace_store.forget)  # a handle; the records live in trace_store

        with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:  # phones: all five, no menu
            with gr.Tab("Generate", id="generate", elem_id="generate-tab"):
                g = generate_tab.build(engine, demo, trace, switchable, preset_list, gpu)
            with gr.Tab("CFG lab", id="cfg", elem_id="cfg-tab"):
                cfg = cfg_tab.build(g, trace, decoders, view_decoder, gpu)
            with gr.Tab("Scheduler lab", id="scheduler", elem_id="scheduler-tab"):
                schedulers_tab.build(g, demo, gpu)
            with gr.Tab("Timestep explorer", id="explorer", elem_id="explorer-tab"):
                explorer = explorer_tab.build(engine, g, trace, demo, decoders, view_decoder, gpu)
            with gr.Tab("LoRA mixer", id="lora", elem_id="lora-tab"):
                lora_tab.build(engine, g, demo, preset_list, gpu)
            with gr.Tab("What each word does", id="attention"):  # issue 32: a self-contained builder
                attention_tab.build(engine, gpu)

        # ---------------------------------------------------------------- across the tabs
        for run in (g.generated, explorer.img2img_run, explorer.inpaint_run):  # a new trace opens in the labs
            follow_trace(run, trace, explorer, cfg, gpu)
        g.to_cfg.click(lambda: gr.Tabs(selected="cfg"), None, tabs, queue=False, api_visibility="private")
        g.to_explorer.click(lambda: gr.Tabs(selected="explorer"), None, tabs, queue=False, api_visibility="private")
        demo.load(None, js=KEYBOARD_JS)
        demo.load(None, js=EXPLORER_JS)
        if switchable:  # not wired at all otherwise: a forged queue call finds no event to run
            g.model.input(models_ui.switch_model, g.model, [g.status, g.model], api_visibility="private",
                          show_progress_on=g.status, **gpu)
        demo.load(page_for_current_model, None, [header_md, g.model, g.form["width"], g.form["height"],
                                                 explorer.noise_t], api_visibility="private")
        demo.unload(lora_user_ui.forget_session)  # a closed tab unloads its user LoRAs

    check.take_raw_inputs(demo)  # no Gradio preprocess: our checks name the field (labapp/validation.py)
    demo.queue(max_size=QUEUE_MAX_SIZE)
    return demo


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
