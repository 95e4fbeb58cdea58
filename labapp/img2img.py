"""Handlers of the timestep explorer's reverse-process tools: "Denoise from here" (img2img / SDEdit).

Validation and display only; the math is pipelines/img2img.py on the pipeline's one loop.
"""
from __future__ import annotations

import math
import time

import gradio as gr
import spaces

from pipelines.img2img import SDEditStart

from . import engine as eng
from . import validation as check
from .generate import PREVIEW_SIZE, build_settings
from .images import pil_to_tensor, upscale
from .metadata import GenerationSettings


def _img2img_duration(settings: GenerationSettings, image, strength: float) -> int:
    return eng._gpu_seconds(math.ceil(settings.steps * strength) * settings.num_images)


@spaces.GPU(duration=_img2img_duration)
def run_img2img(settings: GenerationSettings, image, strength: float):
    """The traced img2img run (record='full'): ``image`` (1, 3, H, W) in [-1, 1] at the settings' size."""
    engine = eng.current()
    with engine.pipeline(settings.lora) as pipe:
        return pipe(**eng.call_kwargs(settings), start=SDEditStart(image, strength), record="full")


def check_image(field: str, image, min_side: int):
    if image is None:
        raise check.fail(field, None, "an image (upload one or load a shapes-world sample)")
    if not hasattr(image, "size") or min(image.size) < min_side:
        size = "x".join(map(str, image.size)) if hasattr(image, "size") else type(image).__name__
        raise check.fail(field, size, f"an image at least {min_side}x{min_side} px")
    return image


def check_strength(strength, steps: int) -> float:
    value = check.number("strength", strength, 0.0, 1.0)
    if value <= 0.0:
        raise check.fail("strength", strength, "a number in (0, 1]: 0 would run no step (1 = from pure noise)")
    if int(steps * value) < 1:
        raise check.fail("strength", strength, f"at least 1/steps = {1 / steps:.3g} with steps={steps} "
                                               "(int(strength x steps) steps are run)")
    return value


def img2img(image, prompt="", negative_prompt="", strength=0.6, scheduler="DDIM", steps=20, guidance_scale=7.5,
            seed=0):
    """Noise ``image`` to t ~ strength x T and denoise it with ``prompt`` (SDEdit).

    Returns (image, status, trace for the explorer). The image is center-cropped and resized to
    the model's size, as in the forward-process tool.
    """
    engine = eng.current()
    native = engine.native_size
    image = check_image("image", image, engine.vae_scale_factor)
    settings = build_settings(engine, prompt=prompt, negative_prompt=negative_prompt, scheduler=scheduler,
                              steps=steps, guidance_scale=guidance_scale, seed=seed, width=native, height=native)
    strength = check_strength(strength, settings.steps)
    started = time.perf_counter()
    try:
        output = run_img2img(settings, pil_to_tensor(image, native), strength)
    except ValueError as error:
        raise gr.Error(str(error), title="Invalid settings") from None
    records = output.trace or []
    calls = records[-1].model_calls if records else 0
    first = f"t = {records[0].timestep:.0f}" if records else "-"
    status = (f"img2img at strength {strength:g}: {len(records)} of {settings.steps} steps from {first}, "
              f"{calls} model calls, {time.perf_counter() - started:.1f} s on {engine.model_id}.")
    trace = {"settings": {**settings.to_dict(), "strength": strength}, "records": records, "model": engine.model_id}
    return upscale(output.images[0], PREVIEW_SIZE), status, trace
