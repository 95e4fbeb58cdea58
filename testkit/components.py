"""Larger random SD-shaped components for benchmarks (and any test that needs them): the mid-size UNet
and SD 1.5's architecture from ``testkit/configs/sd15`` (no download, random weights)."""
from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

SD15_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "sd15")


def midsize_components(seed: int = 0) -> dict:
    """Random mid-size SD-shaped components: UNet (64, 128, 128) ~6 M params, 8x8x4 latents."""
    from .tiny import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                scheduler=scheduler, safety_checker=None, feature_extractor=None, image_encoder=None)


def sd15_components(device="cpu", dtype: torch.dtype = torch.float32, tokenizer=None, scheduler_cls=DDIMScheduler,
                    seed: int = 0) -> dict:
    """SD 1.5's UNet (860 M-class), VAE and CLIP ViT-L text encoder with random weights, created directly
    on ``device`` (1 B parameters init in seconds there), and its scheduler config as ``scheduler_cls``.
    ``tokenizer``: a local stand-in for CLIP's (its special ids go into the text encoder's config, so
    pooling and padding see real tokens); None leaves the config's ids and returns no tokenizer."""
    te_config = CLIPTextConfig.from_pretrained(os.path.join(SD15_CONFIGS, "text_encoder"))
    if tokenizer is not None:
        te_config.bos_token_id, te_config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        te_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(os.path.join(SD15_CONFIGS, "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(SD15_CONFIGS, "vae")))
        text_encoder = CLIPTextModel(te_config)
    scheduler = scheduler_cls.from_config(scheduler_cls.load_config(os.path.join(SD15_CONFIGS, "scheduler")))
    return dict(unet=unet.to(dtype).eval(), vae=vae.to(dtype).eval(), text_encoder=text_encoder.to(dtype).eval(),
                tokenizer=tokenizer, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                image_encoder=None)
