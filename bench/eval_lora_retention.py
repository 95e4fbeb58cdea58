"""Color and shape retention of the embedded style LoRAs across weights 0 ... 1 (steps of 0.1), and the style effect.

    python -m bench run eval_lora_retention                  # 100 prompts, writes BENCHMARKS.md
    python -m bench run eval_lora_retention --num_samples 12 --no_write
    python -m bench run eval_lora_retention --loras runs/loras-dial --json runs/after.json --no_write
    python -m bench run eval_lora_retention --from_json runs/before.json --section "..."   # tables of a saved run

Each shipped LoRA alone and each pair (both at the same weight) on the same seeded prompts, plus
the unequal pair the app's user met ("outline:0.8, night:0.6"), read at the model's default guidance.
The mixer's default example (labapp/lora_ui.py: outline + night at the presets' weight 1) is the
pair's column 1. Two readings of the prompt, and the effect:

- color and shape by the shapes-world scorer (``shapesworld.scorer``);
- color by a second reader (``hue_reading``): the circular median hue of the pixels that stand out
  from the background by color (chroma), against the named color's hue, so a reading that depends
  on the scorer's mask and "most saturated half" is checked by one that does not;
- the effect, on continuous scales as well as the scorer's yes/no: hollowness (1 - the contrast of
  the shape's inside against the background, relative to its rim's), background darkness
  (1 - luminance of the border), and the saturation drop of the shape against the base model.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import os

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from bench.common import command, machine, update_section
from shapesworld import score_image
from shapesworld.evaluate import eval_cases, generate
from shapesworld.world import COLORS

SECTION = "LoRA retention table (issue 31)"  # of BENCHMARKS.md; the narrative is "LoRA weights and what the prompt keeps"

STYLES = ("outline", "night", "pastel")
PAIRS = (("outline", "night"), ("outline", "pastel"), ("night", "pastel"))
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
UNEQUAL = {"outline": 0.8, "night": 0.6}
_HUES = {name: colorsys.rgb_to_hsv(*(np.array(rgb) / 255.0))[0] for name, rgb in COLORS.items()}


def hue_reading(image) -> dict:
    """Second reading: color by the median hue of the chromatic pixels; hollowness and darkness, continuous.

    Pixels count as the shape's when their chroma (max - min of RGB) exceeds the background's by 0.15;
    the color is the palette hue nearest to their circular median hue. hollowness is 1 - (distance of
    the inside's mean color from the background) / (the rim's), over the filled shape's inner half
    (by distance to its edge); darkness is 1 - the border's luminance.
    """
    rgb = np.asarray(image.convert("RGB"), np.float32) / 255.0  # (H, W, 3)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    darkness = 1.0 - float(background @ np.array([0.299, 0.587, 0.114]))
    chroma = rgb.max(-1) - rgb.min(-1)
    mask = chroma > float(background.max() - background.min()) + 0.15
    out = {"hue_color": None, "darkness": darkness, "hollowness": None}
    if mask.sum() < 4:
        return out
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in rgb[mask]])
    angles = hsv[:, 0] * 2 * np.pi
    # circular median: the sample hue with the least summed angular distance to the others
    dist = np.abs(np.angle(np.exp(1j * (angles[:, None] - angles[None, :])))).sum(1)
    hue = angles[int(np.argmin(dist))] / (2 * np.pi)
    out["hue_color"] = min(_HUES, key=lambda c: min(abs(hue - _HUES[c]), 1 - abs(hue - _HUES[c])))
    filled = ndimage.binary_fill_holes(mask)
    depth = ndimage.distance_transform_edt(filled)
    inner, rim = depth >= max(2.0, 0.5 * depth.max()), filled & (depth <= 1.5)
    if inner.any() and rim.any():
        d = np.linalg.norm(rgb - background, axis=-1)
        out["hollowness"] = float(np.clip(1.0 - d[inner].mean() / max(d[rim].mean(), 1e-6), 0.0, 1.0))
    return out


def read(images, cases) -> dict:
    rs = [score_image(im) for im in images]
    hs = [hue_reading(im) for im in images]
    return {"color": float(np.mean([r.color == c.target.color for r, c in zip(rs, cases)])),
            "shape": float(np.mean([r.shape == c.target.shape for r, c in zip(rs, cases)])),
            "hue_color": float(np.mean([h["hue_color"] == c.target.color for h, c in zip(hs, cases)])),
            "hollow": float(np.mean([r.hollow for r in rs])),
            "dark": float(np.mean([r.dark_background for r in rs])),
            "saturation": float(np.mean([r.saturation for r in rs if r.found] or [0.0])),
            "hollowness": float(np.mean([h["hollowness"] for h in hs if h["hollowness"] is not None] or [0.0])),
            "darkness": float(np.mean([h["darkness"] for h in hs]))}


def retention(pipe, cases, steps: int, guidance: float) -> dict:
    images = generate(pipe, [c.prompt for c in cases], [c.seed for c in cases], guidance, steps)
    return read(images, cases)


def blender_for(model: str, loras: str | None):
    """The model with the three styles loaded: the shipped presets, or <loras>/<style>.safetensors."""
    from bench.eval_style_loras import style_blender
    if loras is None:
        return style_blender(model)[0]
    from pipelines import TracingStableDiffusionPipeline
    from pipelines.lora import LoraBlender

    pipe = TracingStableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    blender = LoraBlender(pipe)
    for style in STYLES:
        blender.load(style, os.path.join(loras, f"{style}.safetensors"))
    return blender


def jobs(settings=None):
    settings = settings or [(s,) for s in STYLES] + list(PAIRS)
    out = [("base", 0.0, {})] + [("+".join(names), w, {n: w for n in names})
                                 for names in settings for w in WEIGHTS if w > 0]
    out.append(("outline 0.8 + night 0.6", None, dict(UNEQUAL)))
    return out


def run(model: str, loras: str | None, num_samples: int, steps: int, guidance: float, settings=None,
        weights=None) -> dict:
    from pipelines.lora import Blend

    blender = blender_for(model, loras)
    cases = eval_cases(num_samples, seed=7)
    results: dict = {}
    todo = [j for j in jobs(settings) if weights is None or j[1] is None or j[1] in weights or j[1] == 0.0]
    for label, w, blend in tqdm(todo, desc="blends", unit="blend"):
        with blender.apply(Blend.of(blend) if blend else None) as pw:
            results[f"{label}@{w}"] = retention(pw, cases, steps, guidance)
    return results


def tables(results: dict, meta: dict) -> str:
    base = results["base@0.0"]
    names = [k.split("@")[0] for k in results if k.endswith("@1.0")]
    weights = [0.0] + [w for w in WEIGHTS if w > 0 and f"{names[0]}@{w}" in results]
    head = "| LoRA (weight) | " + " | ".join(f"{w:g}" for w in weights) + " |\n|---|" + "---|" * len(weights)

    def row(label: str, key: str, fmt=lambda v: f"{v:.2f}", what: str = "") -> str:
        cells = [base[key]] + [results[f"{label}@{w}"][key] for w in weights if w > 0]
        return f"| {label.replace('+', ' + ')}{': ' + what if what else ''} | " + " | ".join(fmt(c) for c in cells) + " |"

    def block(title: str, key: str, labels=names, fmt=lambda v: f"{v:.2f}") -> str:
        return f"{title}:\n\n{head}\n" + "\n".join(row(n, key, fmt) for n in labels) + "\n"

    sat0 = base["saturation"]
    for r in results.values():
        r["saturation_drop"] = 1.0 - r["saturation"] / sat0 if sat0 else 0.0
    odd = results["outline 0.8 + night 0.6@None"]
    pct = lambda v: f"{v:+.0%}"  # noqa: E731
    return f"""{block("Color accuracy (scorer)", "color")}
{block("Color accuracy (second reader: median hue of the chromatic pixels, `hue_reading`)", "hue_color")}
{block("Shape accuracy (scorer)", "shape")}
Effect: hollow share (scorer) and hollowness (continuous) for outline; dark-background share (scorer) and
background darkness (1 - luminance) for night; saturation drop against the base model for pastel:

{head}
{row("outline", "hollow", lambda v: f"{v:.2f}", "hollow share")}
{row("outline", "hollowness", lambda v: f"{v:.2f}", "hollowness")}
{row("night", "dark", lambda v: f"{v:.2f}", "dark share")}
{row("night", "darkness", lambda v: f"{v:.2f}", "darkness")}
{row("pastel", "saturation_drop", pct, "saturation drop")}
{row("outline+night", "hollow", lambda v: f"{v:.2f}", "hollow share (pair)")}
{row("outline+night", "dark", lambda v: f"{v:.2f}", "dark share (pair)")}
{row("outline+pastel", "hollow", lambda v: f"{v:.2f}", "hollow share (pair)")}
{row("outline+pastel", "saturation_drop", pct, "saturation drop (pair)")}
{row("night+pastel", "dark", lambda v: f"{v:.2f}", "dark share (pair)")}
{row("night+pastel", "saturation_drop", pct, "saturation drop (pair)")}

outline 0.8 + night 0.6 (the unequal pair): color {odd['color']:.2f} (second reader {odd['hue_color']:.2f}), shape
{odd['shape']:.2f}, hollow {odd['hollow']:.2f}, dark {odd['dark']:.2f}. The mixer's default example (outline 1 + night 1) is
the outline + night column 1.
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/tiny-shapes")
    p.add_argument("--loras", default=None, help="folder with outline/night/pastel.safetensors (default: the presets)")
    p.add_argument("--num_samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0, help="the app's default for tiny-shapes")
    p.add_argument("--weights", default=None, help="comma-separated subset of 0.1 ... 1 (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--from_json", default=None, help="no generation: the tables of a saved run")
    p.add_argument("--section", default=SECTION)
    p.add_argument("--no_write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_json:
        saved = json.load(open(args.from_json))
        results, meta = saved["results"], saved["meta"]
    else:
        meta = {"model": args.model, "loras": args.loras or "lora_presets (shipped)", "num_samples": args.num_samples,
                "steps": args.steps, "guidance": args.guidance, "threads": args.threads, "machine": machine()}
        weights = tuple(float(w) for w in args.weights.split(",")) if args.weights else None
        if weights and any(w not in WEIGHTS or w == 0 for w in weights):
            raise SystemExit(f"--weights={args.weights!r}: each must be one of {', '.join(f'{w:g}' for w in WEIGHTS[1:])}")
        meta["weights"] = args.weights or "all"
        results = run(args.model, args.loras, args.num_samples, args.steps, args.guidance, weights=weights)
        if args.json:
            os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
            json.dump({"meta": meta, "results": results}, open(args.json, "w"), indent=1)
    text = tables(results, meta)
    print(text)
    if args.no_write:
        return
    body = f"""Command: `{command('eval_lora_retention')}` (machine: {meta['machine']}, {meta['threads']} thread; {meta['num_samples']}
seeded prompts naming every attribute; DDIM {meta['steps']} steps, guidance {meta['guidance']:g}; LoRAs: {meta['loras']}).
Each LoRA alone, and each pair with both adapters at the same weight. Weight 0 is the base model.

{text}"""
    update_section(args.section, body, regenerate=command('eval_lora_retention'))


if __name__ == "__main__":
    main()
