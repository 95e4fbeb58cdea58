"""Image layout helpers for display (no diffusion math): upscaling, strips, tensor -> PIL."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def upscale(image: Image.Image, size: int) -> Image.Image:
    """Nearest-neighbour upscale so 8-32 px previews show crisp pixels, not blur."""
    if image.width >= size:
        return image
    factor = max(1, size // image.width)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def strip(images: list[Image.Image], size: int = 96, gap: int = 2) -> Image.Image:
    """Images side by side, each upscaled to ``size``, on a white background."""
    tiles = [upscale(im, size).resize((size, size), Image.NEAREST) for im in images]
    out = Image.new("RGB", (len(tiles) * size + gap * (len(tiles) - 1), size), "white")
    for i, tile in enumerate(tiles):
        out.paste(tile, (i * (size + gap), 0))
    return out


def tensor_to_pil(image) -> Image.Image:
    """(3, H, W) tensor in [-1, 1] -> PIL."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of the largest centered square: what the lab feeds the model."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop_view(image: Image.Image, side: int = 192) -> Image.Image:
    """``image`` scaled to ``side`` px on its long side (small images with crisp pixels) with the part
    the model does not see dimmed and the center square it sees outlined: the crop shown, not only
    described."""
    image = image.convert("RGB")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    shown = image.resize(size, Image.NEAREST if scale > 1 else Image.BICUBIC)
    box = [round(v * scale) for v in center_square(*image.size)]
    dimmed = Image.blend(shown, Image.new("RGB", shown.size, (0, 0, 0)), 0.6)
    dimmed.paste(shown.crop(box), box[:2])
    line = max(1, round(max(shown.size) / 128))
    ImageDraw.Draw(dimmed).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 210, 0), width=line)
    return dimmed


def pil_to_tensor(image: Image.Image, size: int):
    """PIL -> (1, 3, size, size) tensor in [-1, 1] (center crop to square, then resize)."""
    import torch

    image = image.convert("RGB")
    image = image.crop(center_square(*image.size)).resize((size, size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
