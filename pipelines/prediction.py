"""Conversions between what the UNet predicts (epsilon, v, sample) and epsilon / x0.

Notation (DDPM, Ho et al. 2020; v from Salimans & Ho 2022, "Progressive Distillation"):
    a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar), sigma = b / a
    VP latent      x_vp = a x0 + b eps            (what the UNet sees)
    sigma latent   x_s  = x0 + sigma eps = x_vp / a   (Euler, LMS, Heun, DPM2, DPM++ SDE)
    v              v    = a eps - b x0
  =>  x0  = (x_vp - b eps) / a = a x_vp - b v
      eps = a v + b x_vp

``sample`` is the latent the scheduler holds (x_vp or x_s, see ``EvalPoint.sigma_space``). The
sigma-space branches use the same algebra as the diffusers schedulers (x_s - sigma eps; and for
v: x_s / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v), so x0 agrees with their
``pred_original_sample`` to float32 rounding.
"""
from __future__ import annotations

import torch

from .schedulers import EvalPoint

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _check(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r} is not supported; valid: {list(PREDICTION_TYPES)}")


def _coefficients(point: EvalPoint) -> tuple[float, float]:
    ab = point.alpha_bar
    return ab**0.5, (1.0 - ab) ** 0.5


def predicted_x0(model_output: torch.Tensor, sample: torch.Tensor, point: EvalPoint, prediction_type: str) -> torch.Tensor:
    """x0 implied by one model output at this evaluation point."""
    _check(prediction_type)
    if prediction_type == "sample":
        return model_output
    if point.sigma_space:
        s = point.sigma
        if prediction_type == "epsilon":
            return sample - s * model_output
        return model_output * (-s / (s * s + 1) ** 0.5) + sample / (s * s + 1)
    a, b = _coefficients(point)
    if prediction_type == "epsilon":
        return (sample - b * model_output) / a
    return a * sample - b * model_output


def predicted_eps(model_output: torch.Tensor, sample: torch.Tensor, point: EvalPoint, prediction_type: str) -> torch.Tensor:
    """epsilon implied by one model output (identity for epsilon models)."""
    _check(prediction_type)
    if prediction_type == "epsilon":
        return model_output
    a, b = _coefficients(point)
    x_vp = sample * point.input_scale
    if prediction_type == "v_prediction":
        return a * model_output + b * x_vp
    return (x_vp - a * model_output) / b  # sample prediction


def output_from_x0(x0: torch.Tensor, sample: torch.Tensor, point: EvalPoint, prediction_type: str) -> torch.Tensor:
    """Inverse of ``predicted_x0``: the model output that would have implied ``x0``."""
    _check(prediction_type)
    if prediction_type == "sample":
        return x0
    a, b = _coefficients(point)
    x_vp = sample * point.input_scale
    eps = (x_vp - a * x0) / b
    if prediction_type == "epsilon":
        return eps
    return a * eps - b * x0
