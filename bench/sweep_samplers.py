"""Sweep every registry sampler x timestep spacing x sigmas x steps (x modes) on a model; count outcomes.

    python -m bench run sweep_samplers                                   # the issue-27 grid: 10/25/50 steps, txt2img
    python -m bench run sweep_samplers --steps 1-150 --modes all         # everything the UI/API accepts (long)
    python -m bench run sweep_samplers --config sd15                     # tiny components, SD 1.5's scheduler config

Refused = make_scheduler's ValueError before the run; crash = any exception; flat = pixel std < 2;
wrong color = the scorer does not read the prompt's red (embedded model only).
"""
from __future__ import annotations

import argparse
import time

from bench.common import machine
from testkit.sampler_sweep import MODES, SIGMAS, SPACINGS, counts, grid, run_case, wrong_color


def parse_steps(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def load(config: str):
    from pipelines import TracingStableDiffusionPipeline

    if config == "embedded":
        pipe = TracingStableDiffusionPipeline.from_pretrained("models/tiny-shapes")
    else:
        from testkit.sampler_sweep import sd15_tiny_pipeline

        pipe = sd15_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", choices=("embedded", "sd15"), default="embedded")
    p.add_argument("--steps", default="10,25,50")
    p.add_argument("--modes", default="txt2img", help="comma list of " + ",".join(MODES) + ", or 'all'")
    p.add_argument("--schedulers", default="", help="comma list (default: all)")
    args = p.parse_args()
    modes = MODES if args.modes == "all" else tuple(args.modes.split(","))
    names = [n.strip() for n in args.schedulers.split(",") if n.strip()] or None
    pipe = load(args.config)
    cases = grid(names, SPACINGS[1:], SIGMAS, parse_steps(args.steps), modes)  # explicit spacings, as the issue
    t0 = time.perf_counter()
    outcomes = []
    for i, case in enumerate(cases):  # progress as it goes: a long sweep on a busy machine can be cut short
        outcomes.append(run_case(pipe, case))
        if outcomes[-1].status not in ("ok", "refused"):
            print(f"  {outcomes[-1].status}: {case.label()}: {outcomes[-1].message[:120]}", flush=True)
        if (i + 1) % 9 == 0:
            print(f"[{i + 1}/{len(cases)}] {counts(outcomes)}", flush=True)
    result = counts(outcomes)
    if args.config == "embedded":
        wrong = wrong_color(outcomes)
        result["wrong color"] = len(wrong)
    print(f"{len(cases)} runs in {time.perf_counter() - t0:.0f} s: {result}")
    print(f"machine: {machine(threads=True, load=True)}")
    if args.config == "embedded":
        for o in wrong:
            print(f"  wrong color: {o.case.label()}")


if __name__ == "__main__":
    main()
