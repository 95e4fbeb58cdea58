"""The shapes world: small procedural images of one shape, with captions and ground truth.

Every sample is a pure function of its seed: ``sample(seed)`` always returns the same image,
caption and attributes. Images are drawn 4x supersampled and box-filtered down, so edges are
anti-aliased like a photo rather than aliased like a bitmap.

Attributes
    shape    circle | square | triangle
    color    red | orange | yellow | green | blue | purple
    size     small | large
    h, v     horizontal left | center | right, vertical top | middle | bottom
    style    None | outline (hollow) | night (dark background) | pastel (washed-out colors), or
             several joined with "+" ("outline+night": hollow shapes on a dark background)
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (222, 38, 38),
    "orange": (245, 135, 20),
    "yellow": (236, 212, 30),
    "green": (34, 160, 60),
    "blue": (36, 84, 220),
    "purple": (135, 45, 190),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
HPOS = ("left", "center", "right")
VPOS = ("top", "middle", "bottom")
STYLES = ("outline", "night", "pastel")

RESOLUTION = 32
SUPERSAMPLE = 4
# Half-extent of a shape in pixels at 32 px, and the centre of each grid cell (fractions of the side).
HALF_EXTENT = {"small": 5.0, "large": 8.0}
CELL_CENTER = {"left": 0.28, "center": 0.5, "right": 0.72, "top": 0.28, "middle": 0.5, "bottom": 0.72}
OUTLINE_WIDTH = 1.6  # stroke width in output pixels
PASTEL_MIX = 0.55  # share of white mixed into a pastel color

# Words that captions and LoRA trigger phrases use; the embedded tokenizer learns one token for each.
VOCABULARY = sorted(
    set(SHAPES + COLOR_NAMES + SIZES + HPOS + VPOS + STYLES)
    | {"a", "an", "in", "on", "at", "the", "shape", "style", "of", "and", "with", "background", "hollow", "dark"}
)


@dataclass(frozen=True)
class Attributes:
    shape: str
    color: str
    size: str
    h: str
    v: str
    style: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    caption: str
    attributes: Attributes
    mentioned: tuple[str, ...]  # which attribute names the caption states ("shape", "color", ...)


def _shape_mask(shape: str, cx: float, cy: float, r: float, n: int) -> np.ndarray:
    """Boolean mask (n, n) of a filled shape with half-extent r centred at (cx, cy), pixel units."""
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        side = 0.9 * r  # a slightly smaller square keeps the areas of the three shapes comparable
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "triangle":
        # upright isosceles: apex at cy - r, base at cy + r, half base width r
        rel = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
        return (rel >= 0) & (rel <= 1) & (np.abs(dx) <= r * rel)
    raise ValueError(f"shape={shape!r} is not one of {SHAPES}")


def style_parts(style: str | None) -> tuple[str, ...]:
    """The single styles of a style or combination ("outline+night" -> ("outline", "night")), checked.

    Combinations are written in STYLES order, each style at most once, so every combination has
    exactly one spelling.
    """
    if style is None:
        return ()
    parts = tuple(style.split("+"))
    allowed = f"one of {STYLES}, several of them joined with '+' in that order (e.g. 'outline+night'), or None"
    if any(p not in STYLES for p in parts) or len(set(parts)) != len(parts) or \
            list(parts) != sorted(parts, key=STYLES.index):
        raise ValueError(f"style={style!r} is invalid: {allowed}")
    return parts


def join_styles(*styles: str) -> str:
    """The one spelling of a combination of single styles, in any order ("night", "outline" -> "outline+night")."""
    return "+".join(sorted(set(styles), key=STYLES.index))


def render(attrs: Attributes, rng: np.random.Generator, resolution: int = RESOLUTION,
           strengths: dict | None = None) -> Image.Image:
    """Draw one shape on a plain background, supersampled then box-filtered to ``resolution``.

    ``strengths`` ({style: s in [0, 1]}, default 1 for each style of ``attrs.style``) draws a style
    part-way, in pixel space: night mixes the background from the light one (0) to the dark one (1),
    pastel mixes ``s * PASTEL_MIX`` white into the color, outline fills the shape's inside with
    the color mixed towards the background by ``s`` (1: hollow). Strength 1 is the style as it was,
    pixel for pixel (the random draws are the same for every strength).
    """
    styles = style_parts(attrs.style)
    strength = {st: 1.0 for st in styles}
    for st, value in (strengths or {}).items():
        if st not in styles:
            raise ValueError(f"strengths names {st!r}, which is not a part of style={attrs.style!r}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"strengths[{st!r}]={value!r} is out of range: allowed 0 to 1")
        strength[st] = float(value)
    n = resolution * SUPERSAMPLE
    scale = resolution / RESOLUTION * SUPERSAMPLE
    jitter = rng.uniform(-1.0, 1.0, size=2) * scale
    cx = CELL_CENTER[attrs.h] * n + jitter[0]
    cy = CELL_CENTER[attrs.v] * n + jitter[1]
    r = HALF_EXTENT[attrs.size] * scale * rng.uniform(0.93, 1.07)

    u = rng.random(3)  # what rng.uniform(lo, hi, 3) draws: lo + (hi - lo) * u
    dark = np.array([18, 20, 38], np.float32) + (-6 + 12 * u)
    light = np.array([240, 238, 232], np.float32) + (-8 + 16 * u)
    night = strength.get("night", 0.0)
    background = dark if night == 1.0 else light if night == 0.0 else ((1 - night) * light + night * dark)
    background = background.astype(np.float32)
    color = np.array(COLORS[attrs.color], np.float32) + rng.uniform(-10, 10, 3)
    if "pastel" in styles:
        mix = PASTEL_MIX * strength["pastel"]
        color = (1 - mix) * color + mix * 255.0

    mask = _shape_mask(attrs.shape, cx, cy, r, n)
    if "outline" in styles:
        w = OUTLINE_WIDTH * scale
        inner = _shape_mask(attrs.shape, cx, cy + (w * 0.45 if attrs.shape == "triangle" else 0.0), r - w * (1.45 if attrs.shape == "triangle" else 1.0), n)
        if strength["outline"] == 1.0:
            mask = mask & ~inner
        else:  # the inside keeps (1 - s) of the color
            inside = (1 - strength["outline"]) * color + strength["outline"] * background
            canvas = np.where((mask & ~inner)[..., None], color, np.where(mask[..., None], inside, background))
            small = canvas.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))
            return Image.fromarray(np.clip(small + 0.5, 0, 255).astype(np.uint8))

    canvas = np.where(mask[..., None], color, background)  # (n, n, 3)
    small = canvas.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return Image.fromarray(np.clip(small + 0.5, 0, 255).astype(np.uint8))


def _position_phrase(h: str | None, v: str | None) -> str:
    if h and v:
        return "in the center" if (h, v) == ("center", "middle") else f"in the {v} {h}"
    if h:
        return "in the center" if h == "center" else f"on the {h}"
    if v:
        return "in the middle" if v == "middle" else f"at the {v}"
    return ""


def caption_for(attrs: Attributes, mentioned: tuple[str, ...]) -> str:
    """Plain-English caption stating exactly the attributes in ``mentioned``."""
    if not mentioned:
        return ""
    words = []
    if "size" in mentioned:
        words.append(attrs.size)
    if "color" in mentioned:
        words.append(attrs.color)
    words.append(attrs.shape if "shape" in mentioned else "shape")
    phrase = _position_phrase(attrs.h if "h" in mentioned else None, attrs.v if "v" in mentioned else None)
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article] + words + ([phrase] if phrase else []))


def sample(seed: int, style: str | None = None, empty_prob: float = 0.1, resolution: int = RESOLUTION,
           strengths: dict | None = None) -> Sample:
    """The sample for ``seed``: attributes, image and a caption naming a random subset of them.

    ``strengths``: each style drawn part-way (``render``); the attributes and caption do not change."""
    style_parts(style)  # raises on an unknown style or a badly spelled combination
    rng = np.random.default_rng([seed, 0x5EED])
    attrs = Attributes(
        shape=SHAPES[rng.integers(3)],
        color=COLOR_NAMES[rng.integers(6)],
        size=SIZES[rng.integers(2)],
        h=HPOS[rng.integers(3)],
        v=VPOS[rng.integers(3)],
        style=style,
    )
    if rng.random() < empty_prob:
        mentioned: tuple[str, ...] = ()
    else:
        keep = {"shape": 0.8, "color": 0.8, "size": 0.6, "h": 0.65, "v": 0.65}
        mentioned = tuple(k for k, p in keep.items() if rng.random() < p)
    image = render(attrs, rng, resolution, strengths)
    return Sample(image=image, caption=caption_for(attrs, mentioned), attributes=attrs, mentioned=mentioned)


def full_caption(attrs: Attributes) -> str:
    """Caption naming every attribute (used for evaluation prompts)."""
    return caption_for(attrs, ("shape", "color", "size", "h", "v"))


def images_array(seeds, style: str | None = None, empty_prob: float = 0.1, resolution: int = RESOLUTION):
    """Render many samples: returns (uint8 array (N, H, W, 3), captions, attributes)."""
    samples = [sample(int(s), style=style, empty_prob=empty_prob, resolution=resolution) for s in seeds]
    images = np.stack([np.asarray(s.image) for s in samples])
    return images, [s.caption for s in samples], [s.attributes for s in samples]


def write_imagefolder(folder: str, num_samples: int, style: str | None = None, seed: int = 0,
                      trigger: str | None = None, empty_prob: float = 0.0, resolution: int = RESOLUTION) -> str:
    """Write an imagefolder data set (PNG files + metadata.jsonl with file_name/text) and return its path.

    ``trigger`` is prepended to every caption ("outline style, a red circle"), the usual way a
    style LoRA learns a trigger word. The metadata file is written last, under a temporary name
    and renamed, so a half-written folder is never mistaken for a complete one.
    """
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(num_samples):
        s = sample(seed * 1_000_003 + i, style=style, empty_prob=empty_prob, resolution=resolution)
        name = f"{i:06d}.png"
        s.image.save(os.path.join(folder, name))
        text = s.caption
        if trigger:
            text = f"{trigger}, {text}" if text else trigger
        rows.append({"file_name": name, "text": text, **{f"attr_{k}": v for k, v in s.attributes.to_dict().items()}})
    tmp = os.path.join(folder, "metadata.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, os.path.join(folder, "metadata.jsonl"))
    return folder
