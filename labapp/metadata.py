"""The settings that made an image, as PNG text chunks (kept by gr.Image(format='png')).

Two chunks: ``parameters`` in the AUTOMATIC1111 one-line style (so common tools show it) and
``diffusion_lab`` with the full settings document (``GenerationRequest.to_dict``, so the app can
read it back).
"""
from __future__ import annotations

import json

from PIL import Image

PNG_JSON_KEY = "diffusion_lab"
PNG_A1111_KEY = "parameters"


def a1111_line(settings: dict) -> str:
    """The settings document in AUTOMATIC1111's "parameters" style."""
    s = settings
    head = s["prompt"] + (f"\nNegative prompt: {s['negative_prompt']}" if s["negative_prompt"] else "")
    tail = (
        f"Steps: {s['steps']}, Sampler: {s['scheduler']}, CFG scale: {s['guidance_scale']:g}, "
        f"Seed: {s['seed']}, Size: {s['width']}x{s['height']}, Model: {s['model']}, "
        f"Guidance: {s['guidance_method']}"
    )
    return f"{head}\n{tail}"


def with_settings(image: Image.Image, request, image_index: int = 0) -> Image.Image:
    """A copy of ``image`` carrying ``request``'s settings (a GenerationRequest) as PNG text chunks."""
    tagged = image.copy()
    doc = request.to_dict() | {"image_index": image_index, "image_seed": request.image_seeds[image_index]}
    tagged.info[PNG_A1111_KEY] = a1111_line(doc | {"seed": doc["image_seed"]})  # A1111 writes each image's own seed
    tagged.info[PNG_JSON_KEY] = json.dumps(doc)
    return tagged


def read_settings(path_or_image) -> dict | None:
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    raw = image.info.get(PNG_JSON_KEY)
    return json.loads(raw) if raw else None
