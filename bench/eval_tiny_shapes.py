"""Prompt adherence, guidance curve, speed and stock-diffusers parity of the embedded model.

    python -m bench run eval_tiny_shapes                  # 200 samples per guidance scale, writes BENCHMARKS.md
    python -m bench run eval_tiny_shapes --num_samples 40 --no_write

Scorer over seeded held-out prompts that name every attribute; the model's own scheduler
(DDIM, trailing spacing) and 25 steps, as the embedded model ships.
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
from shapesworld.evaluate import empty_prompt_colors, evaluate_adherence

SECTION = 'Embedded model (tiny-shapes)'  # of BENCHMARKS.md


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="models/tiny-shapes")
    p.add_argument("--num_samples", type=int, default=200)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", default="1,2,3,5,7.5,10")
    p.add_argument("--no_write", action="store_true")
    p.add_argument("--speed_only", action="store_true", help="re-measure the per-image time and update that line")
    args = p.parse_args()

    from diffusers import StableDiffusionPipeline
    from pipelines import TracingStableDiffusionPipeline

    ours = TracingStableDiffusionPipeline.from_pretrained(args.model)
    ours.set_progress_bar_config(disable=True)
    stock = StableDiffusionPipeline.from_pretrained(args.model)
    stock.set_progress_bar_config(disable=True)

    # speed: one 25-step image, median of repeats
    times = []
    for i in range(12):
        t = time.perf_counter()
        ours("a large red circle in the top left", num_inference_steps=args.steps, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(i))
        times.append(time.perf_counter() - t)
    median_s = statistics.median(times[2:])
    speed_line = (f"- One {args.steps}-step image at guidance 7.5 with `TracingStableDiffusionPipeline`: median "
                  f"{median_s * 1000:.0f} ms (10 runs after 2 warm-ups; {torch.get_num_threads()} torch thread(s)).")
    if args.speed_only:
        print(speed_line)
        if not args.no_write:
            import re
            from bench.common import BENCHMARKS
            text = open(BENCHMARKS, encoding="utf-8").read()
            text = re.sub(r"^- One \d+-step image at guidance 7\.5 .*$", lambda _: speed_line, text, count=1, flags=re.M)
            open(BENCHMARKS, "w", encoding="utf-8").write(text)
        return

    # parity with stock diffusers, same seed
    kw = dict(num_inference_steps=args.steps, guidance_scale=7.5, output_type="np")
    a = stock("a small blue square in the bottom right", generator=torch.Generator().manual_seed(7), **kw).images
    b = ours("a small blue square in the bottom right", generator=torch.Generator().manual_seed(7), **kw).images
    parity = float(np.abs(a - b).max())

    scales = [float(g) for g in args.guidance.split(",")]
    t0 = time.time()
    curve = evaluate_adherence(ours, scales, num_samples=args.num_samples, steps=args.steps,
                               progress=lambda g, r: print(f"guidance {g}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True))
    colors = empty_prompt_colors(ours, num_samples=args.num_samples, steps=args.steps)
    eval_s = time.time() - t0
    result = {"median_seconds_per_image": median_s, "stock_vs_ours_max_abs_diff": parity, "curve": curve,
              "empty_prompt_colors": colors, "eval_seconds": eval_s}
    print(json.dumps(result, indent=2))
    if args.no_write:
        return
    training = json.load(open(os.path.join(args.model, "training.json")))
    rows = "\n".join(
        f"| {g:g} | {r['color']:.3f} | {r['shape']:.3f} | {r['size']:.3f} | {r['position']:.3f} | {r['h']:.3f} | {r['v']:.3f} |"
        for g, r in curve.items())
    spread = ", ".join(f"{k} {v:.2f}" for k, v in colors.items())
    body = f"""Command: `python -m bench run eval_tiny_shapes` (machine: {machine()}; {args.num_samples} seeded held-out
prompts naming shape, color, size and position; model's own DDIM scheduler, trailing spacing, {args.steps} steps;
accuracy read back by `shapesworld.scorer`).

| guidance | color | shape | size | position (h and v) | h | v |
|---|---|---|---|---|---|---|
{rows}

- Empty prompt, {args.num_samples} samples, color shares: {spread}.
{speed_line}
- Stock `StableDiffusionPipeline.from_pretrained("{args.model}")` vs ours, same seed: max abs pixel difference {parity:.2e}.

Training (`{training.get('command', 'python train/train_base.py')}`, seed {training['seed']}): VAE {training['vae']['steps']} steps,
final reconstruction MSE {training['vae']['final_mse']:.4f}, then the decoder alone (encoder frozen) on the LoRA styles:
{training['vae'].get('decoder_styles', {}).get('steps', 0)} steps in train_base.py and
{training['vae'].get('decoder_styles_extra', {}).get('steps', 0)} more with `train/finetune_vae.py --part decoder`, then the encoder alone on night images
({training['vae'].get('encoder_styles', {}).get('steps', 0)} steps, `--part encoder`) and the decoder on outline + night images as a kind of their own
({training['vae'].get('decoder_combinations', {}).get('steps', 0)} steps, `--combinations outline+night`) (what that buys: "Embedded style LoRAs");
UNet + text encoder {training['unet']['steps']} steps at batch
{training['unet']['batch_size']}, final v-prediction loss {training['unet']['final_loss']:.4f}; wall time in README ("Embedded model").
"""
    update_section(SECTION, body, regenerate=command('eval_tiny_shapes'))


if __name__ == "__main__":
    main()
