"""The Generate handler: validate, stream previews from the step records, finish with the image,
its settings (JSON + PNG text chunk) and the trace for the explorer and the CFG lab."""
from __future__ import annotations

import json
import random
import re
import time

import gradio as gr

from pipelines.guidance import GUIDANCE_METHODS, SCALE_SCHEDULES
from pipelines.previews import PREVIEW_DECODERS
from pipelines.schedulers import SIGMA_KINDS, TIMESTEP_SPACINGS

from . import engine as eng
from . import trace_store
from . import validation as check
from .images import upscale
from .metadata import GenerationSettings, with_settings

MAX_STEPS = 150
MAX_IMAGES = 4
GUIDANCE_RANGE = (0.0, 30.0)
LORA_WEIGHT_RANGE = (-2.0, 2.0)
SPACINGS = ("model default",) + TIMESTEP_SPACINGS
PREVIEW_SIZE = 256


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
                   perp_neg_scale=1.0, timestep_spacing="model default", sigmas="default", lora="") -> GenerationSettings:
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
        lora=parse_lora("lora", lora, [p.id for p in engine.lora_presets()]),
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
             sigmas="default", preview_every=2, preview_decoder="linear", lora="", progress=gr.Progress()):
    """Stream x_t and predicted-x0 previews every `preview_every` steps, then the image(s).

    Yields (x_t preview, x0 preview, image, all images, settings JSON, status, seed used, trace).
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
    )
    preview_every = check.integer("preview_every", preview_every, 0, MAX_STEPS)
    preview_decoder = check.choice("preview_decoder", preview_decoder, PREVIEW_DECODERS)

    started = time.perf_counter()
    x_t_image = x0_image = None
    records = []
    progress(0, desc="encoding the prompt")
    for item in run_pipeline(eng.stream_generation(settings, preview_every, preview_decoder)):
        if not hasattr(item, "step"):  # the final TracingPipelineOutput
            output = item
            break
        records.append(trace_store.compact(item))  # what the views need, not the full record
        progress((item.step + 1, item.num_steps), desc="denoising", unit="steps")
        if item.previews:
            x_t_image = upscale(item.previews["x_t"][0], PREVIEW_SIZE)
            x0_image = upscale(item.previews["x0_guided"][0], PREVIEW_SIZE)
            status = f"step {item.step + 1} / {item.num_steps} - t = {item.timestep:.0f}"
            yield x_t_image, x0_image, None, None, gr.skip(), status, settings.seed, gr.skip()
    images = [with_settings(image, settings, i) for i, image in enumerate(output.images)]
    seconds = time.perf_counter() - started
    calls = records[-1].model_calls if records else 0
    status = (f"Done: {len(images)} image(s), {settings.steps} steps, {calls} model calls, {seconds:.1f} s "
              f"on {engine.model_id} ({engine.device}).")
    trace = trace_store.keep(settings.to_dict(), records, engine.model_id)
    gallery = gr.update(value=[(im, f"seed {settings.seed} #{i}") for i, im in enumerate(images)],
                        visible=len(images) > 1)
    yield x_t_image, x0_image, images[0], gallery, settings.to_json(), status, settings.seed, trace


def settings_json(settings: GenerationSettings) -> str:
    return json.dumps(settings.to_dict(), indent=2)
