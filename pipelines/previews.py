"""Latent -> RGB previews: fitted linear factors, TAESD, or the full VAE. Returns PIL images.

Latents here are in the UNet's space (VAE latents times ``vae.config.scaling_factor``), the same
space as the pipeline's x_t (VP form) and x0 predictions.

(a) linear: rgb = [z, 1] @ F with F of shape (C + 1, 3) (last row = bias), output in [-1, 1];
    one pixel per latent pixel. SD 1.x factors are the published ones (ComfyUI); other models
    ship theirs in ``preview_factors.json`` next to model_index.json, fitted by least squares
    against VAE decodes (``fit_linear_factors``).
(b) taesd: ``diffusers.AutoencoderTiny`` (Bohan, "Tiny AutoEncoder for Stable Diffusion"), only
    when the caller has one.
(c) vae: the model's own decoder (exact, slowest).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

PREVIEW_DECODERS = ("linear", "taesd", "vae")
FACTORS_FILE = "preview_factors.json"

# Published SD 1.x latent -> RGB factors (rows: latent channels; columns: R, G, B), zero bias.
SD15_LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
        [0.0, 0.0, 0.0],
    ]
)


def linear_decode(latents: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, 3, h, w) RGB in about [-1, 1]: rgb = z^T F[:C] + F[C]."""
    factors = factors.to(device=latents.device, dtype=latents.dtype)
    weight, bias = factors[:-1], factors[-1]  # (C, 3), (3,)
    rgb = torch.einsum("bchw,cr->brhw", latents, weight)
    return rgb + bias.view(1, 3, 1, 1)


def _decoded_targets(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode of UNet-space latents, average-pooled to the latent grid: (B, 3, h, w)."""
    images = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    factor = images.shape[-1] // latents.shape[-1]
    return torch.nn.functional.avg_pool2d(images, factor) if factor > 1 else images


@torch.no_grad()
def fit_linear_factors(vae, latents_or_images: torch.Tensor) -> torch.Tensor:
    """Least-squares latent -> RGB factors, shape (C + 1, 3) including the bias row.

    Given latents (B, C, h, w) in UNet space: targets are their VAE decodes pooled to (h, w).
    Given images (B, 3, H, W) in [-1, 1]: they are encoded (posterior mean, scaled) first, and the
    images themselves (pooled) are the targets. Solves min_F ||[Z, 1] F - RGB||^2 in float64.
    """
    x = latents_or_images.to(device=vae.device, dtype=vae.dtype)
    if x.shape[1] == 3 and vae.config.latent_channels != 3:
        latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        factor = x.shape[-1] // latents.shape[-1]
        targets = torch.nn.functional.avg_pool2d(x, factor) if factor > 1 else x
    else:
        latents, targets = x, _decoded_targets(vae, x)
    z = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double().cpu()  # (N, C)
    rgb = targets.permute(0, 2, 3, 1).reshape(-1, 3).double().cpu()  # (N, 3)
    design = torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], dim=1)  # (N, C + 1)
    solution = torch.linalg.lstsq(design, rgb).solution  # (C + 1, 3)
    return solution.float()


def save_linear_factors(factors: torch.Tensor, path: str) -> str:
    """Write (C + 1, 3) factors to ``path`` (a folder gets ``preview_factors.json``); returns the file.

    Format: {"factors": [[r, g, b] per latent channel..., [r, g, b] bias], "layout": ...}.
    """
    if os.path.isdir(path):
        path = os.path.join(path, FACTORS_FILE)
    data = {
        "factors": factors.detach().cpu().tolist(),
        "layout": "rows: latent channels, then the bias; columns: R, G, B; rgb in [-1, 1] = [z, 1] @ factors",
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    return path


def load_linear_factors(model_dir: str) -> torch.Tensor | None:
    """Read ``preview_factors.json`` from a model folder: (C + 1, 3) tensor, or None if absent."""
    path = os.path.join(model_dir, FACTORS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    factors = torch.tensor(data["factors"], dtype=torch.float32)
    if factors.ndim != 2 or factors.shape[1] != 3 or factors.shape[0] < 2:
        raise ValueError(f"{path}: 'factors' must be (C + 1) rows of 3 numbers, got shape {tuple(factors.shape)}")
    return factors


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> list of RGB PIL images."""
    array = ((images.detach().float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


@torch.no_grad()
def decode_preview(latents: torch.Tensor, decoder: str = "linear", *, factors=None, vae=None, taesd=None) -> list[Image.Image]:
    """Preview images for UNet-space latents with one of PREVIEW_DECODERS."""
    if decoder == "linear":
        if factors is None:
            if latents.shape[1] != 4:
                raise ValueError(f"decoder='linear' needs factors for {latents.shape[1]}-channel latents")
            factors = SD15_LATENT_RGB_FACTORS
        return to_pil(linear_decode(latents.float(), factors))
    if decoder == "taesd":
        if taesd is None:
            raise ValueError("decoder='taesd' needs an AutoencoderTiny (pass preview_taesd=...)")
        z = latents.to(device=taesd.device, dtype=taesd.dtype) / taesd.config.scaling_factor
        return to_pil(taesd.decode(z, return_dict=False)[0])
    if decoder == "vae":
        z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        return to_pil(vae.decode(z, return_dict=False)[0])
    raise ValueError(f"preview_decoder={decoder!r} is not allowed; valid: {list(PREVIEW_DECODERS)}")
