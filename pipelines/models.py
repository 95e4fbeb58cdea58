"""Registry of base models: the embedded tiny model and Hub ids for GPU use.

``load_pipeline`` accepts registry ids only -- never a user-supplied path or Hub id -- so a
request can't make the server read arbitrary folders or download arbitrary repositories.

The registry itself imports neither torch nor diffusers: ``app.py --help`` reads it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("tiny-shapes", "sd15", "sd2")
EMBEDDED_MODEL = "tiny-shapes"  # what the app loads without CUDA, and every test
GPU_DEFAULT_MODEL = "sd15"  # what the app loads with CUDA


@dataclass(frozen=True)
class ModelSpec:
    source: str  # a folder relative to the repository root (local=True) or a Hub repository id
    family: str  # one of FAMILIES: decides LoRA compatibility and preview factors
    resolution: int  # native image size in pixels (square)
    default_scheduler: str  # a pipelines.schedulers registry name
    default_steps: int
    default_guidance: float
    local: bool = False
    note: str = ""


MODELS: dict[str, ModelSpec] = {
    # trained here by train/train_base.py with zero terminal SNR (rescale_betas_zero_snr), v-prediction
    # and DDIM "trailing" timesteps (Lin et al. 2024): with SD's default schedule the noisiest training
    # input still leaks the layout and the model ignores position words (README "The embedded model").
    # Guidance 3: where it reads best (BENCHMARKS.md "Embedded model": shape 0.935 at 3, 0.84 at 7.5),
    # and where the style LoRAs keep their colors and shapes ("Embedded style LoRAs").
    "tiny-shapes": ModelSpec("models/tiny-shapes", "tiny-shapes", 32, "DDIM", 25, 3.0, local=True,
                             note="embedded default; runs on CPU"),
    "sd15": ModelSpec("stable-diffusion-v1-5/stable-diffusion-v1-5", "sd15", 512, "DPM++ 2M Karras", 30, 7.5),
    # SD 1.5 inpainting (Rombach et al. 2022, Sec. 4.5): a UNet with 9 input channels (latents, mask,
    # masked-image latents), fine-tuned from SD 1.5; inpainting only (/inpaint, pipelines/inpaint.py):
    # text-to-image and img2img are refused by the pipeline. Never downloaded in tests.
    "sd15-inpaint": ModelSpec("stable-diffusion-v1-5/stable-diffusion-inpainting", "sd15", 512, "DPM++ 2M Karras",
                              30, 7.5, note="9-channel inpainting UNet: /inpaint only"),
    "sd14": ModelSpec("CompVis/stable-diffusion-v1-4", "sd15", 512, "DPM++ 2M Karras", 30, 7.5),
    "dreamshaper-8": ModelSpec("Lykon/dreamshaper-8", "sd15", 512, "DPM++ 2M Karras", 25, 7.0,
                               note="SD 1.5 fine-tune"),
    "sd21-base": ModelSpec("stabilityai/stable-diffusion-2-1-base", "sd2", 512, "DPM++ 2M Karras", 30, 7.5,
                           note="epsilon prediction"),
    "sd21": ModelSpec("stabilityai/stable-diffusion-2-1", "sd2", 768, "DPM++ 2M Karras", 30, 7.5,
                      note="v-prediction"),
}


def model_names() -> list[str]:
    return list(MODELS)


def model_spec(model_id: str) -> ModelSpec:
    if model_id not in MODELS:
        raise ValueError(f"model_id={model_id!r} is not a registered model; valid ids: {model_names()}")
    return MODELS[model_id]


def model_family(model_id: str) -> str:
    return model_spec(model_id).family


def model_source(model_id: str) -> str:
    """Absolute folder for local models, the Hub id otherwise."""
    spec = model_spec(model_id)
    return os.path.join(ROOT, spec.source) if spec.local else spec.source


def load_pipeline(model_id: str, device="cpu", dtype=None):
    """Load registry model ``model_id`` as a TracingStableDiffusionPipeline on ``device``
    (``dtype``: a torch dtype, float32 by default).

    Preview factors: the model folder's ``preview_factors.json`` when it has one, else the
    published SD 1.x factors for the SD families (SD 2.x shares SD 1.x's VAE latent space).
    """
    import torch

    from .previews import SD15_LATENT_RGB_FACTORS, load_linear_factors
    from .tracing import TracingStableDiffusionPipeline

    spec = model_spec(model_id)
    source = model_source(model_id)
    if spec.local and not os.path.isfile(os.path.join(source, "model_index.json")):
        raise FileNotFoundError(
            f"model {model_id!r}: no diffusers model in {source} (train it: python train/train_base.py)"
        )
    pipe = TracingStableDiffusionPipeline.from_pretrained(source, dtype=dtype or torch.float32)
    pipe = pipe.to(device)
    factors = load_linear_factors(source) if spec.local else None
    if factors is None and spec.family in ("sd15", "sd2"):
        factors = SD15_LATENT_RGB_FACTORS.clone()
    pipe.preview_factors = factors
    if spec.local and os.path.isfile(os.path.join(source, "classifier", "config.json")):  # classifier guidance
        from .classifier import load_classifier

        pipe.classifier = load_classifier(os.path.join(source, "classifier"), device)
    return pipe
