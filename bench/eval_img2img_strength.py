"""What img2img keeps against strength, on the embedded model, read by the shapes-world scorer.

    OMP_NUM_THREADS=1 python -m bench run eval_img2img_strength            # 100 images, writes BENCHMARKS.md + plot
    OMP_NUM_THREADS=1 python -m bench run eval_img2img_strength --num_samples 12 --no_write

For each of ``num_samples`` shapes-world images (attributes known: shape, color, size, position),
img2img (SDEdit, pipelines/img2img.py) with a prompt naming only *another* color ("a blue shape";
three palette steps away) at strengths 0.1 ... 1.0: does the position survive (both thirds as in the input), the
shape, and does the color change to the prompt's (or stay the input's)? SDEdit's trade-off (Meng et
al. 2022): low strength keeps the layout but cannot recolor, high strength follows the prompt and
forgets the layout (at 1 the image is gone: zero terminal SNR leaves nothing of it at t = T).
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from bench.common import command, machine, update_section
from pipelines.img2img import img2img
from pipelines.models import EMBEDDED_MODEL, load_pipeline
from shapesworld import sample, score_image
from shapesworld.world import COLOR_NAMES, caption_for

SECTION = 'img2img: what survives against strength'  # of BENCHMARKS.md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STRENGTHS = tuple(round(0.1 * i, 1) for i in range(1, 11))
PLOT = os.path.join(ROOT, "docs", "img2img_strength.png")
SEED = 424_242


def other_color(color: str) -> str:
    return COLOR_NAMES[(COLOR_NAMES.index(color) + 3) % len(COLOR_NAMES)]


@torch.no_grad()
def run(pipe, samples, strength, steps, guidance, batch=50) -> dict:
    kept = {"position": [], "shape": [], "new color": [], "old color": []}
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        pixels = torch.cat([pipe.image_processor.preprocess(s.image.convert("RGB")) for s in chunk])
        prompts = [caption_for(s.attributes.__class__(**{**s.attributes.__dict__, "color": other_color(s.attributes.color)}),
                               ("color",)) for s in chunk]
        gens = [torch.Generator().manual_seed(SEED + i + j) for j in range(len(chunk))]
        out = img2img(pipe, pixels, strength, prompt=prompts, generator=gens, guidance_scale=guidance,
                      num_inference_steps=steps, output_type="pil")
        for s, im in zip(chunk, out.images):
            r, a = score_image(im), s.attributes
            kept["position"].append(r.h == a.h and r.v == a.v)
            kept["shape"].append(r.shape == a.shape)
            kept["new color"].append(r.color == other_color(a.color))
            kept["old color"].append(r.color == a.color)
    return {k: float(np.mean(v)) for k, v in kept.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0, help="the app's default for tiny-shapes")
    p.add_argument("--no_write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(EMBEDDED_MODEL)
    pipe.set_progress_bar_config(disable=True)
    samples = [sample(SEED + i, empty_prob=0.0) for i in range(args.num_samples)]
    source = [score_image(s.image) for s in samples]  # the scorer on the inputs themselves (its own ceiling)
    ceiling = {"position": np.mean([r.h == s.attributes.h and r.v == s.attributes.v for r, s in zip(source, samples)]),
               "shape": np.mean([r.shape == s.attributes.shape for r, s in zip(source, samples)]),
               "old color": np.mean([r.color == s.attributes.color for r, s in zip(source, samples)])}
    rows = {}
    for s in STRENGTHS:
        rows[s] = run(pipe, samples, s, args.steps, args.guidance)
        print(s, rows[s], flush=True)
    table = "| strength | steps run | position kept | shape kept | color = prompt's (new) | color = input's (old) |\n" \
            "|---|---|---|---|---|---|\n"
    table += f"| input image (scorer's ceiling) | - | {ceiling['position']:.2f} | {ceiling['shape']:.2f} | - | " \
             f"{ceiling['old color']:.2f} |\n"
    for s, r in rows.items():
        table += (f"| {s:.1f} | {int(s * args.steps)} | {r['position']:.2f} | {r['shape']:.2f} | **{r['new color']:.2f}** | "
                  f"{r['old color']:.2f} |\n")
    print(table)
    if args.no_write:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for key, style in (("position", "o-"), ("shape", "s-"), ("new color", "^-"), ("old color", "v--")):
        ax.plot(STRENGTHS, [rows[s][key] for s in STRENGTHS], style, label=key)
    ax.set_xlabel("strength (start at t ~ strength x T)")
    ax.set_ylabel(f"share of {args.num_samples} images")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title("img2img on tiny-shapes: the prompt names another color")
    fig.tight_layout()
    fig.savefig(PLOT)
    body = f"""What SDEdit keeps against strength on the embedded model: {args.num_samples} shapes-world images
(every attribute known), each run through img2img with a prompt naming only another color ("a blue
shape", three palette steps away), read back by the shapes-world scorer: position and shape can only
come from the image, the color only from the prompt. Chance: position 1/9, shape 1/3. DDIM, {args.steps} steps (the grid's tail:
int(strength x steps) of them), guidance {args.guidance:g}, one seed per image.

```
OMP_NUM_THREADS=1 .venv/bin/python -m bench run eval_img2img_strength --num_samples {args.num_samples}
```

Machine: {machine()}, 1 thread (`torch.set_num_threads(1)`), shared with other jobs.

{table}
![img2img strength curve](docs/img2img_strength.png)
"""
    update_section(SECTION, body, regenerate=command('eval_img2img_strength'))


if __name__ == "__main__":
    main()
