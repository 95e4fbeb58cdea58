"""The Generate handler: validate, stream previews from the step records, finish with the image,
its settings (JSON + PNG text chunk) and the trace for the explorer and the CFG lab."""
from __future__ import annotations

import inspect
import random
import time

import gradio as gr

from pipelines.guidance import DEFAULT_CLASSIFIER_SCALE  # noqa: F401  (app.py: the slider's default)
from pipelines.lora.settings import WEIGHT_RANGE as LORA_WEIGHT_RANGE  # noqa: F401  (app.py: the mixer's sliders)
from pipelines.previews import PREVIEW_DECODERS
from pipelines.record import TracingPipelineOutput
from pipelines.request import (CLASSIFIER_SCALE_RANGE, GUIDANCE_RANGE, MAX_IMAGES, MAX_STEPS,  # noqa: F401  (re-exported: app.py and labapp read the ranges here)
                               SPACINGS, GenerationRequest, image_seeds)

from . import engine as eng
from . import lora_user_ui, trace_store
from . import validation as check
from .metadata import with_settings


def size_range(engine: eng.Engine) -> tuple[int, int, int]:
    """(min, max, step) in pixels for width/height: half to twice the native size."""
    return engine.limits().size_range


@check.gradio_errors
def build_request(engine: eng.Engine, **form) -> GenerationRequest:
    """The request for ``form`` (/generate's parameters by name; the rest at their defaults) on the
    loaded model: GenerationRequest.from_form, each refusal a gr.Error naming its field."""
    request = GenerationRequest.from_form(lora_user_ui.limits(engine), **form)
    classifier_size_fits(engine, request)
    return lora_user_ui.used(request)


def classifier_size_fits(engine: eng.Engine, request: GenerationRequest) -> None:
    """A trained noise-aware classifier reads latents of one size (its ``sample_size``): any other
    size is refused naming it (issue 30: width 64 failed with "mat1 and mat2 shapes cannot be
    multiplied (1x6144 and 1536x3)")."""
    from pipelines.guidance import CLASSIFIER_METHODS

    classifier = getattr(engine.pipe, "classifier", None)
    config = getattr(classifier, "config", None)
    if request.guidance.method not in CLASSIFIER_METHODS or not isinstance(config, dict) or "sample_size" not in config:
        return
    side = int(config["sample_size"]) * engine.vae_scale_factor
    for field, value in (("width", request.width), ("height", request.height)):
        if value != side:
            raise check.fail(field, value, f"{side} with guidance_method {request.guidance.method!r} (the model's "
                                           f"classifier reads {side}x{side} px images only)")


# The Generate handler's own inputs (not part of the request), each after the form field it follows
# in the /generate endpoint's parameter order; the form's fields are GenerationRequest.from_form's.
_P = inspect.Parameter.POSITIONAL_OR_KEYWORD
HANDLER_INPUTS = {
    "seed": (inspect.Parameter("randomize_seed", _P, default=False),),
    "sigmas": (inspect.Parameter("preview_every", _P, default=2), inspect.Parameter("preview_decoder", _P, default=None)),
}


def _generate_signature() -> inspect.Signature:
    params = []
    for param in inspect.signature(GenerationRequest.from_form).parameters.values():
        if param.name != "limits":
            params += [param, *HANDLER_INPUTS.get(param.name, ())]
    return inspect.Signature(params + [inspect.Parameter("progress", _P, default=gr.Progress()),
                                       inspect.Parameter("request", _P, default=None, annotation=gr.Request)])


GENERATE_SIGNATURE = _generate_signature()


@check.gradio_errors
def generate(*args, **kwargs):
    """Stream x_t and predicted-x0 previews every `preview_every` steps, then the image(s).

    Arguments (``GENERATE_SIGNATURE``): the request's form fields (GenerationRequest.from_form, built
    in one call) with the handler's own inputs (``HANDLER_INPUTS``: randomize_seed, preview_every,
    preview_decoder), then gr.Progress and gr.Request.

    Yields (x_t preview, x0 preview, image, all images, settings JSON, status, seed used, trace).
    Each preview carries its label (what, step, t). ``preview_decoder=None``: the model's own
    choice (engine.previews, see pipelines.previews.choose_preview_decoder). A Stop click from the
    same browser session (``request_stop``) ends the loop after the current step and returns the
    steps recorded so far as the trace.
    """
    bound = GENERATE_SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    form = dict(bound.arguments)
    progress, request = form.pop("progress"), form.pop("request")
    randomize_seed, preview_every, preview_decoder = (form.pop(name) for name in ("randomize_seed", "preview_every",
                                                                                   "preview_decoder"))
    engine = eng.current()
    if check.boolean("randomize_seed", randomize_seed):
        form["seed"] = random.randint(0, check.MAX_SEED)
    settings = lora_user_ui.used(GenerationRequest.from_form(lora_user_ui.limits(engine), **form))
    classifier_size_fits(engine, settings)
    preview_every = check.integer("preview_every", preview_every, 0, MAX_STEPS)
    preview_decoder = check.choice("preview_decoder", preview_decoder or engine_decoder(engine), decoders(engine))

    session = getattr(request, "session_hash", None)
    _stops.discard(session)  # a Stop clicked before this run started is not meant for it
    started = time.perf_counter()
    x_t_image = x0_image = None
    records = []
    progress(0, desc="encoding the prompt")
    stream = eng.stream_generation(settings, preview_every, preview_decoder)
    for item in stream:
        if isinstance(item, TracingPipelineOutput):  # the stream's end: the images
            output = item
            break
        records.append(trace_store.compact(item))  # what the views need, not the full record
        if session is not None and session in _stops:
            stream.close()  # closes the engine's stream: its worker stops before the next step
            _stops.discard(session)
            yield stopped(settings, records, x_t_image, x0_image, time.perf_counter() - started)
            return
        # shown on the status line only (app.py: show_progress_on=status), never over the previews
        progress((item.step + 1, item.num_steps), desc="denoising", unit="steps")
        if item.previews:
            where = step_label(item)
            # sent at their own size: the page scales them up (CSS, pixelated), which saves encoding a
            # 256 px copy of each on every update (~4 ms per image, BENCHMARKS "App")
            x_t_image, x0_image = item.previews["x_t"][0], item.previews["x0_guided"][0]
            yield x_t_image, x0_image, None, None, gr.skip(), where, settings.seed, gr.skip()
    images = [with_settings(image, settings, i) for i, image in enumerate(output.images)]
    seconds = time.perf_counter() - started
    lora_path = getattr(output, "lora_path", None) or "none"  # pipelines/lora/blender.py: "none", "fused" or "unfused"
    blend = ", ".join(f"{a.name} {a.weight:g}" for a in settings.blend.adapters) or "none"
    status = (f"Done: {len(images)} image(s), {settings.steps} steps, {unet_work(records)}, "
              f"{settings.guidance.method} guidance, {seconds:.1f} s on {engine.model_id} ({engine.device}); "
              f"seed {settings.seed}; LoRA: {blend}"
              + (f" ({lora_path})." if settings.blend.adapters else "."))
    trace = trace_store.keep(settings.to_dict(), records, engine.model_id, lora_path=lora_path)
    gallery = gr.update(value=[(im, f"#{i} seed {s}") for i, (im, s) in enumerate(zip(images, settings.image_seeds))],
                        visible=len(images) > 1)
    yield x_t_image, x0_image, images[0], gallery, settings.to_json(), status, settings.seed, trace


def unet_work(records) -> str:
    """The UNet's work in a run, in the words every view uses: "25 UNet evaluations", or with CFG
    "50 UNet evaluations (batched in 25 calls)" (the unconditional and conditional branch run as one
    batch per step)."""
    calls = records[-1].model_calls if records else 0
    branches = 1 + (records[-1].eps_uncond is not None) if records else 1
    if branches == 1:
        return f"{calls} UNet evaluations"
    return f"{calls * branches} UNet evaluations (batched in {calls} calls)"


def generate_live(*args, **kwargs):
    """The Generate button: ``generate``'s stream with each image labeled (what, step, t).

    The labels travel as component updates, which API clients would receive as dicts, so the
    /generate endpoint keeps ``generate`` (plain values) and only the page's button runs this.
    """
    started = time.perf_counter()
    skip = gr.skip()
    yield skip, skip, skip, skip, skip, "Starting: encoding the prompt...", skip, skip
    for out in generate(*args, **kwargs):
        x_t, x0, image, gallery, settings, status, seed, trace = out
        if isinstance(trace, trace_store.Trace):  # the last yield
            if image is not None:
                image = labeled(image, f"image - seed {seed} (PNG + settings)")
        elif x0 is not None:  # a preview: the status is its "step k/N, t=...", the run's one counter
            x_t, x0 = labeled(x_t, f"x_t - {status}"), labeled(x0, f"pred x0 - {status}")
            status = f"Denoising: {status} - {time.perf_counter() - started:.1f} s"
        yield x_t, x0, image, gallery, settings, status, seed, trace


# Gradio finds the inputs, gr.Progress and gr.Request of a handler from its signature and type hints
for _handler in (generate, generate_live):
    _handler.__signature__ = GENERATE_SIGNATURE
    _handler.__annotations__ = {"request": gr.Request}


_stops: set = set()  # session hashes whose Stop button was clicked during their run


def request_stop(request: gr.Request):
    """The Stop button: the running Generate of this browser session ends after its current step."""
    _stops.add(request.session_hash)  # no output: a reply racing the run's last yield could overwrite its status


def random_seed() -> int:
    """The dice button: a new seed, drawn once (the run then uses exactly this one)."""
    return random.randint(0, check.MAX_SEED)


def last_seed(trace, seed):
    """The recycle button: the seed of the last run in this session (unchanged if there was none)."""
    return trace.seed if isinstance(trace, trace_store.Trace) else seed


def batch_image_seeds(trace) -> list[int]:
    """The seeds of the last run's images (GenerationRequest.image_seeds; [] without a finished batch)."""
    if not isinstance(trace, trace_store.Trace) or trace.stopped or "num_images" not in trace.settings:
        return []
    return image_seeds(int(trace.settings["seed"]), int(trace.settings["num_images"]))


def after_run(trace):
    """After a run: the "make it again alone" button shows under a batch's gallery, waiting for a pick,
    and the buttons that open the run in the labs show once there is a finished run."""
    finished = isinstance(trace, trace_store.Trace) and not trace.stopped
    return (gr.update(visible=len(batch_image_seeds(trace)) > 1, interactive=False,
                      value="Select an image above to make it again alone"),
            gr.update(visible=finished))


@check.gradio_errors
def pick_image(trace, evt: gr.EventData):
    """A click on a gallery image: remember its seed, and say on the button what it will do.

    The event's data is read here, not by gr.SelectData, whose constructor indexes whatever a client
    sent ("'NoneType' object is not subscriptable" for a forged event): a malformed selection is
    refused naming ``index``, a stale one (an index past the current batch) is ignored."""
    data = getattr(evt, "_data", None)
    index = data.get("index") if isinstance(data, dict) else None
    if not isinstance(index, int) or isinstance(index, bool):
        raise check.fail("index", index if isinstance(data, dict) else data, "the index of a gallery image (an integer)")
    seeds = batch_image_seeds(trace)
    if not 0 <= index < len(seeds):
        return None, gr.update(interactive=False)
    return seeds[index], gr.update(value=f"Make #{index} again alone (seed {seeds[index]}, 1 image)", interactive=True)


def use_picked_seed(picked):
    """The button: the picked image's seed and one image into the form; Generate then makes that image
    again (each image of a batch has its own seed, GenerationRequest.image_seeds)."""
    if picked is None:
        return gr.skip(), gr.skip(), gr.skip()
    seed = check.integer("seed", picked, 0, check.MAX_SEED)
    return seed, 1, f"Seed {seed} and 1 image set: Generate makes that image again, alone."


def stopped(settings: GenerationRequest, records: list, x_t_image, x0_image, seconds: float) -> tuple:
    """Generate's last yield after a Stop: no image, the steps so far kept as the trace."""
    last = records[-1]
    status = (f"Stopped at step {last.step + 1} / {last.num_steps} after {seconds:.1f} s: the Timestep explorer and "
              f"CFG lab show the {len(records)} recorded steps.")
    trace = trace_store.keep(settings.to_dict(), records, eng.current().model_id, stopped=True)
    return x_t_image, x0_image, None, gr.update(value=None, visible=False), settings.to_json(), status, settings.seed, trace


def step_label(record) -> str:
    """'step 5/25, t=801' (1-based, as every view of a run says it)."""
    return f"step {record.step + 1}/{record.num_steps}, t={record.timestep:.0f}"


def labeled(image, label: str):
    """An image output with the label that says what it is (Gradio keeps the label per update)."""
    return gr.update(value=image, label=label)


def decoders(engine: eng.Engine) -> tuple[str, ...]:
    """Preview decoders this model offers (taesd only when one is loaded)."""
    return engine.previews.available if engine.previews else PREVIEW_DECODERS


def engine_decoder(engine: eng.Engine) -> str:
    """The model's streaming preview decoder (measured at load), linear if it was not measured."""
    return engine.previews.default if engine.previews else "linear"
