"""Why a half-weight LoRA loses the prompt: per-block and per-step weights, and the mixed prediction.

    python -m bench run lora_dial_diagnosis --num_samples 30            # tables on stdout (json too)
    python -m bench run lora_dial_diagnosis --x0_grid runs/dial/x0.png  # also the x0 a few steps in
    python -m bench run lora_dial_diagnosis --parts none --pair_grid docs/lora_pair_decoder.png --old_vae OLD_VAE_DIR

Three readings, all on the same seeded prompts (DDIM, guidance 3, the project's scorer):
1. "mix": the UNet's prediction as the weighted mix of the base's and the full-weight adapters',
   v = v_base + sum_i w_i (v_i - v_base), against the usual weight-space blend (each LoRA's delta
   scaled by w_i). If the mix keeps the prompt where the blend loses it, training the adapter at
   weight w towards the mix (train_lora.py --dial) is a sound target.
2. per block: the adapter at 0.5 with one block group (down / mid / up) moved to 0 or 1.
3. per step: the adapter at 0.5 only in one third of the steps (0 elsewhere), and at 1 but 0.5 in one third.
4. roundtrip: the VAE's round trip of true renders drawn part-way (shapesworld render strengths), the
   ceiling of what an adapter trained on encoded renders can show at a partial weight.
5. inversion: what the decoder *can* draw: a latent fitted to each true render by gradient descent
   through the frozen decoder (from the encoder's latent), read by the scorer next to the round trip.
   Where the fitted latent reads right and the round trip does not, the ceiling is the encoder's map,
   not the decoder (finetune_vae.py --part encoder).
6. schedules: pastel at full weight on a share of the steps and off on the others (the first share, the
   last share, or spread evenly): a dial made of clean predictions only, each step's at weight 0 or 1.
7. lines: where the latent a style makes at weight w lies against the straight line from the base
   model's latent (weight 0) to the style's at weight 1 (same prompt and seed): its place along the line
   and its distance off it, each relative to the line's length; and the scorer's reading of the latent
   it generated, of the latent blend lerp(z_0, z_1, w) and of the picture blend lerp(image_0, image_1, w).
   If the generated latent lies near the line and the latent blend loses the prompt where the picture
   blend keeps it, the adapter does its part and the decoder draws the line through the wrong pictures
   (finetune_vae.py --line_weight). For each pair at equal weights: how far its latent lies from the sum
   of the two styles' moves (z_0 + w (z_a - z_0) + w (z_b - z_0)), and at 1 + 1 how far it lies from each
   style alone in lengths of the other style's own move (near 0: the other style is all but lost in the
   pair's latent, and only the decoder can tell the two apart; train/pair_pictures.py). And for each style
   at w, the shape's contrast in the latent: the distance between the mean latent over the shape and over
   the background (the shape found in the base model's picture, train/pair_pictures.coverage), for the base,
   the style at 1, the generated latent at w and the latent blend at w; a blend whose contrast falls below
   both ends has lost the shape in the latent itself, where no decoder can draw it back.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os

import numpy as np
import torch

from shapesworld import score_image
from shapesworld.evaluate import eval_cases, generate

STYLES = ("outline", "night", "pastel")


def load(model: str, lora_dir: str):
    from diffusers import StableDiffusionPipeline

    from train.lora_dial import AdapterScales

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for s in STYLES:
        pipe.load_lora_weights(os.path.join(lora_dir, f"{s}.safetensors"), adapter_name=s)
    pipe.set_adapters(list(STYLES), [1.0] * len(STYLES))
    return pipe, AdapterScales(pipe.unet, list(STYLES))


@contextlib.contextmanager
def mixed_unet(pipe, scales, weights: dict):
    """The UNet's forward replaced by v_base + sum w_i (v_i - v_base)."""
    unet = pipe.unet
    forward = unet.forward
    off = {s: 0.0 for s in STYLES}

    def mixed(*a, **k):
        scales.set(off)
        base = forward(*a, **k)[0]
        out = base.clone()
        for name, w in weights.items():
            scales.set(off | {name: 1.0})
            out = out + w * (forward(*a, **k)[0] - base)
        scales.set(off)
        return (out,)

    unet.forward = mixed
    try:
        yield
    finally:
        unet.forward = forward


def read(images, cases) -> dict:
    rs = [score_image(im) for im in images]
    return {"color": float(np.mean([r.color == c.target.color for r, c in zip(rs, cases)])),
            "shape": float(np.mean([r.shape == c.target.shape for r, c in zip(rs, cases)])),
            "hollow": float(np.mean([r.hollow for r in rs])),
            "dark": float(np.mean([r.dark_background for r in rs])),
            "saturation": float(np.mean([r.saturation for r in rs if r.found] or [0.0]))}


def blend(pipe, scales, cases, weights: dict, steps: int, guidance: float, step_weights=None) -> dict:
    """Weight-space blend; ``step_weights(i, n) -> {name: w}`` changes them per step."""
    scales.set({s: weights.get(s, 0.0) for s in STYLES})
    kwargs = {}
    if step_weights is not None:
        def on_step_end(p, i, t, kw):
            scales.set({s: 0.0 for s in STYLES} | step_weights(i + 1, steps))
            return kw
        scales.set({s: 0.0 for s in STYLES} | step_weights(0, steps))
        kwargs["callback_on_step_end"] = on_step_end
    images = generate(pipe, [c.prompt for c in cases], [c.seed for c in cases], guidance, steps, **kwargs)
    return read(images, cases)


def block_scaled(pipe, scales, name: str, weight: float, group: str, group_weight: float):
    """Set adapter ``name`` to ``weight`` except the layers of block group ``group`` (down/mid/up)."""
    bases = {id(m): b for m, b in scales.base[name]}
    for module_name, module in pipe.unet.named_modules():
        if id(module) in bases:
            w = group_weight if module_name.startswith(f"{group}_block") else weight
            module.scaling[name] = bases[id(module)] * w
    scales.weights[name] = None  # mark as custom, so the next set() rewrites every layer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/tiny-shapes")
    p.add_argument("--loras", default="lora_presets/tiny-shapes")
    p.add_argument("--num_samples", type=int, default=30)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--parts", default="mix,blocks,steps", help="comma-separated: mix, blocks, steps, roundtrip, inversion, schedules, lines (none: only the grids)")
    p.add_argument("--x0_grid", default=None, help="write a grid of decoded x0 predictions here")
    p.add_argument("--pair_grid", default=None,
                   help="write a grid of the pastel pairs at weights 0-1 here, drawn by --old_vae (upper row) and the model's VAE")
    p.add_argument("--old_vae", default=None, help="--pair_grid: the VAE folder to compare with")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe, scales = load(args.model, args.loras)
    cases = eval_cases(args.num_samples, seed=7)
    out = {}
    parts = args.parts.split(",")
    settings = [{"night": 0.5}, {"pastel": 0.5}, {"outline": 0.5}, {"outline": 0.5, "night": 0.5},
                {"outline": 0.8, "night": 0.6}, {"outline": 1.0, "pastel": 1.0}, {"night": 1.0, "pastel": 1.0},
                {"outline": 1.0, "night": 1.0}]
    if "mix" in parts:
        for w in settings:
            key = " + ".join(f"{k} {v:g}" for k, v in w.items())
            out[f"blend {key}"] = blend(pipe, scales, cases, w, args.steps, args.guidance)
            with mixed_unet(pipe, scales, w):
                scales.set({s: 0.0 for s in STYLES})
                images = generate(pipe, [c.prompt for c in cases], [c.seed for c in cases], args.guidance, args.steps)
            out[f"mix {key}"] = read(images, cases)
            print(key, "blend", out[f"blend {key}"], "mix", out[f"mix {key}"], flush=True)
    if "blocks" in parts:
        for name in ("night", "pastel"):
            for group in ("down", "mid", "up"):
                for gw in (0.0, 1.0):
                    scales.set({s: 0.0 for s in STYLES})
                    block_scaled(pipe, scales, name, 0.5, group, gw)
                    images = generate(pipe, [c.prompt for c in cases], [c.seed for c in cases], args.guidance,
                                      args.steps)
                    key = f"{name} 0.5, {group} at {gw:g}"
                    out[key] = read(images, cases)
                    print(key, out[key], flush=True)
            scales.weights[name] = None
    if "steps" in parts:
        for name in ("night", "pastel"):
            thirds = ((0, 8), (8, 16), (16, 25))
            for lo, hi in thirds:
                key = f"{name} 0.5 in steps {lo}-{hi - 1} only"
                out[key] = blend(pipe, scales, cases, {}, args.steps, args.guidance,
                                 step_weights=lambda i, n, lo=lo, hi=hi: {name: 0.5 if lo <= i < hi else 0.0})
                print(key, out[key], flush=True)
            for lo, hi in thirds:
                key = f"{name} 1, but 0.5 in steps {lo}-{hi - 1}"
                out[key] = blend(pipe, scales, cases, {}, args.steps, args.guidance,
                                 step_weights=lambda i, n, lo=lo, hi=hi: {name: 0.5 if lo <= i < hi else 1.0})
                print(key, out[key], flush=True)
    if "roundtrip" in parts:
        out.update(round_trips(pipe.vae))
    if "schedules" in parts:
        for kind in ("early", "interleave", "late"):
            for share in (0.3, 0.5, 0.7, 0.9):
                key = f"pastel on {kind} {share:g} of the steps"
                out[key] = blend(pipe, scales, cases, {}, args.steps, args.guidance,
                                 step_weights=lambda i, n, kind=kind, share=share: {"pastel": on_step(kind, share, i, n)})
                print(key, out[key], flush=True)
    if "inversion" in parts:
        out.update(inversions(pipe.vae, args.num_samples))
    if "lines" in parts:
        out.update(lines(pipe, scales, cases, args.steps, args.guidance))
    if args.x0_grid:
        x0_grid(pipe, scales, args)
    if args.pair_grid:
        pair_grid(pipe, scales, args)
    print(json.dumps(out, indent=2))


@torch.no_grad()
def lines(pipe, scales, cases, steps: int, guidance: float, weights=(0.5, 0.7, 0.8)) -> dict:
    """Part 7: the style's latent at weight w against the line from weight 0 to weight 1, and the pictures of the
    generated latent, the latent blend and the picture blend; the pairs against the sum of their moves."""
    def latents(ws: dict) -> torch.Tensor:
        scales.set({s: 0.0 for s in STYLES} | ws)
        return pipe(prompt=[c.prompt for c in cases], generator=[torch.Generator().manual_seed(c.seed) for c in cases],
                    guidance_scale=guidance, num_inference_steps=steps, output_type="latent").images

    def pictures(z: torch.Tensor) -> np.ndarray:
        x = torch.cat([pipe.vae.decode(z[i:i + 50] / pipe.vae.config.scaling_factor).sample for i in range(0, len(z), 50)])
        return ((x.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).numpy()

    def reading(images: np.ndarray) -> dict:
        return {k: round(v, 3) for k, v in read([im.round().astype(np.uint8) for im in images], cases).items()}

    z0 = latents({})
    p0 = pictures(z0)
    contrast = shape_contrast(p0, z0.shape[-1])
    out, ends = {}, {}
    for style in STYLES:
        ends[style] = z1 = latents({style: 1.0})
        p1 = pictures(z1)
        d = (z1 - z0).flatten(1)
        for w in weights:
            zw = latents({style: w})
            r = (zw - z0).flatten(1)
            along = (r * d).sum(1) / (d * d).sum(1)
            off = (r - along[:, None] * d).norm(dim=1) / d.norm(dim=1)
            key = f"{style} at {w:g}"
            out[f"{key}: place on the line"] = {"along": round(float(along.mean()), 3), "off": round(float(off.mean()), 3)}
            out[f"{key}: generated"] = reading(pictures(zw))
            out[f"{key}: latent blend"] = reading(pictures((1 - w) * z0 + w * z1))
            out[f"{key}: picture blend"] = reading((1 - w) * p0 + w * p1)
            out[f"{key}: shape contrast in the latent"] = {
                name: round(contrast(z), 2) for name, z in (("base", z0), (f"{style} at 1", z1), ("generated", zw),
                                                           ("latent blend", (1 - w) * z0 + w * z1))}
            print(key, {k[len(key) + 2:]: v for k, v in out.items() if k.startswith(key)}, flush=True)
    for a, b in (("outline", "night"), ("outline", "pastel"), ("night", "pastel")):
        for w in (0.5, 1.0):
            zab = latents({a: w, b: w})
            moves = w * (ends[a] - z0) + w * (ends[b] - z0)
            far = (zab - z0 - moves).flatten(1).norm(dim=1) / moves.flatten(1).norm(dim=1)
            key = f"{a} + {b} at {w:g}: off the sum of the moves"
            out[key] = round(float(far.mean()), 3)
            print(key, out[key], flush=True)
            if w == 1.0:  # how much of each style's own move is left between the pair and the other style alone
                for x, y in ((a, b), (b, a)):
                    left = (zab - ends[x]).flatten(1).norm(dim=1) / (ends[y] - z0).flatten(1).norm(dim=1)
                    key = f"{a} + {b} at 1: distance from {x} alone, in lengths of {y}'s own move"
                    out[key] = round(float(left.mean()), 3)
                    print(key, out[key], flush=True)
    return out


def shape_contrast(base_pictures: np.ndarray, latent_side: int):
    """A function of latents (N, C, h, w) -> the median over prompts of |mean latent over the shape - mean over
    the background|, the shape's pixels found in the base model's pictures (N, H, W, 3 in 0-255; half covered or
    more, per latent pixel) and the background's (none covered); prompts whose shape covers no latent pixel are
    left out."""
    import torch.nn.functional as F

    from train.pair_pictures import coverage

    pics = torch.from_numpy(base_pictures).float().permute(0, 3, 1, 2) / 127.5 - 1.0  # the model's [-1, 1] space
    share = F.avg_pool2d((coverage(pics) > 0.5).float(), pics.shape[-1] // latent_side)
    shape, background = (share > 0.5).float(), (share == 0).float()
    found = shape.sum(dim=(1, 2, 3)) > 0

    def contrast(z: torch.Tensor) -> float:
        inside = (z * shape).sum(dim=(2, 3)) / shape.sum(dim=(2, 3)).clamp_min(1)
        outside = (z * background).sum(dim=(2, 3)) / background.sum(dim=(2, 3)).clamp_min(1)
        return float((inside - outside).norm(dim=1)[found].median())

    return contrast


@torch.no_grad()
def round_trips(vae, n: int = 60) -> dict:
    """The scorer's reading of decode(encode(x)) for true renders drawn part-way (render strengths)."""
    out = {}
    for style in ("night", "pastel", "outline", "outline+night", "outline+pastel", "night+pastel"):
        for w in (0.25, 0.5, 0.75, 1.0):
            ss, x = part_way_renders(style, w, n)
            key = f"round trip {style} at strength {w:g}"
            out[key] = read_renders(vae.decode(vae.encode(x).latent_dist.mean).sample, ss)
            print(key, out[key], flush=True)
    return out


def part_way_renders(style: str, strength: float, n: int):
    """``n`` seeded shapes-world samples of ``style`` with each part drawn at ``strength``, and their images
    in model space (n, 3, H, W) in [-1, 1]."""
    from shapesworld.world import sample

    ss = [sample(50_000_000 + i, style=style, empty_prob=0.0, strengths={p: strength for p in style.split("+")})
          for i in range(n)]
    x = torch.from_numpy(np.stack([np.asarray(s.image, np.float32) / 127.5 - 1 for s in ss])).permute(0, 3, 1, 2)
    return ss, x


def read_renders(decoded: torch.Tensor, samples) -> dict:
    """The scorer's color and shape accuracy of decoded images (n, 3, H, W) in [-1, 1] against the samples drawn."""
    rs = [score_image(((a.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).byte().numpy()) for a in decoded]
    return {"color": float(np.mean([r.color == s.attributes.color for r, s in zip(rs, samples)])),
            "shape": float(np.mean([r.shape == s.attributes.shape for r, s in zip(rs, samples)]))}


def on_step(kind: str, share: float, i: int, n: int) -> float:
    """1 on a ``share`` of the ``n`` steps (the first ones, the last ones, or spread evenly), 0 on the rest."""
    if kind == "early":
        return 1.0 if i < round(share * n) else 0.0
    if kind == "late":
        return 1.0 if i >= n - round(share * n) else 0.0
    return 1.0 if int((i + 1) * share) > int(i * share) else 0.0


INVERSION_CASES = (("pastel", 0.5), ("pastel", 0.75), ("night", 0.75), ("outline+pastel", 1.0),
                   ("night+pastel", 1.0), ("night+pastel", 0.5))


def inversions(vae, n: int = 30, iters: int = 150, lr: float = 0.05) -> dict:
    """For true renders drawn part-way: the scorer's reading of decode(encode(x)) and of decode(z*), z* fitted
    to x through the frozen decoder (train/lora_latent_fit.py, from the encoder's mean), with how far z* lies
    from the encoder's latent."""
    from train.lora_latent_fit import fit_latents

    vae.requires_grad_(False)
    out = {}
    for style, w in INVERSION_CASES:
        ss, x = part_way_renders(style, w, n)
        with torch.no_grad():
            z0 = vae.encode(x).latent_dist.mean
            trip = read_renders(vae.decode(z0).sample, ss)
        z = fit_latents(vae, x, z0, iters, lr)
        with torch.no_grad():
            fitted = read_renders(vae.decode(z).sample, ss)
        key = f"{style} at strength {w:g}"
        out[f"round trip {key}"] = trip
        out[f"fitted latent {key}"] = {**fitted, "relative_distance": float((z - z0).norm() / z0.norm())}
        print(key, "round trip", trip, "fitted latent", out[f"fitted latent {key}"], flush=True)
    return out


@torch.no_grad()
def x0_grid(pipe, scales, args):
    """Rows: night 0 / 0.5 blend / 0.5 mix / 1 (and the same for pastel); columns: x0 at steps 2, 5, 10, 15, 24."""
    from PIL import Image

    prompt, seed = "a large red circle in the center", 3
    at = (2, 5, 10, 15, 24)
    rows = []
    for name in ("night", "pastel"):
        for label, w, mix in (("0", 0.0, False), ("0.5", 0.5, False), ("0.5 mix", 0.5, True), ("1", 1.0, False)):
            ctx = mixed_unet(pipe, scales, {name: w}) if mix else contextlib.nullcontext()
            scales.set({s: 0.0 for s in STYLES} | ({} if mix else {name: w}))
            x0s = []
            sched_step = pipe.scheduler.step

            def step(model_output, timestep, sample, *a, **k):
                out = sched_step(model_output, timestep, sample, *a, **k)
                x0s.append(out.pred_original_sample if hasattr(out, "pred_original_sample") else out[1])
                return out
            pipe.scheduler.step = step
            try:
                with ctx:
                    pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), guidance_scale=args.guidance,
                         num_inference_steps=args.steps, output_type="pil")
            finally:
                pipe.scheduler.step = sched_step
            tiles = []
            for i in at:
                img = pipe.vae.decode(x0s[i] / pipe.vae.config.scaling_factor).sample
                arr = ((img[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).byte().numpy()
                tiles.append(Image.fromarray(arr).resize((96, 96), Image.NEAREST))
            rows.append(tiles)
    grid = Image.new("RGB", (len(at) * 98, len(rows) * 98), "white")
    for r, tiles in enumerate(rows):
        for c, t in enumerate(tiles):
            grid.paste(t, (c * 98, r * 98))
    os.makedirs(os.path.dirname(args.x0_grid) or ".", exist_ok=True)
    grid.save(args.x0_grid)
    print("x0 grid:", args.x0_grid, "rows: night 0 / 0.5 / 0.5 mix / 1, pastel the same; columns: steps", at)


@torch.no_grad()
def pair_grid(pipe, scales, args):
    """For three prompts, rows night + pastel then outline + pastel at equal weights 0, 0.3, 0.5, 0.7, 0.9, 1: the
    same latents drawn by --old_vae (upper row of each two) and by the model's VAE (lower row)."""
    from diffusers import AutoencoderKL
    from PIL import Image

    if not args.old_vae:
        raise SystemExit("--pair_grid compares two decoders: give --old_vae DIR (e.g. a copy of the VAE before a run)")
    old = AutoencoderKL.from_pretrained(args.old_vae).eval()
    prompts = (("a large red circle in the top left", 0), ("a large blue square in the center", 1),
               ("a small orange triangle in the bottom right", 2))
    weights = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)
    rows = []
    for prompt, seed in prompts:
        for pair in (("night", "pastel"), ("outline", "pastel")):
            zs = []
            for w in weights:
                scales.set({s: 0.0 for s in STYLES} | {p_: w for p_ in pair})
                zs.append(pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), guidance_scale=args.guidance,
                               num_inference_steps=args.steps, output_type="latent").images)
            z = torch.cat(zs) / pipe.vae.config.scaling_factor
            for vae in (old, pipe.vae):
                img = ((vae.decode(z).sample.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).byte().numpy()
                rows.append([Image.fromarray(a).resize((96, 96), Image.NEAREST) for a in img])
    gap = 10  # between the prompts' blocks of four rows
    grid = Image.new("RGB", (len(weights) * 98, len(rows) * 98 + gap * (len(prompts) - 1)), "white")
    for r, tiles in enumerate(rows):
        for c, t in enumerate(tiles):
            grid.paste(t, (c * 98, r * 98 + gap * (r // 4)))
    os.makedirs(os.path.dirname(args.pair_grid) or ".", exist_ok=True)
    grid.save(args.pair_grid)
    print("pair grid:", args.pair_grid, "per prompt, rows: night + pastel old / new, outline + pastel old / new;"
          " columns: weights", weights)


if __name__ == "__main__":
    main()
