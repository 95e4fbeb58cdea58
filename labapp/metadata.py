"""Settings that made an image: one JSON document, shown in the UI and stored in the PNG.

The PNG gets two text chunks: ``parameters`` in the AUTOMATIC1111 one-line style (so common
tools show it) and ``diffusion_lab`` with the full JSON (so the app can read it back).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from PIL import Image

from pipelines.guidance import DEFAULT_CLASSIFIER_SCALE

PNG_JSON_KEY = "diffusion_lab"
PNG_A1111_KEY = "parameters"


@dataclass
class GenerationSettings:
    prompt: str
    negative_prompt: str = ""
    model: str = ""
    scheduler: str = "DDIM"
    timestep_spacing: str = "model default"
    sigmas: str = "default"
    steps: int = 25
    guidance_method: str = "cfg"
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0
    guidance_schedule: str = "constant"
    guidance_interval: tuple[float, float] | None = None
    apg_momentum: float = -0.5
    apg_norm_threshold: float = 15.0
    apg_eta: float = 0.0
    cfg_zero_init_steps: int = 1
    perp_neg_scale: float = 1.0
    seed: int = 0
    width: int = 32
    height: int = 32
    num_images: int = 1
    lora: list[dict] = field(default_factory=list)
    classifier_scale: float = DEFAULT_CLASSIFIER_SCALE  # classifier / classifier+cfg methods (issue 15)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def a1111_line(self) -> str:
        head = self.prompt + (f"\nNegative prompt: {self.negative_prompt}" if self.negative_prompt else "")
        tail = (
            f"Steps: {self.steps}, Sampler: {self.scheduler}, CFG scale: {self.guidance_scale:g}, "
            f"Seed: {self.seed}, Size: {self.width}x{self.height}, Model: {self.model}, "
            f"Guidance: {self.guidance_method}"
        )
        return f"{head}\n{tail}"


def with_settings(image: Image.Image, settings: GenerationSettings, image_index: int = 0) -> Image.Image:
    """A copy of ``image`` carrying the settings as PNG text chunks (kept by gr.Image(format='png'))."""
    tagged = image.copy()
    doc = settings.to_dict() | {"image_index": image_index}
    tagged.info[PNG_A1111_KEY] = settings.a1111_line()
    tagged.info[PNG_JSON_KEY] = json.dumps(doc)
    return tagged


def read_settings(path_or_image) -> dict | None:
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    raw = image.info.get(PNG_JSON_KEY)
    return json.loads(raw) if raw else None
