"""Effect of the embedded style LoRAs, read by the shapes-world scorer.

    python -m bench run eval_style_loras                    # 100 seeded prompts per setting, writes BENCHMARKS.md
    python -m bench run eval_style_loras --num_samples 24 --no_write
    python -m bench run eval_style_loras --also_guidance 0        # only the app's default guidance, 7.5

For each LoRA at weights 0, 0.5 and 1 (and outline + night together) it generates the same seeded
prompts (with the preset's trigger words, if it has any) with the embedded model's own scheduler, 25 steps, guidance
7.5, and reports: share of hollow shapes, of dark backgrounds, mean saturation, and color / shape
accuracy. Weight 0 is also compared pixel for pixel with the base model. The guidance is the app's
default for the model (3 for tiny-shapes: where the base model itself reads best, see "Embedded
model"); --also_guidance (default 7.5, Stable Diffusion's usual value) repeats the base model, each
LoRA at weight 1 and outline + night at a second guidance.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np


from bench.common import command, machine, update_section
from shapesworld import score_image
from shapesworld.evaluate import eval_cases, generate

SECTION = 'Embedded style LoRAs'  # of BENCHMARKS.md

STYLES = ("outline", "night", "pastel")


def measure(pipe, cases, prefix: str, steps: int, guidance: float = 7.5) -> tuple[dict, list]:
    images = generate(pipe, [prefix + c.prompt for c in cases], [c.seed for c in cases], guidance, steps)
    rs = [score_image(im) for im in images]
    return {
        "hollow": float(np.mean([r.hollow for r in rs])),
        "dark": float(np.mean([r.dark_background for r in rs])),
        "both_effects": float(np.mean([r.hollow and r.dark_background for r in rs])),
        "saturation": float(np.mean([r.saturation for r in rs if r.found] or [0.0])),
        "color": float(np.mean([r.color == c.target.color for r, c in zip(rs, cases)])),
        "shape": float(np.mean([r.shape == c.target.shape for r, c in zip(rs, cases)])),
    }, images


def ceiling(model: str) -> str:
    """What a perfect LoRA could reach: the scorer's reading of the VAE round trip of true styled images."""
    path = os.path.join(model, "training.json")
    vae_info = json.load(open(path)).get("vae", {}) if os.path.exists(path) else {}
    # the latest VAE fine-tune measured the VAE as shipped
    extra = next((vae_info[k] for k in ("decoder_partial", "decoder_combinations", "encoder_combinations", "encoder_styles",
                                        "decoder_styles_extra") if k in vae_info), None)
    if not extra:
        return ""
    rows = "\n".join(f"| {k} | {v['color']:.2f} | {v['shape']:.2f} | {v['hollow']:.2f} | {v['dark']:.2f} | {v['saturation']:.3f} |"
                     for k, v in extra["round_trip_after"].items())
    return f"""
Ceiling: a LoRA's latents decode through the model's VAE, so the scorer's reading of
decode(encode(true styled image)) bounds what any LoRA can show. From `{model}/training.json`
(`{extra["command"].split(" --")[0].replace("python ", "")}`, {len(extra["round_trip_after"])} kinds, 200 held-out images each):

| images | color acc. | shape acc. | hollow | dark background | mean saturation |
|---|---|---|---|---|---|
{rows}
"""


def style_blender(model: str):
    """The model with the three embedded style presets loaded: (LoraBlender, {style: preset})."""
    from pipelines import TracingStableDiffusionPipeline
    from pipelines.lora import LoraBlender
    from pipelines.lora.presets import presets_for_family

    pipe = TracingStableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    blender = LoraBlender(pipe)
    presets = {p.id: p for p in presets_for_family("tiny-shapes") if p.id in STYLES}
    for style in STYLES:
        blender.load_preset(presets[style], family="tiny-shapes")
    return blender, presets


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="models/tiny-shapes")
    p.add_argument("--num_samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=None,
                   help="default: the app's default for the model (pipelines/models.py; 3 for tiny-shapes)")
    p.add_argument("--also_guidance", type=float, default=7.5, help="second, shorter table (0: none)")
    p.add_argument("--no_write", action="store_true")
    args = p.parse_args()
    if args.guidance is None:
        from pipelines.models import MODELS
        spec = next((m for m in MODELS.values() if os.path.normpath(m.source) == os.path.normpath(args.model)), None)
        args.guidance = spec.default_guidance if spec else 7.5

    from pipelines.lora import Blend

    blender, presets = style_blender(args.model)
    prefix = {s: "".join(f"{w}, " for w in presets[s].trigger_words) for s in STYLES}
    cases = eval_cases(args.num_samples, seed=7)

    def base(pre: str, guidance: float = args.guidance) -> tuple[dict, list]:
        with blender.apply(None) as p0:
            return measure(p0, cases, pre, args.steps, guidance)

    results = {}
    results["base"], plain_images = base("")
    rows = [("base model", "-", results["base"])]
    for style in STYLES:
        for w in (0.0, 0.5, 1.0):
            with blender.apply(Blend.of({style: w})) as pw:
                r, images = measure(pw, cases, prefix[style], args.steps, args.guidance)
            if w == 0.0:  # must reproduce the base model on the same prompts (generated again only with a trigger)
                ref = base(prefix[style])[1] if prefix[style] else plain_images
                r["max_abs_diff_vs_base"] = float(max(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()
                                                       for a, b in zip(images, ref)))
            results[f"{style}@{w}"] = r
            rows.append((style, f"{w:g}", r))
    with blender.apply(Blend.of({"outline": 1.0, "night": 1.0})) as pb:
        results["outline+night"], _ = measure(pb, cases, prefix["outline"] + prefix["night"], args.steps, args.guidance)
    both = results["outline+night"]["both_effects"]
    extra_rows = []
    if args.also_guidance:
        g2 = args.also_guidance
        results[f"g{g2:g}"] = second = {"base": base("", g2)[0]}
        extra_rows.append(("base model", "-", second["base"]))
        for style in STYLES:
            with blender.apply(Blend.of({style: 1.0})) as pw:
                second[style] = measure(pw, cases, prefix[style], args.steps, g2)[0]
            extra_rows.append((style, "1", second[style]))
        with blender.apply(Blend.of({"outline": 1.0, "night": 1.0})) as pb:
            second["outline+night"] = measure(pb, cases, prefix["outline"] + prefix["night"], args.steps, g2)[0]
        extra_rows.append(("outline + night", "1 + 1", second["outline+night"]))
    print(json.dumps(results, indent=2))
    if args.no_write:
        return
    def table(rows_):
        return "\n".join(f"| {name} | {w} | {r['hollow']:.2f} | {r['dark']:.2f} | {r['saturation']:.3f} | {r['color']:.2f} | {r['shape']:.2f} |"
                         for name, w, r in rows_)
    head = "| LoRA | weight | hollow | dark background | mean saturation | color acc. | shape acc. |\n|---|---|---|---|---|---|---|"
    second_part = ""
    if extra_rows:
        second = results[f"g{args.also_guidance:g}"]
        drop2 = 1 - second["pastel"]["saturation"] / second["base"]["saturation"]
        second_part = f"""
The same prompts at guidance {args.also_guidance:g}:

{head}
{table(extra_rows)}

- pastel lowers mean saturation by {drop2:.0%}; outline + night: both effects in {second['outline+night']['both_effects']:.0%}.
"""
    sat_drop = 1 - results["pastel@1.0"]["saturation"] / results["base"]["saturation"]
    zero = ", ".join(f"{s} {results[f'{s}@0.0']['max_abs_diff_vs_base']:.0f}" for s in STYLES)
    body = f"""Command: `python -m bench run eval_style_loras` (machine: {machine()}; {args.num_samples} seeded prompts naming every
attribute, no trigger words (the embedded presets have none); model's own DDIM scheduler, {args.steps} steps, guidance
{args.guidance:g} (the app's default for this model); read by `shapesworld.scorer`). LoRAs trained by
`bash train/train_embedded_loras.sh` (the recipe is in that script).

{head}
{table(rows)}

- pastel at weight 1 lowers mean saturation by {sat_drop:.0%} against the base model.
- outline 1.0 + night 1.0 together: both effects in {both:.0%} of samples (hollow {results['outline+night']['hollow']:.0%}, dark {results['outline+night']['dark']:.0%}).
- Weight 0 vs the base model, same prompts, max abs pixel difference (0-255): {zero}.
{second_part}{ceiling(args.model)}"""
    update_section(SECTION, body, regenerate=command('eval_style_loras'))


if __name__ == "__main__":
    main()
