"""The Generate handler: validate, stream previews from the step records, finish with the image,
its settings (JSON + PNG text chunk) and the trace for the explorer and the CFG lab."""
from __future__ import annotations

import inspect
import json
import random
import re
import time

import gradio as gr

from pipelines.guidance import DEFAULT_CLASSIFIER_SCALE, GUIDANCE_METHODS, SCALE_SCHEDULES
from pipelines.previews import PREVIEW_DECODERS
from pipelines.schedulers import SIGMA_KINDS, TIMESTEP_SPACINGS

from . import engine as eng
from . import lora_user_ui, trace_store
from . import validation as check
from .metadata import GenerationSettings, with_settings

MAX_STEPS = 150
MAX_IMAGES = 4
GUIDANCE_RANGE = (0.0, 30.0)
CLASSIFIER_SCALE_RANGE = (0.0, 100.0)  # s of classifier guidance (issue 15); default DEFAULT_CLASSIFIER_SCALE
LORA_WEIGHT_RANGE = (-2.0, 2.0)
SPACINGS = ("model default",) + TIMESTEP_SPACINGS


def size_range(engine: eng.Engine) -> tuple[int, int, int]:
    """(min, max, step) in pixels for width/height: half to twice the native size."""
    native, step = engine.native_size, engine.vae_scale_factor
    return max(step, native // 2), native * 2, step


LORA_FORMS = 'a JSON list like [{"name": "outline", "weight": 0.8}] or "outline:0.8, night:0.5"'
LORA_FIELDS = {"name", "weight", "text_encoder_weight", "block_weights", "step_range"}


def _shorthand(field: str, spec: str) -> list[dict]:
    """"name:weight, name" -> items. A name is a registry key: one that looks like a URL or a path
    is refused as a *name* (split at its first ':', "https://x:0.5" used to report a bad weight)."""
    items = []
    for part in spec.split(","):
        part = part.strip()
        name, sep, weight = part.rpartition(":")
        if not sep:
            name, weight = part, ""
        if "/" in part or "\\" in part:
            shown = name if sep and re.fullmatch(r"\s*[-+]?[0-9.eE]+\s*", weight) else part
            raise check.fail(f"{field} name", shown.strip(),
                             "a preset name (LoRAs load from the registry, never from a URL or path)")
        if sep:
            try:
                weight = float(weight)
            except ValueError:
                raise check.fail(f"{field}[{name.strip()}].weight", weight.strip(), "a number (name:weight)") from None
        items.append({"name": name.strip(), "weight": weight if sep else 1.0})
    return items


def parse_lora(field: str, spec, presets: list[str]) -> list[dict]:
    """LoRA blend from JSON (list of AdapterSetting dicts) or shorthand "name:weight, name:weight".

    Weights are checked before names so a bad weight is reported as such.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return []
    check.text(field, spec, check.MAX_LORA_CHARS)
    if spec.lstrip()[:1] in "[{":  # JSON; an object is not a blend (it used to be read as shorthand)
        items = check.json_value(field, spec, LORA_FORMS)
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
            raise check.fail(field, spec, 'a JSON list of objects, each with a string "name" (and a "weight")')
    else:
        items = _shorthand(field, spec)
    if len(items) > check.MAX_LIST_ITEMS:
        raise check.fail(field, spec, f"at most {check.MAX_LIST_ITEMS} adapters")
    lo, hi = LORA_WEIGHT_RANGE
    blend = []
    for item in items:
        name = item["name"]
        unknown = set(item) - LORA_FIELDS
        if unknown:
            raise check.fail(f"{field}[{name}]", sorted(unknown)[0], f"a field among {sorted(LORA_FIELDS)}")
        entry = {"name": name, "weight": check.number(f"{field}[{name}].weight", item.get("weight", 1.0), lo, hi)}
        if item.get("text_encoder_weight") is not None:
            entry["text_encoder_weight"] = check.number(f"{field}[{name}].text_encoder_weight", item["text_encoder_weight"], lo, hi)
        if item.get("block_weights") is not None:
            blocks = item["block_weights"]
            if not isinstance(blocks, dict) or not set(blocks) <= {"down", "mid", "up"}:
                raise check.fail(f"{field}[{name}].block_weights", blocks, 'an object with keys among "down", "mid", "up"')
            entry["block_weights"] = {k: check.number(f"{field}[{name}].block_weights.{k}", v, lo, hi) for k, v in blocks.items()}
        if item.get("step_range") is not None:
            rng = item["step_range"]
            if not isinstance(rng, list) or len(rng) != 2:
                raise check.fail(f"{field}[{name}].step_range", rng, "a pair [start, end] of fractions in [0, 1]")
            start = check.number(f"{field}[{name}].step_range", rng[0], 0.0, 1.0)
            end = check.number(f"{field}[{name}].step_range", rng[1], 0.0, 1.0)
            if start >= end:
                raise check.fail(f"{field}[{name}].step_range", rng, "start < end, both in [0, 1]")
            entry["step_range"] = (start, end)
        blend.append(entry)
    for entry in blend:
        check.choice(f"{field} name", entry["name"], presets)
    return blend


def build_settings(engine: eng.Engine, *, prompt, negative_prompt, scheduler, steps, guidance_scale, seed,
                   width, height, num_images=1, guidance_method="cfg", guidance_rescale=0.0,
                   guidance_schedule="constant", guidance_interval_start=0.0, guidance_interval_end=1.0,
                   apg_momentum=-0.5, apg_norm_threshold=15.0, apg_eta=0.0, cfg_zero_init_steps=1,
                   perp_neg_scale=1.0, timestep_spacing="model default", sigmas="default", lora="",
                   classifier_scale=DEFAULT_CLASSIFIER_SCALE) -> GenerationSettings:
    """Every user value checked here, each error naming its field and the allowed range."""
    lo, hi, step = size_range(engine)
    steps = check.integer("steps", steps, 1, MAX_STEPS)
    method = check.choice("guidance_method", guidance_method, GUIDANCE_METHODS)
    negative = check.text("negative_prompt", negative_prompt)
    if method == "perp-neg" and not negative.strip():
        raise check.fail("negative_prompt", negative, "a non-empty negative prompt when guidance_method='perp-neg'")
    start = check.number("guidance_interval_start", guidance_interval_start, 0.0, 1.0)
    end = check.number("guidance_interval_end", guidance_interval_end, 0.0, 1.0)
    if start >= end:
        raise check.fail("guidance_interval_start", start, f"less than guidance_interval_end={end:g}")
    return GenerationSettings(
        prompt=check.text("prompt", prompt),
        negative_prompt=negative,
        model=engine.model_id,
        scheduler=check.choice("scheduler", scheduler, eng.known_schedulers()),
        timestep_spacing=check.choice("timestep_spacing", timestep_spacing, SPACINGS),
        sigmas=check.choice("sigmas", sigmas, SIGMA_KINDS),
        steps=steps,
        guidance_method=method,
        guidance_scale=check.number("guidance_scale", guidance_scale, *GUIDANCE_RANGE),
        guidance_rescale=check.number("guidance_rescale", guidance_rescale, 0.0, 1.0),
        guidance_schedule=check.choice("guidance_schedule", guidance_schedule, SCALE_SCHEDULES),
        # (0, 1] covers every step: the interval is (lo, hi] in sampling progress
        guidance_interval=None if (start, end) == (0.0, 1.0) else ((start if start > 0 else -1.0), end),
        apg_momentum=check.number("apg_momentum", apg_momentum, -1.0, 1.0),
        apg_norm_threshold=check.number("apg_norm_threshold", apg_norm_threshold, 0.0, 100.0),
        apg_eta=check.number("apg_eta", apg_eta, 0.0, 1.0),
        cfg_zero_init_steps=check.integer("cfg_zero_init_steps", cfg_zero_init_steps, 0, steps),
        perp_neg_scale=check.number("perp_neg_scale", perp_neg_scale, 0.0, 10.0),
        seed=check.integer("seed", seed, 0, check.MAX_SEED),
        width=check.integer("width", width, lo, hi, multiple_of=step),
        height=check.integer("height", height, lo, hi, multiple_of=step),
        num_images=check.integer("num_images", num_images, 1, MAX_IMAGES),
        lora=lora_user_ui.used(parse_lora("lora", lora, lora_user_ui.blend_names(engine))),
        classifier_scale=check.number("classifier_scale", classifier_scale, *CLASSIFIER_SCALE_RANGE),
    )


def run_pipeline(stream):
    """Turn pipeline ValueErrors (bad combinations the pipeline itself refuses) into gr.Error."""
    try:
        yield from stream
    except ValueError as error:
        raise gr.Error(str(error), title="Invalid settings") from None


def generate(prompt, negative_prompt, scheduler, steps, guidance_scale, seed, randomize_seed=False, width=0,
             height=0, num_images=1, guidance_method="cfg", guidance_rescale=0.0, guidance_schedule="constant",
             guidance_interval_start=0.0, guidance_interval_end=1.0, apg_momentum=-0.5, apg_norm_threshold=15.0,
             apg_eta=0.0, cfg_zero_init_steps=1, perp_neg_scale=1.0, timestep_spacing="model default",
             sigmas="default", preview_every=2, preview_decoder=None, lora="",
             classifier_scale=DEFAULT_CLASSIFIER_SCALE, progress=gr.Progress(), request: gr.Request = None):
    """Stream x_t and predicted-x0 previews every `preview_every` steps, then the image(s).

    Yields (x_t preview, x0 preview, image, all images, settings JSON, status, seed used, trace).
    Each preview carries its label (what, step, t). ``preview_decoder=None``: the model's own
    choice (engine.previews, see pipelines.previews.choose_preview_decoder). A Stop click from the
    same browser session (``request_stop``) ends the loop after the current step and returns the
    steps recorded so far as the trace.
    """
    engine = eng.current()
    if check.boolean("randomize_seed", randomize_seed):
        seed = random.randint(0, check.MAX_SEED)
    native = engine.native_size
    settings = build_settings(
        engine, prompt=prompt, negative_prompt=negative_prompt, scheduler=scheduler, steps=steps,
        guidance_scale=guidance_scale, seed=seed, width=width or native, height=height or native,
        num_images=num_images, guidance_method=guidance_method, guidance_rescale=guidance_rescale,
        guidance_schedule=guidance_schedule, guidance_interval_start=guidance_interval_start,
        guidance_interval_end=guidance_interval_end, apg_momentum=apg_momentum,
        apg_norm_threshold=apg_norm_threshold, apg_eta=apg_eta, cfg_zero_init_steps=cfg_zero_init_steps,
        perp_neg_scale=perp_neg_scale, timestep_spacing=timestep_spacing, sigmas=sigmas, lora=lora,
        classifier_scale=classifier_scale,
    )
    preview_every = check.integer("preview_every", preview_every, 0, MAX_STEPS)
    preview_decoder = check.choice("preview_decoder", preview_decoder or engine_decoder(engine), decoders(engine))

    session = getattr(request, "session_hash", None)
    _stops.discard(session)  # a Stop clicked before this run started is not meant for it
    started = time.perf_counter()
    x_t_image = x0_image = None
    records = []
    progress(0, desc="encoding the prompt")
    stream = run_pipeline(eng.stream_generation(settings, preview_every, preview_decoder))
    for item in stream:
        if not hasattr(item, "step"):  # the final TracingPipelineOutput
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
    calls = records[-1].model_calls if records else 0
    lora_path = getattr(output, "lora_path", None) or "none"  # pipelines/lora.py: "none", "fused" or "unfused"
    blend = ", ".join(f"{a['name']} {a['weight']:g}" for a in settings.lora) or "none"
    status = (f"Done: {len(images)} image(s), {settings.steps} steps, {calls} model calls, {seconds:.1f} s "
              f"on {engine.model_id} ({engine.device}); seed {settings.seed}; LoRA: {blend}"
              + (f" ({lora_path})." if settings.lora else "."))
    trace = trace_store.keep(settings.to_dict(), records, engine.model_id, lora_path=lora_path)
    gallery = gr.update(value=[(im, f"seed {settings.seed} #{i}") for i, im in enumerate(images)],
                        visible=len(images) > 1)
    yield x_t_image, x0_image, images[0], gallery, settings.to_json(), status, settings.seed, trace


def generate_live(*args, **kwargs):
    """The Generate button: ``generate``'s stream with each image labeled (what, step, t).

    The labels travel as component updates, which API clients would receive as dicts, so the
    /generate endpoint keeps ``generate`` (plain values) and only the page's button runs this.
    """
    for out in generate(*args, **kwargs):
        x_t, x0, image, gallery, settings, status, seed, trace = out
        if isinstance(trace, dict) and "records" in trace:  # the last yield (gr.skip() is a dict too)
            if image is not None:
                image = labeled(image, f"image - seed {seed} (PNG + settings)")
        elif x0 is not None:  # a preview: the status is its "step k/N, t=..."
            x_t, x0 = labeled(x_t, f"x_t - {status}"), labeled(x0, f"pred x0 - {status}")
        yield x_t, x0, image, gallery, settings, status, seed, trace


# Gradio finds the inputs, gr.Progress and gr.Request of a handler from its signature and type hints
generate_live.__signature__ = inspect.signature(generate)
generate_live.__annotations__ = dict(generate.__annotations__)


_stops: set = set()  # session hashes whose Stop button was clicked during their run


def request_stop(request: gr.Request):
    """The Stop button: the running Generate of this browser session ends after its current step."""
    _stops.add(request.session_hash)  # no output: a reply racing the run's last yield could overwrite its status


def random_seed() -> int:
    """The dice button: a new seed, drawn once (the run then uses exactly this one)."""
    return random.randint(0, check.MAX_SEED)


def last_seed(trace, seed):
    """The recycle button: the seed of the last run in this session (unchanged if there was none)."""
    return trace["settings"]["seed"] if trace and trace.get("settings") else seed


def stopped(settings: GenerationSettings, records: list, x_t_image, x0_image, seconds: float) -> tuple:
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


def settings_json(settings: GenerationSettings) -> str:
    return json.dumps(settings.to_dict(), indent=2)
