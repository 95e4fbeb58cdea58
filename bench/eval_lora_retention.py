"""Color and shape retention of the embedded style LoRAs across weights 0 ... 1 (steps of 0.1).

    python -m bench run eval_lora_retention                  # 100 prompts, writes BENCHMARKS.md
    python -m bench run eval_lora_retention --num_samples 12 --no_write

Each shipped LoRA alone and each pair (both at the same weight) on the same seeded prompts, plus
the unequal pair the app's user met ("outline:0.8, night:0.6"), read by the shapes-world scorer at
the model's default guidance. The style tables (bench/eval_style_loras.py) check the effect at
0 / 0.5 / 1; this one asks what the weights in between cost the prompt: does the shape the prompt
names survive, and its color?
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from tqdm import tqdm


from bench.common import command, machine, update_section
from shapesworld import score_image
from shapesworld.evaluate import eval_cases, generate

SECTION = 'LoRA weights and what the prompt keeps'  # of BENCHMARKS.md

PAIRS = (("outline", "night"), ("outline", "pastel"), ("night", "pastel"))
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


def retention(pipe, cases, steps: int, guidance: float) -> dict:
    images = generate(pipe, [c.prompt for c in cases], [c.seed for c in cases], guidance, steps)
    readings = [score_image(im) for im in images]
    return {"color": float(np.mean([r.color == c.target.color for r, c in zip(readings, cases)])),
            "shape": float(np.mean([r.shape == c.target.shape for r, c in zip(readings, cases)]))}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/tiny-shapes")
    p.add_argument("--num_samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0, help="the app's default for tiny-shapes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no_write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from bench.eval_style_loras import STYLES, style_blender
    from pipelines.lora import Blend

    blender, _ = style_blender(args.model)
    cases = eval_cases(args.num_samples, seed=7)

    settings = [(s,) for s in STYLES] + list(PAIRS)
    jobs = [("base", 0.0, {})] + [("+".join(names), w, {n: w for n in names})
                                  for names in settings for w in WEIGHTS if w > 0]
    jobs.append(("outline 0.8 + night 0.6", None, {"outline": 0.8, "night": 0.6}))
    results: dict = {}
    for label, w, blend in tqdm(jobs, desc="blends", unit="blend"):
        with blender.apply(Blend.of(blend) if blend else None) as pw:
            results[f"{label}@{w}"] = retention(pw, cases, args.steps, args.guidance)
    print(json.dumps(results, indent=2))
    if args.no_write:
        return

    base = results["base@0.0"]
    head = "| LoRA | " + " | ".join(f"{w:g}" for w in WEIGHTS) + " |\n|---|" + "---|" * len(WEIGHTS)

    def row(label: str, key: str) -> str:
        cells = [base[key]] + [results[f"{label}@{w}"][key] for w in WEIGHTS if w > 0]
        return f"| {label.replace('+', ' + ')} | " + " | ".join(f"{c:.2f}" for c in cells) + " |"

    names = ["+".join(s) for s in settings]
    odd = results["outline 0.8 + night 0.6@None"]
    body = f"""Command: `python -m bench run eval_lora_retention` (machine: {machine()}, {args.threads} thread; {args.num_samples}
seeded prompts naming every attribute; DDIM {args.steps} steps, guidance {args.guidance:g}; read by `shapesworld.scorer`).
Each LoRA alone, and each pair with both adapters at the same weight. Weight 0 is the base model.

Color accuracy:

{head}
{chr(10).join(row(n, "color") for n in names)}

Shape accuracy:

{head}
{chr(10).join(row(n, "shape") for n in names)}

outline 0.8 + night 0.6 (the unequal pair): color {odd['color']:.2f}, shape {odd['shape']:.2f}.

Reading: the prompt is kept at weight 0 to ~0.3 and again near 1, and lost in between. Each
LoRA was trained at weight 1 only, so a partial weight does not give a partial style: it moves
the UNet into states neither the base model nor the LoRA training visited (a half-dark background,
half-hollow strokes), where the prediction, and the VAE decoder fine-tuned on the pure styles,
are least reliable; the scorer also reads colors against a background that is neither light nor
dark. This is the "outline:0.8, night:0.6" oddity of issue 23, measured: not a bug in blending
(weight 0 is the base model pixel for pixel, weight 1 each effect as trained), but a property of
single-weight training. Not yet separated here: how much of the dip is the scorer's reading of
in-between backgrounds rather than the image. A fix would train at random weights in [0, 1].
"""
    update_section(SECTION, body, regenerate=command('eval_lora_retention'))


if __name__ == "__main__":
    main()
