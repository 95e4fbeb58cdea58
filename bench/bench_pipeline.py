"""Tracing pipeline vs diffusers' StableDiffusionPipeline: same components, seed and steps.

Runs are interleaved (each repeat runs every variant once, in rotating order) and reported as
medians over repeats; each variant's ratio is the median of its per-repeat ratio to the stock
run of the same repeat, so slow drift on a shared machine cancels.

    OMP_NUM_THREADS=1 python -m bench run pipeline                 # mid-size random UNet, CPU
    python -m bench run pipeline --model models/tiny-shapes        # the embedded model
    python -m bench run pipeline --sd15-gpu                        # SD 1.5 architecture, random
                                                                     # weights, fp16, 512 px, 30 steps

Variants: off (record="off"; target <= 1.03x), light (record="light" + linear previews of x0_guided
every step; target <= 1.10x), full (record="full" + linear previews of x0_guided/cond/uncond),
attention (record_attention=True: light records + cross-attention maps; target <= 1.25x), attention
levels (record_attention="levels": also the per-level maps).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from diffusers import StableDiffusionPipeline

from bench.common import interleaved, machine
from pipelines import TracingStableDiffusionPipeline
from testkit.components import midsize_components, sd15_components

SECTION = 'Tracing pipeline'  # of BENCHMARKS.md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPT = "a red circle"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a local diffusers folder (e.g. models/tiny-shapes)")
    p.add_argument("--sd15-gpu", action="store_true", help="SD 1.5 architecture, random weights, fp16 on CUDA")
    p.add_argument("--device", default=None, help="default: cuda for --sd15-gpu, else cpu")
    p.add_argument("--steps", type=int, default=None, help="default 25 (30 with --sd15-gpu)")
    p.add_argument("--size", type=int, default=None, help="image size in pixels (default: the model's)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    args = p.parse_args()

    device = args.device or ("cuda" if args.sd15_gpu else "cpu")
    torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.sd15_gpu and device == "cuda" else torch.float32
    if args.sd15_gpu:
        components, label = sd15_components(device, dtype), "SD 1.5 architecture, random weights"
        steps, size = args.steps or 30, args.size or 512
    elif args.model:
        stock = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None,
                                                        requires_safety_checker=False)
        components, label = dict(stock.components), args.model
        steps, size = args.steps or 25, args.size
    else:
        components, label = midsize_components(), "random UNet (64, 128, 128), 8x8x4 latents"
        steps, size = args.steps or 25, args.size
    ours = TracingStableDiffusionPipeline(**components).to(device)
    stock = StableDiffusionPipeline(**components, requires_safety_checker=False).to(device)
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
    size = size or ours.unet.config.sample_size * ours.vae_scale_factor

    call = dict(num_inference_steps=steps, guidance_scale=args.guidance, height=size, width=size, output_type="np")
    if components["tokenizer"] is None:  # no tokenizer files without a download: random text features
        g = torch.Generator().manual_seed(1)
        dim = components["text_encoder"].config.hidden_size
        call["prompt_embeds"] = torch.randn(1, 77, dim, generator=g).to(device, dtype)
        call["negative_prompt_embeds"] = torch.randn(1, 77, dim, generator=g).to(device, dtype)
    else:
        call["prompt"] = PROMPT
    x0s = ("x0_guided", "x0_cond", "x0_uncond")
    variants = {
        "stock": (stock, {}),
        "off": (ours, dict(record="off")),
        "light+previews": (ours, dict(record="light", preview_every=1, preview_targets=("x0_guided",))),
        "full+3 previews": (ours, dict(record="full", preview_every=1, preview_targets=x0s)),
        "attention": (ours, dict(record_attention=True)),  # issue 32: record="light" + cross-attention maps
        "attention levels": (ours, dict(record_attention="levels")),
    }

    def run(name):
        """(wall seconds, process CPU seconds). On a shared CPU box the CPU time is the steadier
        measure of the work done (OMP_NUM_THREADS=1: one thread computes); on CUDA, wall only."""
        pipe, extra = variants[name]
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        pipe(generator=torch.Generator(device="cpu").manual_seed(0), **call, **extra)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu_start

    names = list(variants)
    for name in names:  # warm-up
        run(name)
    times = interleaved({name: name for name in names}, args.repeats, measure=run, warmup=False)  # run(name) measures

    print(f"# bench_pipeline: {label}; {steps} steps, {size}x{size} px, guidance {args.guidance}, "
          f"{args.repeats} interleaved repeats")
    print(f"# machine: {machine(load=True)}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
          + f", torch threads {torch.get_num_threads()}, dtype {str(dtype).split('.')[-1]}")
    measures = ("wall",) if device == "cuda" else ("wall", "cpu")
    print(f"{'variant':<18}" + "".join(f"{m + ' s':>10}{m + ' ratio':>12}" for m in measures))
    for name in names:
        line = f"{name:<18}"
        for k, m in enumerate(measures):
            mine = [t[k] for t in times[name]]
            ratios = [a[k] / b[k] for a, b in zip(times[name], times["stock"])]
            line += f"{statistics.median(mine):>10.3f}{statistics.median(ratios):>11.3f}x"
        print(line)

if __name__ == "__main__":
    main()
