"""Classifier guidance vs classifier-free guidance on the embedded model, measured side by side.

    python -m bench run eval_guidance_kinds                    # 100 prompts, 25 steps; writes BENCHMARKS.md
    python -m bench run eval_guidance_kinds --num_prompts 20 --no_write

Same held-out prompts (every attribute named) and the same seeds (hence the same initial noise)
for every kind: the unconditional model alone (empty prompt), classifier guidance alone (the UNet
never sees the prompt) over --cg_scales, CFG over --cfg_scales, and CG+CFG at the best CFG scale
over --cgcfg_scales. Adherence by the shapes-world scorer; UNet and classifier calls per image counted
by hooks; seconds per image, and its ratio to the unconditional run, measured in the same run.
torch runs on --threads threads (1 by default).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from bench.common import command, machine, update_section
from shapesworld.evaluate import eval_cases
from pipelines.guidance_eval import mean_adherence, run_kind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECTION = "Classifier guidance vs classifier-free guidance"


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/tiny-shapes")
    p.add_argument("--classifier", default=None, help="classifier folder (default: <model>/classifier)")
    p.add_argument("--num_prompts", type=int, default=100)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--scheduler", default=None, help="registry name (default: the model's own scheduler)")
    p.add_argument("--cg_scales", default="2,4,8,16,32", help="classifier scales s of CG alone")
    p.add_argument("--cfg_scales", default="1.5,3,5", help="CFG scales w")
    p.add_argument("--cgcfg_scales", default="2,8", help="classifier scales s of CG+CFG (at the best CFG w)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON of every run (default: none)")
    p.add_argument("--no_write", action="store_true", help="do not update BENCHMARKS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pipelines import TracingStableDiffusionPipeline
    from pipelines.classifier import load_classifier

    pipe = TracingStableDiffusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    pipe.classifier = load_classifier(args.classifier or os.path.join(args.model, "classifier"))
    cases = eval_cases(args.num_prompts, args.seed)
    common = dict(prompts=[c.prompt for c in cases], seeds=[c.seed for c in cases], targets=[c.target for c in cases],
                  mentioned=[c.mentioned for c in cases], steps=args.steps, scheduler=args.scheduler,
                  batch_size=args.batch_size)

    runs = []

    def run(kind, cfg_scale=1.0, classifier_scale=0.0):
        r = run_kind(pipe, kind=kind, cfg_scale=cfg_scale, classifier_scale=classifier_scale, **common)
        runs.append(r)
        a = r.adherence
        print(f"{kind:15s} w={cfg_scale:<4g} s={classifier_scale:<4g} shape {a['shape']:.2f} color {a['color']:.2f} "
              f"size {a['size']:.2f} position {a['position']:.2f} mean {mean_adherence(a):.3f} | unet/img "
              f"{r.unet_calls_per_image:g} clf/img {r.classifier_calls_per_image:g} s/img {r.seconds_per_image:.3f}",
              flush=True)
        return r

    warm = dict(common, prompts=common["prompts"][:2], seeds=common["seeds"][:2], targets=common["targets"][:2],
                mentioned=common["mentioned"][:2])
    run_kind(pipe, kind="classifier+cfg", cfg_scale=3.0, classifier_scale=1.0, **warm)  # warm-up, not reported
    uncond = run("uncond")
    cg = [run("classifier", classifier_scale=s) for s in floats(args.cg_scales)]
    cfg = [run("cfg", cfg_scale=w) for w in floats(args.cfg_scales)]
    best_cg = max(cg, key=lambda r: mean_adherence(r.adherence))
    best_cfg = max(cfg, key=lambda r: mean_adherence(r.adherence))
    both = [run("classifier+cfg", cfg_scale=best_cfg.cfg_scale, classifier_scale=s) for s in floats(args.cgcfg_scales)]
    best_both = max(both, key=lambda r: mean_adherence(r.adherence))

    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "runs": [r.summary() for r in runs]}, f, indent=2)

    def row(r, mark=""):
        a = r.adherence
        return (f"| {r.kind}{mark} | {r.cfg_scale:g} | {r.classifier_scale:g} | {a['shape']:.2f} | {a['color']:.2f} | "
                f"{a['size']:.2f} | {a['position']:.2f} | {mean_adherence(a):.3f} | {r.unet_calls_per_image:g} | "
                f"{r.classifier_calls_per_image:g} | {r.seconds_per_image * 1000:.0f} | "
                f"{r.seconds_per_image / uncond.seconds_per_image:.2f}x |")

    header = ("| kind | CFG w | CG s | shape | color | size | position (h and v) | mean of 5 | UNet rows/img | "
              "classifier passes/img | ms/img | time vs uncond |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [row(r, " (best)" if r in (best_cg, best_cfg, best_both) else "") for r in runs]
    chance = "chance: shape 0.33, color 0.17, size 0.50, position 0.11"
    targets_met = best_cg.adherence["color"] >= 0.90 and best_cg.adherence["shape"] >= 0.80
    body = f"""Command: `OMP_NUM_THREADS=1 python -m bench run eval_guidance_kinds` (torch.set_num_threads({args.threads})).
Machine: {machine()}, shared with other jobs. {args.num_prompts} held-out prompts naming every attribute
(shapesworld.evaluate.eval_cases seed {args.seed}), {args.steps} steps, the model's own scheduler
({args.scheduler or 'DDIM trailing, v-prediction, zero terminal SNR'}), the same seed per prompt for every kind. Adherence by the
shapes-world scorer ({chance}). "UNet rows/img": UNet batch rows per image (steps x branches), counted by a hook;
"classifier passes/img": forward + backward of the classifier per image. "best" = highest mean of the 5 attributes.

{header}
""" + "\n".join(lines) + f"""

Targets (issue 15): unconditional color at chance (measured {uncond.adherence['color']:.2f}); classifier guidance
alone at the default scale s = {best_cg.classifier_scale:g} reaches color {best_cg.adherence['color']:.2f} (target >= 0.90) and
shape {best_cg.adherence['shape']:.2f} (target >= 0.80): {'met' if targets_met else 'NOT met'}.
"""
    print(body)
    if not args.no_write:
        update_section(SECTION, body, regenerate=command('eval_guidance_kinds'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
