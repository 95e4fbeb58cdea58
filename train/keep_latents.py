"""Latents the embedded UNet generates, for finetune_vae.py's preservation and line terms (--keep_latents).

    python train/keep_latents.py --out runs/keep_latents.pt --num_prompts 120
    python train/keep_latents.py --out runs/mid_latents.pt --settings "pastel@0.5,pastel@0.7,night@0.7"

A decoder fine-tuned on rendered images (finetune_vae.py --partial) learns to decode encoded
pictures; what users see are decoded *generated* latents, which lie a little off the encoder's
manifold. The plain, styled and paired pictures the shipped decoder already draws well are
kept by holding the new decoder to the shipped one's pictures of these latents. Latents of a
style at a partial weight ("pastel@0.5") feed finetune_vae.py's --line_weight term, which holds
the decoder's picture of them to the matching blend of the base and full-weight pictures.

Settings (--settings, comma-separated): "base", a style or a "+"-joined combination at weight 1
("outline+night"), or either at a weight ("night@0.7": each part at 0.7). Default: the base model,
each shipped style at 1 and outline + night at 1 + 1 (the mixer's default example), on held-out
prompts (shapesworld.evaluate.eval_cases, seed 31: not the seed-7 prompts of
bench/eval_lora_retention.py), DDIM 25 steps, guidance 3. The file records each latent's setting
label and case index, so latents of one prompt made in different runs line up.
"""
from __future__ import annotations

import argparse
import os

import torch
from tqdm.auto import tqdm

DEFAULT_SETTINGS = "base,outline,night,pastel,outline+night"


def parse_setting(label: str) -> dict:
    """ "base" -> {}; "outline+night" -> {outline: 1, night: 1}; "pastel@0.5" -> {pastel: 0.5}. The parts are
    checked by shapesworld.world.style_parts (one spelling per combination); ValueError names what is allowed."""
    from shapesworld.world import style_parts

    label = label.strip()
    if label == "base":
        return {}
    parts, _, weight = label.partition("@")
    try:
        w = float(weight) if weight else 1.0
    except ValueError:
        raise ValueError(f"setting {label!r}: the weight after '@' must be a number in (0, 1]") from None
    if not 0.0 < w <= 1.0:
        raise ValueError(f"setting {label!r}: the weight after '@' must be in (0, 1], got {w:g}")
    try:
        names = style_parts(parts)
    except ValueError as e:
        raise ValueError(f"setting {label!r}: {e}; or the whole setting 'base'") from None
    return {n: w for n in names}


def setting_label(setting: dict) -> str:
    """The one spelling of a parsed setting, as the file records it: "base", "outline+night", "pastel@0.5"."""
    if not setting:
        return "base"
    w = next(iter(setting.values()))
    return "+".join(setting) + ("" if w == 1.0 else f"@{w:g}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/tiny-shapes")
    p.add_argument("--out", required=True, help="a .pt file: {'latents': (N, 4, h, w), 'settings': [...], 'cases': [...]}")
    p.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"comma-separated (default {DEFAULT_SETTINGS})")
    p.add_argument("--num_prompts", type=int, default=120)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    try:
        settings = [parse_setting(s) for s in args.settings.split(",") if s.strip()]
    except ValueError as e:
        raise SystemExit(f"--settings={args.settings!r}: {e}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.eval_style_loras import style_blender
    from pipelines.lora import Blend
    from shapesworld.evaluate import eval_cases

    blender, _ = style_blender(args.model)
    cases = eval_cases(args.num_prompts, seed=31)
    latents, labels, case_ids = [], [], []
    for setting in tqdm(settings, desc="settings"):
        with blender.apply(Blend.of(setting) if setting else None) as pipe:
            for i in range(0, len(cases), 60):
                chunk = cases[i:i + 60]
                out = pipe(prompt=[c.prompt for c in chunk], num_inference_steps=args.steps,
                           guidance_scale=args.guidance, output_type="latent",
                           generator=[torch.Generator().manual_seed(c.seed) for c in chunk])
                latents.append(out.images)
        labels += [setting_label(setting)] * len(cases)
        case_ids += list(range(len(cases)))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save({"latents": torch.cat(latents), "settings": labels, "cases": case_ids, "model": args.model},
               args.out + ".tmp")
    os.replace(args.out + ".tmp", args.out)
    print(f"{len(labels)} latents -> {args.out}")


if __name__ == "__main__":
    main()
