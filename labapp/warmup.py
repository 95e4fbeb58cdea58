"""Warm start: one tiny generation and the LoRA presets loaded before the page opens.

Measured on the 2-core CPU (issue 23): the first Generate after start took 13-28 s and the first
LoRA grid 22-28 s, against 1.1 s and 4-5 s afterwards. The cost is one-time work that sits on the
first request: peft injecting each adapter into the UNet and text encoder, torch's first call of
each op at each shape, the first PNG written with its settings. ``warm_up`` pays it at start-up,
through the same handler a Generate click runs, so the first visitor does not.
"""
from __future__ import annotations

import time

from . import engine as eng
from . import generate as gen
from . import trace_store

WARMUP_STEPS = 2  # enough to run every op of the loop (first and later steps), cheap on any device
WARMUP_PROMPT = "a red circle"


def _run(engine: eng.Engine, lora: str) -> None:
    scheduler, _, guidance = engine.defaults()
    out = None
    for out in gen.generate(WARMUP_PROMPT, "", scheduler, WARMUP_STEPS, guidance, 0, preview_every=1, lora=lora,
                            progress=lambda *args, **kwargs: None):
        pass
    trace_store.forget(out[-1])  # nobody's run: its records leave the store at once


def _run_inpaint() -> None:
    """An inpainting model (9-channel UNet) refuses text-to-image: one WARMUP_STEPS-step inpainting
    of a shapes-world sample (its top-left quarter) through the /inpaint handler instead."""
    from PIL import Image

    from .inpaint import inpaint
    from .labs import shapes_sample

    image = shapes_sample(3)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (0, 0, image.width // 2, image.height // 2))
    trace_store.forget(inpaint(image, mask, steps=WARMUP_STEPS)[-1])


def warm_up(engine: eng.Engine) -> str:
    """Load every LoRA preset of the model, run one WARMUP_STEPS-step generation with all of them
    and one without (an inpainting model: one inpainting); returns what was done, for the start-up
    log line."""
    from pipelines.inpaint import unet_method

    started = time.perf_counter()
    if unet_method(engine.pipe.unet) == "unet":
        _run_inpaint()
        return f"warmed up in {time.perf_counter() - started:.1f} s (one {WARMUP_STEPS}-step inpainting: an inpainting model)"
    presets = [p.id for p in engine.lora_presets()]
    if presets:
        engine._load_adapters(presets)  # the peft injection the first LoRA request would pay
        _run(engine, ", ".join(f"{name}:0.5" for name in presets))
    _run(engine, "")
    loaded = f"LoRA presets {', '.join(presets)} loaded" if presets else "no LoRA presets for this model"
    return (f"warmed up in {time.perf_counter() - started:.1f} s (one {WARMUP_STEPS}-step generation with and one "
            f"without LoRA; {loaded})")
