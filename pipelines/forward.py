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


def snr(alpha_bar):
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021), in float64; inf at alpha_bar = 1,
    0 at alpha_bar = 0. The one place it is computed: the schedule plots (log-SNR, sigma = SNR^-1/2),
    the forward-process tool and Min-SNR loss weights in training. A torch tensor in: a float64
    tensor out (on its device); anything else: a numpy array."""
    if isinstance(alpha_bar, torch.Tensor):
        ab = alpha_bar.to(torch.float64)
        return torch.where(ab >= 1.0, torch.full_like(ab, torch.inf), ab / (1.0 - ab).clamp(min=0.0))
    ab = np.asarray(alpha_bar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(ab >= 1.0, np.inf, ab / np.maximum(1.0 - ab, 0.0))


# --------------------------------------------------------------------------- the training schedule


def training_betas(config) -> np.ndarray:
    """The training betas of a scheduler config, in float64 (diffusers computes them in float32).

    linear: linspace(beta_start, beta_end); scaled_linear (SD): linspace(sqrt(start), sqrt(end))^2;
    squaredcos_cap_v2: Nichol & Dhariwal 2021 cosine schedule, beta capped at 0.999;
    then, if ``rescale_betas_zero_snr``: Lin et al. 2024, Alg. 1 (shift and scale sqrt(alpha_bar)
    so that it ends at exactly 0 and keeps its first value).
    """
    config = dict(config)
    n = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64)
    elif kind == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    elif kind == "squaredcos_cap_v2":
        def alpha_bar(u):
            return np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2

        i = np.arange(n, dtype=np.float64)
        betas = np.minimum(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999)
    else:
        raise ValueError(f"beta_schedule={kind!r} is not supported for schedule plots")
    if config.get("rescale_betas_zero_snr", False):
        root = np.sqrt(np.cumprod(1.0 - betas))
        first, last = root[0], root[-1]
        root = (root - last) * first / (first - last)
        ab = root**2
        betas = 1.0 - np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return betas


def zero_snr_betas(config) -> np.ndarray:
    """Zero-terminal-SNR betas for classes without ``rescale_betas_zero_snr``, with the final
    alpha_bar lifted from 0 to 2^-24 (what diffusers' Euler / DPM-Solver / UniPC do) so that
    sigma_max = sqrt((1 - 2^-24) / 2^-24) ~ 4096 stays finite for sigma-space samplers."""
    config = dict(config, rescale_betas_zero_snr=True)
    betas = training_betas(config)
    alpha_bar = np.cumprod(1.0 - betas)
    betas[-1] = 1.0 - 2.0**-24 / alpha_bar[-2]
    return betas


# --------------------------------------------------------------------------- the schedule flaw

SD15_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                 "beta_end": 0.012}


def terminal_alpha_bars(config: dict | None = None) -> dict[str, float]:
    """alpha_bar_T of a schedule (default SD 1.5's scaled-linear) as trained, and after Lin et al.
    2024's Alg. 1 rescale to zero terminal SNR (exactly 0)."""
    config = dict(config or SD15_SCHEDULE)
    out = {}
    for name, zero in (("default", False), ("zero_snr", True)):
        out[name] = float(np.cumprod(1.0 - training_betas(dict(config, rescale_betas_zero_snr=zero)))[-1])
    return out


def low_pass(x: torch.Tensor, block: int) -> torch.Tensor:
    """Box blur at ``block`` x ``block`` (average pool, then nearest upsample): the layout and mean
    colour a model sees through the noise; the noise's std drops by ``block`` there."""
    pooled = torch.nn.functional.avg_pool2d(x, block)
    return torch.nn.functional.interpolate(pooled, size=x.shape[-2:], mode="nearest")


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per batch item over all remaining dims."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def terminal_snr_report(x0: torch.Tensor, seeds: int = 256, block: int = 8, config: dict | None = None) -> dict:
    """x_T = sqrt(alpha_bar_T) x0 + sqrt(1 - alpha_bar_T) eps (Ho et al. 2020, eq. 4) at t = T under
    a schedule (default SD 1.5's) and under its zero-terminal-SNR rescale (Lin et al. 2024), for an
    image ``x0`` (1, C, H, W) in [-1, 1].

    Returns, per schedule: alpha_bar_T, the residual sqrt(alpha_bar_T) x0, one x_T (seed 0), its
    ``low_pass``, and over ``seeds`` noise draws the Pearson correlation of the low-passed x_T with
    the low-passed x0 (mean, std) and of the image-mean of x_T with x0's mean colour (how much of
    x_T's mean colour the image explains). With alpha_bar_T = 0 both are 0 up to sampling noise.
    """
    x0 = x0.detach().double().cpu()
    if x0.dim() != 4 or x0.shape[0] != 1:
        raise ValueError(f"x0 shape {tuple(x0.shape)} must be (1, C, H, W)")
    if block < 1 or x0.shape[-1] % block or x0.shape[-2] % block:
        raise ValueError(f"block {block} must divide the image size {tuple(x0.shape[-2:])}")
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn((seeds, *x0.shape[1:]), generator=gen, dtype=torch.float64)
    x0_low = low_pass(x0, block)
    out = {"block": block, "seeds": seeds}
    for name, ab in terminal_alpha_bars(config).items():
        x_T = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps
        low = low_pass(x_T, block)
        corr = _corr(low, x0_low.expand_as(low))
        # mean colour: per-channel image means of x_T across seeds vs x0's (regression slope / noise)
        means = x_T.mean(dim=(2, 3))  # (seeds, C)
        out[name] = {
            "alpha_bar_T": ab, "sqrt_alpha_bar_T": ab ** 0.5, "snr_T": float(snr(ab)),
            "residual": (ab ** 0.5 * x0).float(), "x_T": x_T[:1].float(), "x_T_low": low[:1].float(),
            "corr_low_mean": float(corr.mean()), "corr_low_std": float(corr.std()),
            "mean_color_x0": x0.mean(dim=(2, 3))[0].tolist(),
            "mean_color_x_T": means.mean(0).tolist(),
            "mean_color_noise_std": float(means.std(0).mean()),
        }
    return out
