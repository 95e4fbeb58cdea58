"""img2img (SDEdit, Meng et al. 2022): noise an image to x_t at t ~ strength * T, then run the usual
reverse process from there, on the tail of the sampler's grid.

The loop is ``TracingStableDiffusionPipeline.iter_steps`` (traced, any registry scheduler, any
guidance method); this module only supplies its ``start``: diffusers'
``StableDiffusionImg2ImgPipeline.get_timesteps`` + ``prepare_latents``, same RNG order (VAE posterior
draw, then the noise), so a seed gives diffusers' image. Cost: int(strength * steps) of the steps'
model calls (``bench/bench_img2img.py``).
"""
from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from .forward import encode_image, q_sample


def check_strength(strength, num_inference_steps: int | None = None) -> float:
    """strength in (0, 1]; with ``num_inference_steps``, at least one step must remain."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength {strength!r} must be a number in (0, 1] (1 = start from pure noise)")
    if num_inference_steps is not None and int(num_inference_steps * float(strength)) < 1:
        raise ValueError(f"strength {strength!r} x {num_inference_steps} steps leaves no step to run: raise strength "
                         f"to at least {1 / num_inference_steps:.3g} or the steps")
    return float(strength)


def strength_timesteps(scheduler, num_inference_steps: int, strength: float):
    """The tail of the grid img2img runs: (timesteps, steps run), as diffusers' ``get_timesteps``
    (the scheduler's begin index set, so its step index starts there)."""
    init = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, num_inference_steps - t_start


class SDEditStart:
    """``iter_steps(start=...)``: x_t = q_sample(z_0 = E(image), eps, t_first) on the grid's tail.

    ``image``: (B, 3, H, W) in [-1, 1] (``pipe.image_processor.preprocess`` output).
    After the call, ``z0``, ``noise`` and ``timestep`` hold what was used (inpainting reuses them).
    """

    def __init__(self, image: torch.Tensor, strength: float):
        self.image = image
        self.strength = check_strength(strength)
        self.z0 = self.noise = self.timestep = None

    def __call__(self, pipe, sched, timesteps, num_inference_steps, batch, dtype, device, generator):
        check_strength(self.strength, num_inference_steps)
        timesteps, steps = strength_timesteps(sched, num_inference_steps, self.strength)
        z0 = encode_image(pipe, self.image.to(device=device, dtype=dtype), batch, generator)
        noise = randn_tensor(z0.shape, generator=generator, device=device, dtype=dtype)
        self.z0, self.noise, self.timestep = z0, noise, timesteps[:1]
        return timesteps, steps, q_sample(sched, z0, noise, timesteps[:1].repeat(batch))


def preprocess(pipe, image, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """PIL / array / tensor -> (B, 3, H, W) in [-1, 1], sides rounded down to the VAE's multiple,
    as diffusers' img2img pipeline does. Refuses images smaller than one latent pixel."""
    if image is None:
        raise ValueError("image is required for img2img (a PIL image or a (B, 3, H, W) tensor in [-1, 1])")
    size = getattr(image, "size", None)
    if isinstance(size, tuple) and min(size) < pipe.vae_scale_factor:
        raise ValueError(f"image size {size[0]}x{size[1]} is too small: each side must be at least "
                         f"{pipe.vae_scale_factor} px")
    return pipe.image_processor.preprocess(image, height=height, width=width)


def img2img(pipe, image, strength: float = 0.6, *, iterate: bool = False, **kwargs):
    """Run (or with ``iterate=True``, step through) ``pipe.iter_steps`` from ``image`` at ``strength``.

    ``kwargs``: ``iter_steps``' arguments (prompt, num_inference_steps, scheduler, guidance,
    record, generator, ...); height / width come from the image.
    """
    check_strength(strength)
    pixels = preprocess(pipe, image)
    return run_from(pipe, SDEditStart(pixels, strength), pixels, kwargs, iterate)


def run_from(pipe, start, pixels: torch.Tensor, kwargs: dict, iterate: bool):
    """``pipe.iter_steps`` from ``start`` at the size of ``pixels``: the step stream (``iterate``) or
    its last item (the output). Shared by img2img and inpainting."""
    kwargs.update(height=pixels.shape[-2], width=pixels.shape[-1], start=start)
    steps = pipe.iter_steps(**kwargs)
    if iterate:
        return steps
    result = None
    for result in steps:
        pass
    return result
