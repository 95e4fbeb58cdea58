"""The forward process q(x_t | x_0), shared by the timestep explorer, img2img and inpainting.

DDPM (Ho et al. 2020, eq. 4): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. Sigma-space
samplers (Euler & co., Karras et al. 2022) write the same point as x_0 + sigma_t eps with
sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t); each diffusers scheduler's ``add_noise`` knows its
own form, so ``q_sample`` defers to it. SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021).
"""
from __future__ import annotations

import numpy as np
import torch


def encode_image(pipe, image: torch.Tensor, batch_size: int = 1, generator=None, sample: bool = True) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> UNet latents z_0 = scaling_factor * E(x), as diffusers'
    img2img pipeline makes them: a draw from the VAE posterior (``generator``; a list: one per
    image, the image repeated to ``batch_size``), or its mean with ``sample=False``. A batch of
    one image is repeated to ``batch_size``."""
    vae = pipe.vae
    image = image.to(device=vae.device, dtype=vae.dtype)
    if isinstance(generator, list):
        if len(generator) != batch_size:
            raise ValueError(f"generator is a list of {len(generator)} generators; the batch has {batch_size} images")
        if image.shape[0] < batch_size:
            image = torch.cat([image] * (batch_size // image.shape[0]))
        dists = [vae.encode(image[i:i + 1]).latent_dist for i in range(batch_size)]
        z0 = torch.cat([d.sample(g) if sample else d.mean for d, g in zip(dists, generator)])
    else:
        dist = vae.encode(image).latent_dist
        z0 = dist.sample(generator) if sample else dist.mean
    z0 = vae.config.scaling_factor * z0
    if z0.shape[0] < batch_size:
        if batch_size % z0.shape[0]:
            raise ValueError(f"cannot repeat {z0.shape[0]} images to a batch of {batch_size}")
        z0 = torch.cat([z0] * (batch_size // z0.shape[0]))
    return z0


def q_sample(scheduler, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) at training timestep(s) ``t`` in ``scheduler``'s own parametrization
    (VP for DDPM/DDIM/DPM-Solver, x0 + sigma eps for the sigma-space ones): its ``add_noise``."""
    t = torch.as_tensor(t).reshape(-1)
    if t.numel() == 1 and x0.shape[0] > 1:
        t = t.repeat(x0.shape[0])
    return scheduler.add_noise(x0, noise, t.to(x0.device))


def snr(alpha_bar) -> np.ndarray:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t); inf at alpha_bar = 1, 0 at alpha_bar = 0."""
    ab = np.asarray(alpha_bar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(ab >= 1.0, np.inf, ab / np.maximum(1.0 - ab, 0.0))
