"""Inpainting on the pipeline's one loop: regenerate the masked region of an image, keep the rest.

Two methods, both a ``start=`` for ``TracingStableDiffusionPipeline.iter_steps`` (the traced loop,
any registry scheduler, any guidance method), chosen by the UNet:

- **blend** (any 4-channel UNet; Lugmayr et al. 2022's "known region" step without RePaint's
  resampling, as diffusers' ``StableDiffusionInpaintPipeline`` does for 4-channel UNets): after every
  scheduler step the known region (mask 0) is replaced by the forward-noised original at the next
  timestep, x_{t-1} <- (1 - m) * q_sample(z_0, eps, t_{i+1}) + m * x_{t-1} (the noise eps drawn once,
  at the start; at the last step z_0 itself). The model only ever denoises the unknown region
  (mask 1); the seam is whatever the model makes of the noised border.
- **unet** (a 9-channel inpainting UNet, as SD 1.5 inpainting, Rombach et al. 2022 Sec. 4.5): the
  UNet input is [x_t, m, E(image * (m < 0.5))] along channels; no blending, the model itself
  keeps the known region.

Same RNG order as diffusers (VAE posterior draw of the image for blending or strength < 1, the
noise, then the masked image's draw), so a seed gives diffusers' image (tests/pipelines/test_inpaint.py).
``strength`` < 1 starts from q_sample(z_0, eps, t ~ strength * T) on the grid's tail, as img2img.
"""
from __future__ import annotations

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from .forward import encode_image, q_sample
from .img2img import check_strength, preprocess, run_from, strength_timesteps

METHODS = ("blend", "unet")
INPAINT_UNET_CHANNELS = 9  # latents (4) + mask (1) + masked-image latents (4)


def unet_method(unet) -> str:
    """The method a UNet supports: "unet" for a 9-channel inpainting UNet, "blend" otherwise."""
    return "unet" if unet.config.in_channels == INPAINT_UNET_CHANNELS else "blend"


def check_method(unet, method: str | None) -> str:
    """``method`` (None: the UNet's own) checked against the UNet: blending needs a UNet that
    takes plain latents, "unet" needs the 9-channel inpainting UNet."""
    own = unet_method(unet)
    if method is None:
        return own
    if method not in METHODS:
        raise ValueError(f"method {method!r} must be one of {list(METHODS)} (or None: the model's own, {own!r})")
    if method != own:
        why = ("this UNet takes 9 input channels (an inpainting model): it inpaints with its own mask channels"
               if own == "unet" else
               f"this UNet takes {unet.config.in_channels} input channels; 'unet' needs a 9-channel inpainting UNet "
               "(--model sd15-inpaint)")
        raise ValueError(f"method {method!r} does not fit this model: {why}; use method={own!r}")
    return method


def mask_processor(pipe) -> VaeImageProcessor:
    """diffusers' mask processor: grayscale, [0, 1] (not normalized), binarized at 0.5."""
    return VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor, do_normalize=False, do_binarize=True,
                             do_convert_grayscale=True)


def check_mask(mask: torch.Tensor) -> torch.Tensor:
    """A binarized (B, 1, H, W) mask must have something to repaint and something to keep."""
    covered = float(mask.float().mean())
    if covered == 0.0:
        raise ValueError("mask is empty: paint (white, 1) the region to regenerate; black (0) is kept")
    if covered == 1.0:
        raise ValueError("mask covers the whole image: nothing is kept, so this is text-to-image; leave some of the "
                         "image black (0) or use Generate / img2img")
    return mask


def _encode_like_diffusers(pipe, image: torch.Tensor, batch: int, generator) -> torch.Tensor:
    """diffusers' inpaint ``_encode_vae_image`` + repeat: one posterior draw per *input* image (a
    generator list: its first ones), repeated to ``batch``."""
    if isinstance(generator, list):
        generator = generator[: image.shape[0]]
    z = encode_image(pipe, image, image.shape[0], generator)
    return z.repeat(batch // z.shape[0], 1, 1, 1)


class InpaintStart:
    """``iter_steps(start=...)`` for inpainting; also the loop's two inpainting hooks:
    ``model_input`` (extra UNet channels: the 9-channel method) and ``after_step`` (blending).

    ``image``: (B, 3, H, W) in [-1, 1]; ``mask``: (B, 1, H, W) in {0, 1} (1 = regenerate), both as
    ``preprocess_inputs`` makes them. After the call: ``z0`` (image latents; None for the 9-channel
    method at strength 1, which never encodes it), ``noise``, ``mask_latent`` (1, 1, h, w),
    ``masked_image_latents``, ``timesteps``.
    """

    def __init__(self, image: torch.Tensor, mask: torch.Tensor, strength: float = 1.0, method: str | None = None):
        self.image, self.mask = image, check_mask(mask)
        self.strength = check_strength(strength)
        self.method = method
        self.z0 = self.noise = self.mask_latent = self.masked_image_latents = self.timesteps = None
        self._sched = None

    def __call__(self, pipe, sched, timesteps, num_inference_steps, batch, dtype, device, generator):
        self.method = check_method(pipe.unet, self.method)
        check_strength(self.strength, num_inference_steps)
        timesteps, steps = strength_timesteps(sched, num_inference_steps, self.strength)
        full = self.strength == 1.0
        image = self.image.to(device=device, dtype=dtype)
        h, w = image.shape[-2] // pipe.vae_scale_factor, image.shape[-1] // pipe.vae_scale_factor
        if self.method == "blend" or not full:
            self.z0 = _encode_like_diffusers(pipe, image, batch, generator)
        channels = pipe.vae.config.latent_channels
        noise = randn_tensor((batch, channels, h, w), generator=generator, device=device, dtype=dtype)
        latents = noise * sched.init_noise_sigma if full else q_sample(sched, self.z0, noise, timesteps[:1].repeat(batch))
        # the masked image's latents (drawn even for blending: diffusers does, and the RNG order is the contract)
        mask = self.mask.to(device=device, dtype=dtype)
        masked = _encode_like_diffusers(pipe, image * (mask < 0.5), batch, generator)
        self.mask_latent = torch.nn.functional.interpolate(mask, size=(h, w))  # nearest, as diffusers
        if self.mask_latent.shape[0] < batch:
            self.mask_latent = self.mask_latent.repeat(batch // self.mask_latent.shape[0], 1, 1, 1)
        self.masked_image_latents, self.noise, self.timesteps, self._sched = masked, noise, timesteps, sched
        return timesteps, steps, latents

    def model_input(self, latent_model_input: torch.Tensor, num_branches: int) -> torch.Tensor:
        """The 9-channel UNet's input: [x_t, m, E(masked image)] per guidance branch."""
        if self.method != "unet":
            return latent_model_input
        extra = torch.cat([self.mask_latent, self.masked_image_latents], dim=1)
        return torch.cat([latent_model_input, torch.cat([extra] * num_branches)], dim=1)

    def after_step(self, i: int, latents: torch.Tensor) -> torch.Tensor:
        """Blending: the known region set to the original noised to the next timestep (z_0 at the end)."""
        if self.method != "blend":
            return latents
        known = self.z0
        if i < len(self.timesteps) - 1:
            known = self._sched.add_noise(known, self.noise, torch.tensor([self.timesteps[i + 1]]))
        return (1 - self.mask_latent) * known + self.mask_latent * latents


def preprocess_inputs(pipe, image, mask_image, height: int | None = None, width: int | None = None):
    """(image (B, 3, H, W) in [-1, 1], mask (B, 1, H, W) in {0, 1}) as diffusers' inpaint pipeline
    makes them (sides rounded down to the VAE's multiple; the mask binarized at 0.5). The mask is
    resized to the image's size by the processor."""
    if mask_image is None:
        raise ValueError("mask_image is required for inpainting (white = regenerate, black = keep)")
    pixels = preprocess(pipe, image, height, width).to(dtype=torch.float32)
    mask = mask_processor(pipe).preprocess(mask_image, height=pixels.shape[-2], width=pixels.shape[-1])
    return pixels, mask


def inpaint(pipe, image, mask_image, strength: float = 1.0, *, method: str | None = None, iterate: bool = False,
            **kwargs):
    """Run (or with ``iterate=True``, step through) ``pipe.iter_steps`` repainting the white part
    of ``mask_image`` in ``image``; returns the output (its ``start`` is in ``out.inpaint``).

    ``method``: "blend" or "unet" (None: the UNet's own, see ``unet_method``). ``kwargs``:
    ``iter_steps``' arguments (prompt, num_inference_steps, scheduler, guidance, record, generator...);
    height / width (default: the image's size) resize image and mask.
    """
    check_strength(strength)
    check_method(pipe.unet, method)
    pixels, mask = preprocess_inputs(pipe, image, mask_image, kwargs.pop("height", None), kwargs.pop("width", None))
    start = InpaintStart(pixels, mask, strength, method)
    result = run_from(pipe, start, pixels, kwargs, iterate)
    if iterate:
        return result
    if not isinstance(result, tuple):
        result.inpaint = start
    return result


def region_errors(records, start: InpaintStart) -> list[dict]:
    """Per recorded step, mean |x0_pred - z_0| over the known region (mask 0) and over the unknown
    one (mask 1), in latent space: how well the known region is kept (blending: it re-enters at
    every step; the 9-channel UNet: it must reproduce it) and how far the repainted region departs.
    ``start.z0`` is needed (the 9-channel method at strength 1 never encodes the image: pass
    ``z0=`` set by the caller, e.g. ``encode_image(..., sample=False)``)."""
    if start.z0 is None:
        raise ValueError("start.z0 is None: encode the image first (the 9-channel method at strength 1 skips it)")
    m = start.mask_latent[:1].cpu().float()
    z0 = start.z0[:1].cpu().float()
    known, unknown = (1 - m).sum().clamp_min(1), m.sum().clamp_min(1)
    out = []
    for r in records:
        err = (r.x0_guided[:1].float() - z0).abs().mean(dim=1, keepdim=True)
        out.append({"step": r.step, "timestep": r.timestep, "known": float((err * (1 - m)).sum() / known),
                    "unknown": float((err * m).sum() / unknown)})
    return out
