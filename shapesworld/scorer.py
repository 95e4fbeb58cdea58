"""Read the shapes-world attributes back from any RGB image.

Works on generated images as well as on the generator's own output: it never looks at
pixels' exact values, only at which pixels differ from the background and how.

    background  median of the border pixels; "dark" when its luminance < 0.35
    shape mask  pixels whose color is far from the background (relative threshold)
    color       nearest palette hue to the mean hue of the most saturated shape pixels
    shape       filled-mask area / bounding-box area: square ~1.0, circle ~0.79, triangle ~0.5
    size        the larger side of the bounding box, split between the two drawn sizes
    position    the centroid of the filled mask, split into thirds
    hollow      the deepest point inside the filled outline is background-like, or drawn
                pixels cover well under the filled area (a ring, not a disc)
    saturation  mean HSV saturation of the shape pixels
"""
from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .world import CELL_CENTER, COLORS, HALF_EXTENT, RESOLUTION

_PALETTE_HUES = {name: colorsys.rgb_to_hsv(*(np.array(rgb) / 255.0))[0] for name, rgb in COLORS.items()}


@dataclass
class Reading:
    found: bool
    shape: str | None = None
    color: str | None = None
    size: str | None = None
    h: str | None = None
    v: str | None = None
    dark_background: bool = False
    hollow: bool = False
    saturation: float = 0.0
    fill_ratio: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def _third(value: float, names: tuple[str, str, str], lo: float, hi: float) -> str:
    return names[0] if value < lo else names[2] if value > hi else names[1]


def score_image(image) -> Reading:
    """Attributes of the single shape in ``image`` (PIL image or uint8/float array (H, W, 3))."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * 255.0 + 0.5 if arr.max() <= 1.0 else arr, 0, 255).astype(np.uint8)
    rgb = arr.astype(np.float32) / 255.0  # (H, W, 3)
    H, W, _ = rgb.shape

    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    lum = float(background @ np.array([0.299, 0.587, 0.114]))
    diff = np.linalg.norm(rgb - background, axis=-1)
    mask = diff > max(0.18, 0.35 * float(diff.max()))
    if mask.sum() < 4:
        return Reading(found=False, dark_background=lum < 0.35)

    # keep the largest connected component: stray specks in generated images are not the shape
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    filled = ndimage.binary_fill_holes(mask)
    ys, xs = np.nonzero(filled)
    height, width = int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1
    fill_ratio = float(filled.sum() / (height * width))
    shape = "square" if fill_ratio > 0.88 else "circle" if fill_ratio > 0.64 else "triangle"

    scale = W / RESOLUTION
    extent = max(height, width) / scale
    size_split = HALF_EXTENT["small"] + HALF_EXTENT["large"]  # midpoint of the two diameters
    size = "large" if extent > size_split else "small"

    cy, cx = ys.mean() / H, xs.mean() / W
    lo = (CELL_CENTER["left"] + CELL_CENTER["center"]) / 2
    hi = (CELL_CENTER["center"] + CELL_CENTER["right"]) / 2
    h = _third(cx, ("left", "center", "right"), lo, hi)
    v = _third(cy, ("top", "middle", "bottom"), lo, hi)

    pixels = rgb[mask]  # (N, 3)
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
    saturation = float(hsv[:, 1].mean())
    # the hue of the most saturated half: edge pixels blend with the background
    core = hsv[hsv[:, 1] >= np.median(hsv[:, 1])]
    angles = core[:, 0] * 2 * np.pi
    mean_hue = (np.arctan2(np.sin(angles).mean(), np.cos(angles).mean()) / (2 * np.pi)) % 1.0
    color = min(_PALETTE_HUES, key=lambda name: _hue_distance(mean_hue, _PALETTE_HUES[name]))

    # hollow: the deepest interior point of the filled outline looks like background, or the
    # drawn pixels cover well under the filled area (a ring, not a disc)
    depth = ndimage.distance_transform_edt(filled)
    deepest = np.unravel_index(int(np.argmax(depth)), depth.shape)
    hollow = bool(diff[deepest] < 0.5 * float(np.median(diff[mask])) or mask.sum() / filled.sum() < 0.75)
    return Reading(True, shape, color, size, h, v, lum < 0.35, hollow, saturation, fill_ratio)


def adherence(readings: list[Reading], targets: list, mentioned: list[tuple[str, ...]] | None = None) -> dict:
    """Accuracy per attribute over the samples whose prompt named that attribute.

    ``targets`` are world.Attributes; ``mentioned`` lists which attributes each prompt named
    (default: all). Position counts as correct only when both h and v match, over prompts that
    named both; ``h`` and ``v`` alone are reported too.
    """
    keys = ("shape", "color", "size", "h", "v")
    hits = {k: [] for k in keys + ("position",)}
    for i, (reading, target) in enumerate(zip(readings, targets)):
        named = set(mentioned[i]) if mentioned is not None else set(keys)
        for k in keys:
            if k in named:
                hits[k].append(bool(reading.found and getattr(reading, k) == getattr(target, k)))
        if {"h", "v"} <= named:
            hits["position"].append(bool(reading.found and reading.h == target.h and reading.v == target.v))
    return {k: (float(np.mean(v)) if v else float("nan")) for k, v in hits.items()}
