"""How right are the cross-attention maps? Measured on the embedded model, where the truth is known.

    nice -n 10 python -m bench run eval_attention                 # 100 prompts; writes BENCHMARKS.md + docs/attention_iou.json
    python -m bench run eval_attention --num_prompts 10 --no_write

Held-out prompts naming every attribute ("a small red circle in the top left"), one seed each, the
model's defaults (DDIM, 25 steps, guidance 3), maps recorded per step and per resolution level
(``record_attention="levels"``). For each image: the shape's mask, segmented by its color against
the background (shapesworld/attention_eval.py); the shape word's and the color word's maps,
thresholded by DAAM's rule (bilinear upsampling to 32 x 32, min-max normalized, >= 0.4) and
compared with the mask by IoU; the position words' maps against the third of the image they name
(share of the map's mass inside it: a uniform map gets 1/3). Baselines beside each figure: the whole
image as the "map" (IoU = the mask's area share), and the article "a"'s map.
torch runs on --threads threads (1 by default).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from bench.common import command, machine, update_section
from pipelines.attention import word_map, word_tokens
from pipelines.models import load_pipeline, model_spec
from shapesworld.attention_eval import POSITION_WORDS, TAU, iou, mass_in, position_region, shape_mask, threshold_map
from shapesworld.evaluate import eval_cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "Cross-attention maps vs the drawn shapes"
TRUST_FILE = os.path.join(ROOT, "docs", "attention_iou.json")
ALL = "all layers"


def mean(values) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-shapes")
    p.add_argument("--num_prompts", type=int, default=100)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no_write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    spec = model_spec(args.model)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    cases = eval_cases(args.num_prompts)
    steps, scale = spec.default_steps, spec.default_guidance
    scheduler = spec.default_scheduler

    # results[word kind][level][step or "mean"] -> list of IoUs
    iou_rows: dict = {}
    position_mass: dict = {}
    found, started = 0, time.perf_counter()
    picks = sorted({0, steps // 4, steps // 2, (3 * steps) // 4, steps - 1})

    def add(kind, level, when, value):
        iou_rows.setdefault(kind, {}).setdefault(level, {}).setdefault(when, []).append(value)

    for i in range(0, len(cases), args.batch):
        batch = cases[i:i + args.batch]
        out = pipe(prompt=[c.prompt for c in batch], generator=[torch.Generator().manual_seed(c.seed) for c in batch],
                   num_inference_steps=steps, guidance_scale=scale, scheduler=scheduler, output_type="np",
                   record_attention="levels")
        for b, case in enumerate(batch):
            image = out.images[b]
            mask = shape_mask(image)
            if mask.sum() < 4:
                continue
            found += 1
            size = mask.shape
            words = dict(word_tokens(pipe.tokenizer, case.prompt))
            targets = {"shape word": words[case.target.shape], "color word": words[case.target.color],
                       "'a' (control)": words["a"]}
            add("whole image (baseline)", ALL, "mean", iou(np.ones(size, bool), mask))
            levels = [ALL] + sorted(out.trace[0].attention.levels, key=lambda k: -int(k.split("x")[0]))
            for level in levels:
                per_step = [r.attention.maps[b] if level == ALL else r.attention.levels[level][b] for r in out.trace]
                mean_maps = torch.stack(per_step).mean(0)  # DAAM: summed over time
                for kind, positions in targets.items():
                    add(kind, level, "mean", iou(threshold_map(word_map(mean_maps, positions).numpy(), size), mask))
                    if level == ALL:
                        for s in picks:
                            add(kind, level, s, iou(threshold_map(word_map(per_step[s], positions).numpy(), size), mask))
                for word in (case.target.h, case.target.v):
                    if word in words and word in POSITION_WORDS:
                        heat = word_map(mean_maps, words[word]).numpy()
                        position_mass.setdefault(level, []).append(mass_in(heat, position_region(word, size)))
        print(f"{i + len(batch)}/{len(cases)} prompts, {time.perf_counter() - started:.0f} s", flush=True)

    levels = list(iou_rows["shape word"])
    kinds = ["shape word", "color word", "'a' (control)"]
    lines = [
        f"Embedded model ({args.model}), {len(cases)} held-out prompts naming every attribute, one seed each, "
        f"{scheduler} {steps} steps, guidance {scale:g}; shape found (segmented) in {found} images. "
        f"`python -m bench run eval_attention` on {machine()}, {args.threads} thread(s), "
        f"{time.perf_counter() - started:.0f} s.",
        "",
        f"**Threshold rule** (DAAM, Tang et al. 2023): the word's map (sum of its tokens' maps, mean over "
        f"heads, layers and all {steps} steps) upsampled bilinearly to 32 x 32, min-max normalized to [0, 1], "
        f"pixels >= {TAU}; IoU with the generated shape's mask (pixels far from the border's median color, "
        "largest component, holes filled). Per level: only that resolution's layers, at their own size, "
        "upsampled the same way.",
        "",
        "| map | " + " | ".join(levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{mean(iou_rows[kind][lv]['mean']):.3f}" for lv in levels) + " |")
    lines.append(f"| whole image (baseline) | {mean(iou_rows['whole image (baseline)'][ALL]['mean']):.3f} |"
                 + " |" * (len(levels) - 1))
    lines += ["", f"Over steps (one step's map, {ALL}; step 0 is the noisiest):", "",
              "| map | " + " | ".join(f"step {s}" for s in picks) + " |", "|---|" + "---|" * len(picks)]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{mean(iou_rows[kind][ALL][s]):.3f}" for s in picks) + " |")
    lines += ["", "Position words (left / center / right, top / middle / bottom): share of the word's map "
              "inside the third of the image it names (a uniform map: 0.333):", "",
              "| | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels),
              "| mass in the named third | " + " | ".join(f"{mean(position_mass.get(lv, [])):.3f}" for lv in levels) + " |"]
    # reading, from the numbers above (rerunning rewrites it)
    base = mean(iou_rows["whole image (baseline)"][ALL]["mean"])
    best = max(levels, key=lambda lv: mean(iou_rows["shape word"][lv]["mean"]))
    pos = mean(position_mass.get(ALL, []))

    def versus(value):
        return f"{value / base:.1f}x the whole-image baseline" if base > 0 else "no baseline"

    lines += ["", "Reading: the shape word's map (all layers, mean over steps) overlaps the shape at "
              f"{mean(iou_rows['shape word'][ALL]['mean']):.2f} IoU ({versus(mean(iou_rows['shape word'][ALL]['mean']))}), "
              f"the color word's at {mean(iou_rows['color word'][ALL]['mean']):.2f}, the article's at "
              f"{mean(iou_rows[chr(39) + 'a' + chr(39) + ' (control)'][ALL]['mean']):.2f}; the level that localizes the "
              f"shape word best is {best}. Position words: {pos:.3f} of their map in the named third against 0.333 "
              "for a uniform map" + (" -- their maps do not point at the position on this model (it places the shape "
                                     "without a localized position-word map)." if abs(pos - 1 / 3) < 0.03 else ".")]
    body = "\n".join(lines)
    print(body)

    if not args.no_write:
        update_section(SECTION, body, regenerate=command('eval_attention'))
        trust = {
            "model": args.model, "prompts": len(cases), "found": found, "tau": TAU, "steps": steps,
            "guidance_scale": scale, "shape_iou": mean(iou_rows["shape word"][ALL]["mean"]),
            "color_iou": mean(iou_rows["color word"][ALL]["mean"]),
            "control_iou": mean(iou_rows["'a' (control)"][ALL]["mean"]),
            "baseline_iou": mean(iou_rows["whole image (baseline)"][ALL]["mean"]),
            "position_mass": mean(position_mass.get(ALL, [])),
            "per_level_shape_iou": {lv: mean(iou_rows["shape word"][lv]["mean"]) for lv in levels},
        }
        with open(TRUST_FILE, "w", encoding="utf-8") as f:
            json.dump(trust, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
