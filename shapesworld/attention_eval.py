"""How right is a word's attention map? Truth from the shapes world (numpy only; imports no pipelines).

- ``shape_mask``: the generated image's shape, segmented by its color against the background (the
  scorer's rule: distance from the border's median color > max(0.18, 0.35 * the largest distance),
  largest connected component, holes filled).
- ``threshold_map``: DAAM's rule (Tang et al. 2023; its ``expand_image``): upsample the map to the
  image (bilinear), min-max normalize it to [0, 1], keep pixels >= tau (tau = 0.4 there and here).
- ``position_region``: the image third a position word names (left / center / right columns,
  top / middle / bottom rows), the shapes world's 3 x 3 layout.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

TAU = 0.4  # DAAM's threshold on the min-max normalized map
POSITION_WORDS = {"left": ("x", 0), "center": ("x", 1), "right": ("x", 2), "top": ("y", 0), "middle": ("y", 1),
                  "bottom": ("y", 2)}


def shape_mask(image) -> np.ndarray:
    """(H, W) bool: the shape's pixels in an RGB image ((H, W, 3) floats in [0, 1] or uint8)."""
    rgb = np.asarray(image, dtype=np.float32)
    if rgb.max() > 1.0:
        rgb = rgb / 255.0
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    diff = np.linalg.norm(rgb - np.median(border, axis=0), axis=-1)
    mask = diff > max(0.18, 0.35 * float(diff.max()))
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (h, w) map to ``size`` (align_corners=False, like torch's F.interpolate)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def threshold_map(heat: np.ndarray, size: tuple[int, int], tau: float = TAU) -> np.ndarray:
    """DAAM's binarization: upsample, min-max normalize, keep >= tau (a flat map: nothing)."""
    up = upsample(heat, size)
    lo, hi = float(up.min()), float(up.max())
    if hi - lo <= 1e-12:
        return np.zeros(size, dtype=bool)
    return (up - lo) / (hi - lo) >= tau


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def position_region(word: str, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the third of the image that a position word names."""
    axis, index = POSITION_WORDS[word]
    h, w = size
    region = np.zeros(size, dtype=bool)
    if axis == "x":
        region[:, round(index * w / 3):round((index + 1) * w / 3)] = True
    else:
        region[round(index * h / 3):round((index + 1) * h / 3), :] = True
    return region


def mass_in(heat: np.ndarray, region: np.ndarray) -> float:
    """Share of the (upsampled, non-negative) map's mass inside ``region`` (a uniform map gives its area)."""
    up = np.clip(upsample(heat, region.shape), 0, None)
    total = float(up.sum())
    return float(up[region].sum() / total) if total > 0 else 0.0
