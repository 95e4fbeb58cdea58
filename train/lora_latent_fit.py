"""Training latents the decoder draws right (--latent_fit_steps): fit each image's latent to the image through
the frozen decoder, starting from the encoder's.

A LoRA learns the latents its training images encode to, and the picture a user sees is the decoder's
reading of what the LoRA generates. Where the encoder's map is poor, the two disagree: on the embedded
model decode(encode(x)) of a pastel image drawn 75% of the way reads the shape's color right in 33% of
images, night + pastel at full strength in 40%; a latent fitted to the same renders by gradient descent
through the decoder reads 1.00 for both (bench/lora_dial_diagnosis.py --parts inversion). So the decoder
can draw these pictures; the encoder does not map them there, and a LoRA trained on the encoder's latents
learns to generate latents the decoder draws in the wrong color.

With --latent_fit_steps K the trainer replaces the encoder's posterior mean by the latent after K Adam
steps (learning rate --latent_fit_lr) on the summed squared pixel error of decode(z) against the image;
the posterior's noise is added as before. The VAE stays frozen; only z moves. Full-strength batches of
the adapter's own style alone are not fitted on --dial runs: the VAE's decoder was fine-tuned on them
and their round trip already reads right, so those steps keep their cost (BENCHMARKS.md, "LoRA weights and
what the prompt keeps").
"""
from __future__ import annotations

import torch


def fit_latents(vae, pixel_values: torch.Tensor, start: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Latents (unscaled, like ``start``) whose decoding is nearer ``pixel_values`` (B, 3, H, W) in [-1, 1]:
    ``steps`` Adam steps from ``start``, the VAE's parameters untouched."""
    z = start.detach().clone().requires_grad_(True)
    if steps <= 0:
        return z.detach()
    opt = torch.optim.Adam([z], lr=lr)
    target = pixel_values.detach()
    with torch.enable_grad():
        for _ in range(steps):
            err = (vae.decode(z).sample.float() - target.float()).pow(2).sum() / z.shape[0]
            opt.zero_grad(set_to_none=True)
            err.backward()
            opt.step()
    for p in vae.parameters():  # the frozen VAE collects no gradient, whatever its flags
        p.grad = None
    return z.detach()
