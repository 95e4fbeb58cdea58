"""Traced inpainting against diffusers' StableDiffusionInpaintPipeline on the same components, CPU.

Two cases: latent blending on the embedded model (models/tiny-shapes, 4-channel UNet), and the
9-channel method on a UNet of the embedded model's shape with 9 input channels (random weights:
cost, not quality). record="off"; CPU time of the one-thread process, runs interleaved, medians of
per-repeat ratios. Both sides are checked to give the same image first.

    OMP_NUM_THREADS=1 python -m bench run inpaint [--steps 20] [--repeats 7]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics

import numpy as np
import torch

from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

from bench.common import interleaved, machine, paired_ratio
from pipelines import TracingStableDiffusionPipeline
from pipelines.inpaint import inpaint
from pipelines.models import EMBEDDED_MODEL, load_pipeline

SECTION = 'Inpainting: traced run against diffusers'  # of BENCHMARKS.md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPT = "a large blue square in the top left"


def pair(components, scheduler):
    ours = TracingStableDiffusionPipeline(**{**components, "scheduler": copy.deepcopy(scheduler)})
    stock = StableDiffusionInpaintPipeline(**{**components, "scheduler": copy.deepcopy(scheduler)},
                                           requires_safety_checker=False)
    for p in (ours, stock):
        p.set_progress_bar_config(disable=True)
    return ours, stock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = load_pipeline(EMBEDDED_MODEL)
    components = {k: v for k, v in base.components.items()}
    torch.manual_seed(0)
    unet9 = UNet2DConditionModel.from_config({**base.unet.config, "in_channels": 9})
    from PIL import Image

    from shapesworld import sample
    image = sample(3, empty_prob=0.0).image.convert("RGB")
    mask = np.zeros((image.height, image.width), np.uint8)
    mask[: image.height // 2, : image.width // 2] = 255
    mask = Image.fromarray(mask)
    kw = dict(prompt=PROMPT, num_inference_steps=args.steps, guidance_scale=3.0, output_type="np")
    cases = {"blend (tiny-shapes)": pair(components, base.scheduler),
             "9-channel UNet (tiny-shapes shape)": pair({**components, "unet": unet9}, base.scheduler)}
    runs = {}
    for name, (ours, stock) in cases.items():
        a = stock(image=image, mask_image=mask, generator=torch.Generator().manual_seed(0), height=image.height,
                  width=image.width, **kw).images
        b = inpaint(ours, image, mask, generator=torch.Generator().manual_seed(0), **kw).images
        diff = float(np.abs(a - b).max())
        print(f"{name}: max |ours - diffusers| = {diff:.2e}")
        runs[(name, "diffusers")] = lambda s=stock: s(image=image, mask_image=mask, height=image.height, width=image.width,
                                                      generator=torch.Generator().manual_seed(0), **kw)
        runs[(name, "ours")] = lambda o=ours: inpaint(o, image, mask, generator=torch.Generator().manual_seed(0), **kw)
    times = interleaved(runs, args.repeats)  # CPU seconds, one warm-up each
    print(f"# {machine(threads=True, load=True)}; "
          f"{args.steps} steps DDIM, CFG 3, 32 px, record off, median of {args.repeats}")
    for name in cases:
        d, o = statistics.median(times[(name, "diffusers")]), statistics.median(times[(name, "ours")])
        ratio = paired_ratio(times, (name, "ours"), (name, "diffusers"))
        print(f"{name:36s} diffusers {d:.3f} s  ours {o:.3f} s  ours/diffusers (median per repeat) {ratio:.3f}x")


if __name__ == "__main__":
    main()
