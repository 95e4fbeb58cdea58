"""The picture a pair of styles should decode to, composed from the pictures of its single styles.

finetune_vae.py's preservation and line terms hold the decoder to the teacher's pictures of generated
latents. For a pair with pastel the teacher's pictures are wrong: the shipped decoder draws the latents
of night + pastel at 1 + 1 with the prompt's color read right in about a third of the prompts (full
saturation, hues turned: red to orange, purple to blue) and outline + pastel in about half, while the
same prompt's pastel picture and night picture each read right. Holding the decoder to those pictures
would keep the fault. ``--compose_pairs`` replaces them with a composition that uses no label:

- where the shape is: the pair's own picture (its pixels away from its own background color), so the
  geometry (hollow ring, size, place) is what the pair's latent draws;
- the shape's color: the pastel picture of the same prompt and seed (its shape pixels' mean color);
- the background: the night picture's when night is a part, else the pair picture's own.

With ``partial=True`` a pair latent at a partial weight ("night+pastel@0.7") is composed the same way
from the singles at that weight ("pastel@0.7", "night@0.7"): the pair dial's target at each weight is pastel's
color at that weight on night's background at that weight, which is how the renderer draws a pair part-way.

Pictures are (N, 3, H, W) in the model's [-1, 1] space.
"""
from __future__ import annotations

import torch

from shapesworld.world import style_parts


def background(pictures: torch.Tensor) -> torch.Tensor:
    """(N, 3): each picture's background color, the median of its one-pixel border."""
    p = pictures
    border = torch.cat([p[:, :, 0, :], p[:, :, -1, :], p[:, :, 1:-1, 0], p[:, :, 1:-1, -1]], dim=2)
    return border.median(dim=2).values


def coverage(pictures: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1]: how much of each pixel is shape, from its color distance to the background.
    A pixel as far from the background as the shape's typical pixel (the mean over pixels at least half as
    far as the farthest) counts 1; a picture with nothing on it counts 0 everywhere."""
    d = (pictures - background(pictures)[:, :, None, None]).norm(dim=1, keepdim=True)
    top = d.flatten(1).max(dim=1).values.clamp_min(1e-6)[:, None, None, None]
    strong = (d >= 0.5 * top).float()
    typical = (d * strong).sum(dim=(2, 3), keepdim=True) / strong.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    cov = (d / typical.clamp_min(1e-6)).clamp(0.0, 1.0)
    return torch.where(top > 0.15, cov, torch.zeros_like(cov))  # 0.15 in [-1, 1] space: about 10 levels of 255


def shape_color(pictures: torch.Tensor) -> torch.Tensor:
    """(N, 3): the mean color of each picture's solidly covered pixels (coverage >= 0.8)."""
    w = (coverage(pictures) >= 0.8).float()
    return (pictures * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1.0)


def compose(pair: torch.Tensor, pastel: torch.Tensor | None, night: torch.Tensor | None) -> torch.Tensor:
    """The pair's geometry, pastel's shape color (when given), night's background (when given)."""
    cov = coverage(pair)
    color = shape_color(pastel if pastel is not None else pair)[:, :, None, None]
    bg = background(night if night is not None else pair)[:, :, None, None]
    return cov * color + (1.0 - cov) * bg


def check_pair(pair: str) -> tuple[str, ...]:
    """The parts of a pair that can be composed (two or more styles, pastel among them); ValueError otherwise."""
    parts = style_parts(pair)
    if len(parts) < 2 or "pastel" not in parts:
        raise ValueError(f"compose pair {pair!r}: a combination of two or more styles with pastel "
                         "(outline+pastel, night+pastel, outline+night+pastel)")
    return parts


def compose_pairs(pictures: torch.Tensor, labels: list[tuple[str, int]], pairs: tuple[str, ...],
                  partial: bool = False) -> tuple[torch.Tensor, list[int]]:
    """Replace the pictures of full-weight ``pairs`` latents ("night+pastel", labels as train/keep_latents.py
    writes them) with their composition from the same case's single-style pictures; with ``partial`` also those
    at a partial weight ("night+pastel@0.7", from "pastel@0.7" and "night@0.7"). A pair whose singles are missing
    for a case keeps its picture. Returns the new pictures and the indices of the composed ones."""
    parts_of = {pair: check_pair(pair) for pair in pairs}
    index = {lab: i for i, lab in enumerate(labels)}
    out = pictures.clone()
    done = []
    for i, (label, case) in enumerate(labels):
        pair, at, weight = label.partition("@")
        parts = parts_of.get(pair)
        if parts is None or (weight and not partial):
            continue
        p = index.get(("pastel" + at + weight, case))
        n = index.get(("night" + at + weight, case)) if "night" in parts else None
        if p is None or ("night" in parts and n is None):
            continue
        out[i] = compose(pictures[i:i + 1], pictures[p:p + 1], None if n is None else pictures[n:n + 1])[0]
        done.append(i)
    return out, done
