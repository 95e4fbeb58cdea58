"""Tiny seeded Stable Diffusion components for tests (CPU, no network).

Shaped like diffusers' own ``get_dummy_components()``: a 2-level UNet, a 2-layer CLIP
text encoder with a tokenizer built from a handful of words, a 2-level VAE. Every
module is created under a fixed seed, so two calls give identical weights.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_WORDS = ["a", "red", "blue", "green", "circle", "square", "triangle", "photo", "of", "cat", "dog"]


def make_tiny_tokenizer(max_length: int = 16) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over byte-level characters plus whole-word merges for TINY_WORDS."""
    from shapesworld.tokenizer import build_clip_tokenizer_files

    folder = tempfile.mkdtemp(prefix="tiny-tok-")
    vocab_path, merges_path = build_clip_tokenizer_files(TINY_WORDS, folder)
    return CLIPTokenizer(vocab_path, merges_path, model_max_length=max_length)


def make_tiny_components(prediction_type: str = "epsilon", seed: int = 0, zero_snr: bool = False) -> dict:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=2,
        attention_head_dim=2,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    )
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=16,
            intermediate_size=32,
            layer_norm_eps=1e-05,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
        rescale_betas_zero_snr=zero_snr,
        timestep_spacing="trailing" if zero_snr else "leading",
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def save_tiny_model(folder: str, **kwargs) -> str:
    """Write the tiny components as a diffusers-format model folder (what trainers read)."""
    from diffusers import StableDiffusionPipeline

    components = make_tiny_components(**kwargs)
    components.pop("image_encoder")
    StableDiffusionPipeline(**components, requires_safety_checker=False).save_pretrained(folder)
    return folder


def write_noise_imagefolder(folder, count: int, size: tuple[int, int], captions: list[str], seed: int) -> str:
    """An imagefolder of random-pixel PNGs with metadata.jsonl captions (cycled)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
        for i in range(count):
            name = f"{i:02d}.png"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(os.path.join(folder, name))
            f.write(json.dumps({"file_name": name, "text": captions[i % len(captions)]}) + "\n")
    return str(folder)


def train_env(tmp_path, **extra) -> dict:
    """Environment for a trainer subprocess: one thread, offline, no real token, private HF_HOME."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("HF_TOKEN", None)
    env.update(extra)
    return env


def make_tiny_clip_guide(seed: int = 0, image_size: int = 8, projection_dim: int = 8):
    """A random tiny CLIP guide (pipelines.guidance_gradient.ClipGuide): 2-layer vision and text
    towers with projections, built in code (no download), OpenAI CLIP's mean/std."""
    from transformers import (CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection)
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from pipelines.guidance_gradient import ClipGuide

    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(seed)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        image_size=image_size, patch_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=projection_dim))
    torch.manual_seed(seed + 1)
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length, projection_dim=projection_dim))
    return ClipGuide(vision, text, tokenizer, image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, model_id="tiny-random-clip")


def tiny_inpaint_unet(seed: int = 0) -> UNet2DConditionModel:
    """The tiny UNet of testkit/tiny.py with 9 input channels (latents, mask, masked-image latents)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=2, attention_head_dim=2,
    )


def tiny_ip_adapter(unet, image_embed_dim=8):
    """A random IP-Adapter state dict in the original layout (image_proj + ip_adapter), as load_ip_adapter reads."""
    gen = torch.Generator().manual_seed(5)
    cross = unet.config.cross_attention_dim
    image_proj = {"proj.weight": torch.randn(4 * cross, image_embed_dim, generator=gen) * 0.3,
                  "proj.bias": torch.zeros(4 * cross), "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    ip_adapter, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        for kind in ("to_k_ip", "to_v_ip"):
            ip_adapter[f"{key_id}.{kind}.weight"] = torch.randn(hidden, cross, generator=gen) * 0.3
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}
