"""Handlers of the CFG, scheduler, forward-process and LoRA labs (each also an API endpoint)."""
from __future__ import annotations

import gradio as gr
import numpy as np
import torch
from PIL import Image

from pipelines.forward import snr
from pipelines.guidance import GUIDANCE_METHODS
from pipelines.request import schedule_options
from pipelines.schedulers import sampling_schedule, scheduler_note, training_schedule

from . import engine as eng
from . import lora_user_ui, plots
from . import validation as check
from .generate import GUIDANCE_RANGE, MAX_STEPS, build_request
from .images import center_square, crop_view, pil_to_tensor, tensor_to_pil, upscale
from .uploads import read_image

GRID_SIZE = 192
MAX_ADHERENCE_PROMPTS = 32
TRAJECTORY_FRAMES = 6
MAX_SAMPLE_INDEX = 1_000_000


def _settings(**form):
    """A request at the model's native size (``form``: /generate's fields by name)."""
    return build_request(eng.current(), **form)


def within_budget(endpoint: str, jobs, columns: int = 1, hint: str = "fewer steps") -> None:
    """Refuse a request whose work exceeds engine.MODEL_CALL_BUDGET, before anything runs."""
    cost = eng.request_cost(jobs, columns)
    if cost > eng.MODEL_CALL_BUDGET:
        raise gr.Error(f"{endpoint}: this request needs {cost} model calls (steps x calls per step x images x "
                       f"guidance branches); the budget is {eng.MODEL_CALL_BUDGET} model calls per request "
                       f"(as much as the largest single Generate run). Use {hint}.", title="Too much work for one request")


# ------------------------------------------------------------------------------ CFG lab


@check.gradio_errors
def cfg_sweep(prompt, negative_prompt, scales, seed, steps, scheduler, adherence_prompts=8):
    """One seed at several guidance scales (a grid); with the embedded model, also the scorer's
    prompt-adherence accuracy per scale over `adherence_prompts` shapes-world prompts."""
    scales = check.number_list("scales", scales, *GUIDANCE_RANGE)
    n_prompts = check.integer("adherence_prompts", adherence_prompts, 0, MAX_ADHERENCE_PROMPTS)
    jobs = [_settings(prompt=prompt, negative_prompt=negative_prompt, scheduler=scheduler, steps=steps,
                      guidance_scale=w, seed=seed) for w in scales]
    engine = eng.current()
    adherence_jobs = []
    if engine.is_embedded and n_prompts:
        from shapesworld import full_caption, sample

        samples = [sample(10_000 + i, empty_prob=0.0) for i in range(n_prompts)]
        captions = [full_caption(s.attributes) for s in samples]
        # one batch per scale, one generator: image i gets the same noise at every w
        adherence_jobs = [_settings(prompt="x", negative_prompt="", scheduler=scheduler, steps=steps, guidance_scale=w,
                                    seed=seed).replace(prompt=captions) for w in scales]
    within_budget("cfg_sweep", jobs + adherence_jobs, hint="fewer scales or adherence prompts, or fewer Steps on the "
                                                           "Generate tab (the sweep runs at its step count)")
    grid = [(upscale(out.images[0], GRID_SIZE), f"w = {w:g}") for w, out in zip(scales, eng.generate_batch(jobs))]
    if not adherence_jobs:
        why = "the scorer reads shapes-world images: load the embedded model" if not engine.is_embedded else "0 prompts asked"
        return grid, None, f"Adherence curve skipped ({why})."

    from shapesworld import adherence, score_image

    accuracy: dict[str, list[float]] = {}
    rows = []
    for w, out in zip(scales, eng.generate_batch(adherence_jobs)):
        acc = adherence([score_image(im) for im in out.images], [s.attributes for s in samples])
        for key in ("shape", "color", "size", "position"):
            accuracy.setdefault(key, []).append(acc[key])
        rows.append(f"| {w:g} | " + " | ".join(f"{acc[k]:.2f}" for k in ("shape", "color", "size", "position")) + " |")
    table = "| w | shape | color | size | position |\n|---|---|---|---|---|\n" + "\n".join(rows)
    return grid, plots.adherence_curve(scales, accuracy, n_prompts), table


@check.gradio_errors
def compare_guidance(prompt, negative_prompt, methods, guidance_scale, seed, steps, scheduler):
    """The same seed under several guidance methods (default knobs), side by side."""
    methods = check.choices("methods", methods, GUIDANCE_METHODS)
    jobs = [_settings(prompt=prompt, negative_prompt=negative_prompt, scheduler=scheduler, steps=steps,
                      guidance_scale=guidance_scale, seed=seed, guidance_method=m) for m in methods]
    within_budget("compare_guidance", jobs, hint="fewer methods, or fewer Steps on the Generate tab")
    return [(upscale(out.images[0], GRID_SIZE), m) for m, out in zip(methods, eng.generate_batch(jobs))]


# ------------------------------------------------------------------------------ scheduler lab


@check.gradio_errors
def schedule(schedulers, steps, timestep_spacing="model default", sigmas="default"):
    """The model's training schedule (alpha_bar, sigma, log-SNR) with each scheduler's picks."""
    engine = eng.current()
    names = check.choices("schedulers", schedulers, eng.known_schedulers())
    steps = check.integer("steps", steps, 1, MAX_STEPS)
    options = schedule_options(timestep_spacing, sigmas)
    train = training_schedule(engine.scheduler_config)
    chosen = {}
    for name in names:
        try:
            chosen[name] = sampling_schedule(name, engine.scheduler_config, steps, **options)
        except ValueError as error:
            raise gr.Error(f"schedulers: {error}", title="Invalid settings") from None
    data = {name: {"timesteps": [round(float(t), 3) for t in s["timesteps"]], "num_model_calls": s["num_model_calls"]}
            for name, s in chosen.items()}
    return plots.schedule_curves(train, chosen), data


@check.gradio_errors
def compare_schedulers(prompt, negative_prompt, schedulers, steps, guidance_scale, seed):
    """Several samplers on the same seed and steps: final images, x0 trajectories, model calls."""
    names = check.choices("schedulers", schedulers, eng.known_schedulers())
    jobs = [_settings(prompt=prompt, negative_prompt=negative_prompt, scheduler=n, steps=steps,
                      guidance_scale=guidance_scale, seed=seed) for n in names]
    within_budget("compare_schedulers", jobs, hint="fewer schedulers or steps")
    outputs = eng.generate_batch(jobs, record="light")
    finals, trajectories, calls = [], [], []
    for name, out in zip(names, outputs):
        records = out.trace or []
        n_calls = records[-1].model_calls if records else 0
        calls.append(n_calls)
        note = scheduler_note(name)
        finals.append((upscale(out.images[0], GRID_SIZE), f"{name} - {n_calls} model calls" + (f" ({note})" if note else "")))
        picks = np.unique(np.linspace(0, len(records) - 1, min(TRAJECTORY_FRAMES, len(records))).round().astype(int))
        frames = eng.decode_latents(torch.cat([records[i].x0_guided[:1] for i in picks]), "vae")
        # one gallery row per sampler, one captioned tile per frame (a grid, not a long strip)
        trajectories += [(upscale(frame, GRID_SIZE), f"{name} - step {i + 1}/{len(records)}, t = {records[i].timestep:.0f}")
                         for i, frame in zip(picks, frames)]
        blank = Image.new("RGB", (GRID_SIZE, GRID_SIZE), "white")  # keeps one row per sampler when steps < frames
        trajectories += [(blank, f"{name} - no further step")] * (TRAJECTORY_FRAMES - len(frames))
    return finals, trajectories, plots.model_calls_bars(names, calls)


# ------------------------------------------------------------------------------ forward process


@check.gradio_errors
def shapes_sample(index):
    """A shapes-world image (the embedded model's domain) to noise."""
    from shapesworld import sample

    index = check.integer("index", index, 0, MAX_SAMPLE_INDEX)
    return sample(index, empty_prob=0.0).image


@check.gradio_errors
def forward_noise(image, timestep, seed=0):
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps with the model's own schedule,
    in pixel space and in the latent space the UNet works in."""
    engine = eng.current()
    image = read_image("image", image)
    t = check.integer("timestep", timestep, 0, engine.num_train_timesteps - 1)
    seed = check.integer("seed", seed, 0, check.MAX_SEED)
    x0 = pil_to_tensor(image, engine.native_size)
    result = eng.forward_noise_latents(x0, t, seed)
    pixels = upscale(tensor_to_pil(result["x_t_pixels"][0]), GRID_SIZE)
    latent_view = upscale(eng.decode_latents(result["z_t"], "vae")[0], GRID_SIZE)
    train = training_schedule(engine.scheduler_config)
    ab = float(train["alpha_bar"][t])
    snr_t = float(snr(ab))
    snr_text = "inf" if snr_t == float("inf") else ("0" if snr_t == 0 else f"{snr_t:.4g}")
    info = (f"**t = {t}** &nbsp; alpha_bar = {ab:.4f} &nbsp; signal sqrt(alpha_bar) = {ab ** 0.5:.3f} &nbsp; "
            f"noise sqrt(1 - alpha_bar) = {(1 - ab) ** 0.5:.3f} &nbsp; SNR = {snr_text}")
    return pixels, latent_view, info, plots.signal_noise(train, t)


@check.gradio_errors
def forward_crop(image):
    """The forward tool's input as the model gets it: the center square outlined, the rest dimmed
    (the page, on every new image; None while there is no image)."""
    if image is None:
        return None, ""
    image = read_image("image", image)
    size = eng.current().native_size
    left, top, right, bottom = center_square(*image.size)
    kept = "the whole image (it is square)" if (right - left, bottom - top) == image.size else \
        f"the center {right - left}x{bottom - top} px of {image.width}x{image.height}"
    return crop_view(image), f"The model sees {kept}, resized to {size}x{size} px."


# ------------------------------------------------------------------------------ LoRA mixer


@check.gradio_errors
def lora_grid(prompt, lora, seed, steps, guidance_scale, scheduler):
    """Comparison grid on one seed: no adapter, each adapter alone (at its blend setting), the blend."""
    engine = eng.current()
    if engine.blender is None or not lora_user_ui.blend_names(engine):
        raise gr.Error(f"model {engine.model_id!r} has no LoRA presets available", title="No LoRA presets")
    job = _settings(prompt=prompt, negative_prompt="", scheduler=scheduler, steps=steps,
                    guidance_scale=guidance_scale, seed=seed, lora=lora)
    example = ""
    if not job.blend.adapters:  # no blend chosen (Generate's default): show the mixer's example blend, and say so
        from .lora_ui import example_spec

        example = example_spec(engine.lora_presets())
        if not example:
            raise check.fail("lora", lora, "at least one adapter (e.g. 'outline:0.8')")
        job = _settings(prompt=prompt, negative_prompt="", scheduler=scheduler, steps=steps,
                        guidance_scale=guidance_scale, seed=seed, lora=example)
    within_budget("lora_grid", [job], columns=len(job.blend.adapters) + 2,
                  hint="fewer adapters, or fewer Steps on the Generate tab")
    columns, images = eng.lora_grid_images(job)
    weights = {a.name: f"{a.name} {a.weight:g}" for a in job.blend.adapters}  # captions say the weights
    columns = [weights.get(c, c) for c in columns[:-1]] + [f"blend {', '.join(weights.values())}"]
    if example:
        columns = columns[:-1] + [f"example blend {example} (no blend was chosen)"]
    return [(upscale(image, GRID_SIZE), label) for label, image in zip(columns, images)]
