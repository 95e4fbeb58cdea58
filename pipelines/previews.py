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

Which one streams by default is decided per model (``choose_preview_decoder``): the full VAE when
one decode costs under ``CHEAP_DECODE_FRACTION`` of a denoising step or when the latent is so small
(<= ``LEGIBLE_LINEAR_SIDE`` latent pixels a side, the embedded 8x8 model) that a linear preview,
one pixel per latent pixel, cannot show the picture; else TAESD when the pipeline has one, else linear.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

PREVIEW_DECODERS = ("linear", "taesd", "vae")
FACTORS_FILE = "preview_factors.json"
CHEAP_DECODE_FRACTION = 0.10  # a VAE decode under 10% of a step's cost adds < 10% to a run previewing every step
LEGIBLE_LINEAR_SIDE = 16  # a linear preview of an 8x8 latent is 8x8 colored blocks: no shape can be read

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


# ------------------------------------------------------------------------------ per-model choice


@dataclass(frozen=True)
class PreviewChoice:
    """The decoders a model can use, the one it streams with, and why (a sentence for the page)."""

    available: tuple[str, ...]
    default: str
    reason: str


def available_preview_decoders(pipe) -> tuple[str, ...]:
    """Decoders that work for ``pipe``: linear when it has factors (or SD's 4 latent channels),
    taesd only when an AutoencoderTiny is attached, vae always."""
    available = []
    channels = int(pipe.vae.config.latent_channels)
    if getattr(pipe, "preview_factors", None) is not None or channels == 4:
        available.append("linear")
    if getattr(pipe, "preview_taesd", None) is not None:
        available.append("taesd")
    available.append("vae")
    return tuple(available)


def choose_preview_decoder(available, decode_seconds: float, step_seconds: float, latent_side: int = 64,
                           cheap_fraction: float = CHEAP_DECODE_FRACTION) -> PreviewChoice:
    """The full VAE if ``decode_seconds < cheap_fraction * step_seconds`` or ``latent_side <=
    LEGIBLE_LINEAR_SIDE``; else taesd if available, else linear (else the VAE, the only one left)."""
    available = tuple(available)
    share = decode_seconds / step_seconds if step_seconds > 0 else float("inf")
    cost = f"a VAE decode costs {share:.0%} of a denoising step"
    if "vae" in available and share < cheap_fraction:
        return PreviewChoice(available, "vae", f"exact VAE previews: {cost}")
    if "vae" in available and latent_side <= LEGIBLE_LINEAR_SIDE:
        return PreviewChoice(available, "vae", f"VAE previews: a {latent_side}x{latent_side} latent is unreadable "
                                               f"as linear colors ({cost})")
    if "taesd" in available:
        return PreviewChoice(available, "taesd", f"TAESD previews: {cost}, the tiny autoencoder is much cheaper")
    if "linear" in available:
        return PreviewChoice(available, "linear", f"linear latent->RGB previews: {cost} and no TAESD is loaded")
    return PreviewChoice(available, "vae", f"VAE previews (no other decoder fits this model): {cost}")


def _seconds(fn, repeats: int, cuda: bool) -> float:
    """Best of ``repeats`` timed calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def time_decode_and_step(pipe, repeats: int = 2) -> tuple[float, float]:
    """(seconds per VAE decode of one native-size latent, seconds per CFG denoising step).

    The step is one UNet call at batch 2 (unconditional + conditional), as the pipeline runs it.
    """
    unet, vae = pipe.unet, pipe.vae
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    device, dtype = unet.device, unet.dtype
    latents = torch.zeros(1, unet.config.in_channels, h, w, device=device, dtype=dtype)
    context = torch.zeros(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    timestep = torch.tensor(500, device=device)
    cuda = device.type == "cuda"
    step = _seconds(lambda: unet(latents.repeat(2, 1, 1, 1), timestep, encoder_hidden_states=context), repeats, cuda)
    z = torch.zeros(1, vae.config.latent_channels, h, w, device=vae.device, dtype=vae.dtype)
    decode = _seconds(lambda: vae.decode(z, return_dict=False), repeats, cuda)
    return decode, step


def preview_choice_for(pipe) -> PreviewChoice:
    """Measure ``pipe`` once and pick its streaming preview decoder (see choose_preview_decoder)."""
    decode, step = time_decode_and_step(pipe)
    size = pipe.unet.config.sample_size
    side = min(size) if not isinstance(size, int) else size
    return choose_preview_decoder(available_preview_decoders(pipe), decode, step, side)
