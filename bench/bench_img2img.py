"""img2img cost against strength, on the embedded model (models/tiny-shapes), CPU.

For each strength s: UNet calls counted (a forward hook) and CPU time of a traced-off img2img run,
as ratios to a full txt2img run with the same scheduler and steps measured in the same repeat; and
our img2img against diffusers' StableDiffusionImg2ImgPipeline on the same components (s = 0.6).
Runs interleaved; medians over repeats.

    OMP_NUM_THREADS=1 python -m bench run img2img [--steps 20] [--repeats 5] [--scheduler DDIM]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from diffusers import StableDiffusionImg2ImgPipeline

from bench.common import interleaved, machine, paired_ratio
from pipelines.img2img import img2img
from pipelines.models import EMBEDDED_MODEL, load_pipeline

SECTION = 'img2img (SDEdit)'  # of BENCHMARKS.md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STRENGTHS = (0.25, 0.5, 0.75, 1.0)
PROMPT = "a large blue circle in the top left"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scheduler", default="DDIM")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipe = load_pipeline(EMBEDDED_MODEL)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = pipe.fresh_scheduler(args.scheduler)
    stock = StableDiffusionImg2ImgPipeline(**{**pipe.components, "scheduler": copy.deepcopy(pipe.scheduler)},
                                           requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    calls = [0]
    pipe.unet.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))

    from shapesworld import sample
    image = sample(3, empty_prob=0.0).image.convert("RGB")
    common = dict(prompt=PROMPT, num_inference_steps=args.steps, guidance_scale=5.0, output_type="np")

    def timed(fn):
        calls[0] = 0
        start = time.process_time()  # CPU time of this one-thread process: steadier than wall on a shared box
        fn()
        return time.process_time() - start, calls[0]

    runs = {"txt2img": lambda: pipe(generator=torch.Generator().manual_seed(0), **common)}
    for s in STRENGTHS:
        runs[f"img2img s={s}"] = (lambda s=s: img2img(pipe, image, s, generator=torch.Generator().manual_seed(0),
                                                      **common))
    runs["diffusers img2img s=0.6"] = lambda: stock(image=image, strength=0.6, generator=torch.Generator().manual_seed(0),
                                                    **common)
    runs["ours img2img s=0.6"] = lambda: img2img(pipe, image, 0.6, generator=torch.Generator().manual_seed(0), **common)
    samples = interleaved(runs, args.repeats, measure=timed)  # one warm-up each
    names = list(runs)
    times = {k: [seconds for seconds, _ in v] for k, v in samples.items()}
    counts = {k: v[-1][1] for k, v in samples.items()}  # the hook saw stock's UNet too: shared module
    base_t, base_n = statistics.median(times["txt2img"]), counts["txt2img"]
    print(f"# {machine(threads=True, load=True)}; "
          f"{EMBEDDED_MODEL}, {args.scheduler}, {args.steps} steps, CFG 5, median of {args.repeats}")
    print(f"{'run':26s} {'UNet calls':>10s} {'calls/full':>10s} {'CPU s':>9s} {'time/full':>9s}")
    for k in names:
        t = statistics.median(times[k])
        print(f"{k:26s} {counts[k]:10d} {counts[k] / base_n:10.3f} {t:9.3f} {t / base_t:9.3f}")
    ratio = paired_ratio(times, "ours img2img s=0.6", "diffusers img2img s=0.6")
    print(f"ours / diffusers img2img at s=0.6 (record off), median per-repeat CPU-time ratio: {ratio:.3f}x")


if __name__ == "__main__":
    main()
