"""Latents the embedded UNet generates, for finetune_vae.py's preservation term (--keep_latents).

    python train/keep_latents.py --out runs/keep_latents.pt --num_prompts 120

A decoder fine-tuned on rendered images (finetune_vae.py --partial) learns to decode encoded
pictures; what users see are decoded *generated* latents, which lie a little off the encoder's
manifold. The plain, styled and paired pictures the shipped decoder already draws well are
kept by holding the new decoder to the shipped one's pictures of these latents.

Settings: the base model, each shipped style at weight 1, and outline + night at 1 + 1 (the
mixer's default example), on held-out prompts (shapesworld.evaluate.eval_cases, seed 31: not the
seed-7 prompts of bench/eval_lora_retention.py), DDIM 25 steps, guidance 3.
"""
from __future__ import annotations

import argparse
import os

import torch
from tqdm.auto import tqdm

SETTINGS = ({}, {"outline": 1.0}, {"night": 1.0}, {"pastel": 1.0}, {"outline": 1.0, "night": 1.0})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/tiny-shapes")
    p.add_argument("--out", required=True, help="a .pt file: {'latents': (N, 4, h, w), 'settings': [...]} ")
    p.add_argument("--num_prompts", type=int, default=120)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.eval_style_loras import style_blender
    from pipelines.lora import Blend
    from shapesworld.evaluate import eval_cases

    blender, _ = style_blender(args.model)
    cases = eval_cases(args.num_prompts, seed=31)
    latents, labels = [], []
    for setting in tqdm(SETTINGS, desc="settings"):
        with blender.apply(Blend.of(setting) if setting else None) as pipe:
            for i in range(0, len(cases), 60):
                chunk = cases[i:i + 60]
                out = pipe(prompt=[c.prompt for c in chunk], num_inference_steps=args.steps,
                           guidance_scale=args.guidance, output_type="latent",
                           generator=[torch.Generator().manual_seed(c.seed) for c in chunk])
                latents.append(out.images)
        labels += ["+".join(setting) or "base"] * len(cases)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save({"latents": torch.cat(latents), "settings": labels, "model": args.model}, args.out + ".tmp")
    os.replace(args.out + ".tmp", args.out)
    print(f"{len(labels)} latents -> {args.out}")


if __name__ == "__main__":
    main()
