"""Image layout helpers for display (no diffusion math): upscaling, strips, tensor -> PIL."""
from __future__ import annotations

import numpy as np
from PIL import Image


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


def pil_to_tensor(image: Image.Image, size: int):
    """PIL -> (1, 3, size, size) tensor in [-1, 1] (center crop to square, then resize)."""
    import torch

    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
