"""Classifier-free guidance and its variants: one small pure function each, on tensors.

Shapes: every prediction is (B, C, h, w); "per sample" reductions run over (C, h, w).
Notation: u = unconditional prediction, c = conditional, n = negative-prompt prediction,
w = guidance scale (w = 1: conditional only, no guidance), <a, b> = per-sample inner product.

The pipeline applies these in the model's native output space (epsilon or v), exactly where
diffusers applies CFG and its rescale, except APG, which the paper defines on the denoised
prediction x0 (the pipeline converts there and back). ``GuidanceConfig`` collects method + knobs
and validates them; ``Guider`` holds the per-generation state (APG's momentum buffer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# the gradient-guidance formulas live in guidance_gradient.py; re-exported here (one import for every method)
from .guidance_gradient import (GradientGuide, classifier_gradient, classifier_guided_eps,  # noqa: F401  (re-exported, see the comment above)
                                output_shift_from_eps)

# need a noise-aware classifier (pipelines/classifier.py) or a CLIP guide (guidance_gradient.ClipGuide)
CLASSIFIER_METHODS = ("classifier", "classifier+cfg")
GUIDANCE_METHODS = ("cfg", "apg", "cfg-zero-star", "perp-neg") + CLASSIFIER_METHODS
DEFAULT_CLASSIFIER_SCALE = 16.0  # s: the best measured on the embedded model (BENCHMARKS.md, bench/eval_guidance_kinds.py)
SCALE_SCHEDULES = ("constant", "linear-up", "linear-down", "cosine")
INTERVAL_SPACES = ("sigma", "fraction")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product <a, b>, shaped (B, 1, 1, 1) to broadcast back."""
    return (a * b).flatten(1).sum(dim=1).view(-1, *([1] * (a.ndim - 1)))


# --------------------------------------------------------------------------- the methods


def cfg(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"):

        guided = u + w (c - u)
    """
    return uncond + scale * (cond - uncond)


def rescale_cfg(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Sec. 3.4, Alg. 2): match the guided prediction's std to the conditional one, then mix.

        rescaled = guided * std(c) / std(guided)        (std per sample, unbiased, like diffusers)
        out      = phi * rescaled + (1 - phi) * guided
    """
    dims = list(range(1, cond.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return phi * rescaled + (1 - phi) * guided


def progress(step: int, num_steps: int) -> float:
    """Sampling progress p = step / (num_steps - 1): 0 at the first step, 1 at the last."""
    return step / (num_steps - 1) if num_steps > 1 else 0.0


def scheduled_scale(scale: float, schedule: str, step: int, num_steps: int) -> float:
    """Guidance scale at ``step`` for a schedule over the sampling steps.

        w_i = 1 + (w - 1) g(p_i),  p_i = progress(i, n)
        constant: g = 1;  linear-up: g = 2p;  linear-down: g = 2(1 - p);  cosine: g = 1 - cos(pi p)

    Every g averages 1 over p in [0, 1], so a schedule redistributes the same guidance strength
    over time rather than adding to it -- the normalization of Wang et al. 2024, "Analysis of
    Classifier-Free Guidance Weight Schedulers" (they find increasing schedules help).
    """
    p = progress(step, num_steps)
    if schedule == "constant":
        return scale  # exactly the caller's float (1 + (w - 1) may round differently)
    if schedule == "linear-up":
        g = 2.0 * p
    elif schedule == "linear-down":
        g = 2.0 * (1.0 - p)
    elif schedule == "cosine":
        g = 1.0 - math.cos(math.pi * p)
    else:
        raise ValueError(f"schedule={schedule!r} is not a known guidance schedule; valid: {list(SCALE_SCHEDULES)}")
    return 1.0 + (scale - 1.0) * g


def in_guidance_interval(value: float, interval: tuple[float, float] | None) -> bool:
    """Guidance interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval
    Improves Sample and Distribution Quality in Diffusion Models"): guide only while
    lo < value <= hi (value = sigma, or sampling progress); elsewhere w = 1 (conditional only).
    None means always on.
    """
    if interval is None:
        return True
    lo, hi = interval
    return lo < value <= hi


def apg(
    uncond: torch.Tensor,
    cond: torch.Tensor,
    scale: float,
    running: torch.Tensor | None,
    momentum: float,
    norm_threshold: float,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive Projected Guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts
    of High Guidance Scales in Diffusion Models", Alg. 1), on denoised predictions D:

        d     = D_c - D_u + beta * d_prev              (momentum; beta < 0 pushes away from the past)
        d     = d * min(1, r / ||d||)                  (rescale; r <= 0 disables)
        d_par = (<d, D_c> / <D_c, D_c>) D_c,  d_perp = d - d_par
        out   = D_c + (w - 1) (d_perp + eta d_par)

    Returns (guided, new running average d) -- the caller keeps it for the next step.
    """
    diff = cond - uncond
    if running is not None:
        diff = diff + momentum * running
    new_running = diff
    if norm_threshold > 0:
        norm = _dot(diff, diff).sqrt()
        diff = diff * torch.clamp(norm_threshold / norm, max=1.0)
    parallel = _dot(diff, cond) / _dot(cond, cond) * cond
    orthogonal = diff - parallel
    return cond + (scale - 1.0) * (orthogonal + eta * parallel), new_running


def optimized_scale(uncond: torch.Tensor, cond: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """CFG-Zero*'s per-sample projection coefficient s* = <c, u> / ||u||^2, shape (B, 1, 1, 1)."""
    return _dot(cond, uncond) / (_dot(uncond, uncond) + eps)


def cfg_zero_star(
    uncond: torch.Tensor,
    cond: torch.Tensor,
    scale: float,
    step: int,
    zero_init_steps: int,
    use_optimized_scale: bool = True,
) -> torch.Tensor:
    """CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow
    Matching Models"):

        s*    = <c, u> / ||u||^2                      (per sample)
        out   = s* u + w (c - s* u)
        out   = 0  for the first K steps (zero-init)

    Zero-init is applied in the model's native output space, as the paper does for its velocity
    models: an epsilon model predicts no noise (x0 = x_t / sqrt(alpha_bar)); a v model predicts
    x0 = sqrt(alpha_bar) x_t, eps = sqrt(1 - alpha_bar) x_t (at zero terminal SNR: x0 = 0).
    """
    if step < zero_init_steps:
        return torch.zeros_like(cond)
    s = optimized_scale(uncond, cond) if use_optimized_scale else 1.0
    return s * uncond + scale * (cond - s * uncond)


def perp_neg(
    uncond: torch.Tensor, cond: torch.Tensor, negative: torch.Tensor, scale: float, negative_scale: float
) -> torch.Tensor:
    """Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm"): remove from
    the negative direction its component along the positive one, then push away from the rest.

        d_pos = c - u,  d_neg = n - u
        d_neg_perp = d_neg - (<d_neg, d_pos> / ||d_pos||^2) d_pos
        out = u + w d_pos - w_neg d_neg_perp
    """
    d_pos = cond - uncond
    d_neg = negative - uncond
    d_neg_perp = d_neg - _dot(d_neg, d_pos) / _dot(d_pos, d_pos) * d_pos
    return uncond + scale * d_pos - negative_scale * d_neg_perp


# --------------------------------------------------------------------------- configuration


@dataclass
class APGParams:
    momentum: float = -0.5  # beta; negative values are what the paper recommends
    norm_threshold: float = 15.0  # r; <= 0 disables the rescale
    eta: float = 0.0  # weight of the parallel component (0 drops it: less oversaturation)


@dataclass
class CFGZeroParams:
    zero_init_steps: int = 1  # K
    use_optimized_scale: bool = True


@dataclass
class PerpNegParams:
    negative_scale: float = 1.0  # w_neg


def _finite(name: str, value) -> None:
    if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be a finite number")


@dataclass
class GuidanceConfig:
    """Guidance method and knobs. ``scale`` / ``rescale`` None: take the call's
    ``guidance_scale`` / ``guidance_rescale``. ``interval`` (lo, hi] in ``interval_space``
    ("sigma": the step's noise level; "fraction": sampling progress 0..1)."""

    method: str = "cfg"
    scale: float | None = None
    rescale: float | None = None
    schedule: str = "constant"
    interval: tuple[float, float] | None = None
    interval_space: str = "sigma"
    apg: APGParams = field(default_factory=APGParams)
    cfgzero: CFGZeroParams = field(default_factory=CFGZeroParams)
    perpneg: PerpNegParams = field(default_factory=PerpNegParams)
    classifier_scale: float = DEFAULT_CLASSIFIER_SCALE  # s of the classifier methods (others ignore it)

    def __post_init__(self):
        if self.method not in GUIDANCE_METHODS:
            raise ValueError(f"method={self.method!r} is not a known guidance method; valid: {list(GUIDANCE_METHODS)}")
        _finite("scale", self.scale)
        _finite("rescale", self.rescale)  # any finite phi, as diffusers' guidance_rescale; the app keeps [0, 1]
        if self.schedule not in SCALE_SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not a known guidance schedule; valid: {list(SCALE_SCHEDULES)}")
        if self.interval_space not in INTERVAL_SPACES:
            raise ValueError(f"interval_space={self.interval_space!r} is not allowed; valid: {list(INTERVAL_SPACES)}")
        if self.interval is not None:
            if len(self.interval) != 2 or not all(isinstance(v, (int, float)) and not math.isnan(v) for v in self.interval):
                raise ValueError(f"interval={self.interval!r} must be a pair (lo, hi) of numbers")
            if self.interval[0] >= self.interval[1]:
                raise ValueError(f"interval={self.interval!r} must have lo < hi")
            self.interval = (float(self.interval[0]), float(self.interval[1]))
        for name in ("momentum", "norm_threshold", "eta"):
            _finite(f"apg.{name}", getattr(self.apg, name))
        k = self.cfgzero.zero_init_steps
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"cfgzero.zero_init_steps={k!r} must be an integer >= 0")
        _finite("perpneg.negative_scale", self.perpneg.negative_scale)
        _finite("classifier_scale", self.classifier_scale)
        if self.classifier_scale < 0:
            raise ValueError(f"classifier_scale={self.classifier_scale!r} must be >= 0 (0: no classifier term)")

    def resolved(self, guidance_scale: float, guidance_rescale: float) -> "GuidanceConfig":
        """A copy with ``scale`` / ``rescale`` filled from the call arguments where None."""
        return GuidanceConfig(
            method=self.method,
            scale=guidance_scale if self.scale is None else self.scale,
            rescale=guidance_rescale if self.rescale is None else self.rescale,
            schedule=self.schedule,
            interval=self.interval,
            interval_space=self.interval_space,
            apg=self.apg,
            cfgzero=self.cfgzero,
            perpneg=self.perpneg,
            classifier_scale=self.classifier_scale,
        )

    def peak_scale(self) -> float:
        return self.scale if self.schedule == "constant" else 1.0 + 2.0 * (self.scale - 1.0)


class Guider:
    """Per-generation guidance state: picks the step's scale and combines the UNet branches.

    Branch order in the UNet batch: uncond, cond[, negative] (diffusers' order for the first two).
    """

    def __init__(self, config: GuidanceConfig, enabled: bool):
        self.config = config
        self.enabled = enabled  # False: one branch (cond), like diffusers at guidance_scale <= 1
        self._running: torch.Tensor | None = None  # APG momentum buffer
        self.gradient_guide: GradientGuide | None = None  # classifier methods: set by bind_classifier
        self.classifier_readout: dict | None = None  # the last evaluation's classifier outputs (records)

    @property
    def uses_classifier(self) -> bool:
        return self.config.method in CLASSIFIER_METHODS

    @property
    def num_branches(self) -> int:
        if not self.enabled or self.config.method == "classifier":  # CG alone: the empty prompt only
            return 1
        return 3 if self.config.method == "perp-neg" else 2

    @property
    def needs_eval_point(self) -> bool:
        """Whether ``scale_at`` / ``combine`` need the step's noise level."""
        c = self.config
        if self.uses_classifier:
            return True
        return self.enabled and (c.method == "apg" or (c.interval is not None and c.interval_space == "sigma"))

    def scale_at(self, step: int, num_steps: int, sigma: float | None) -> float:
        if not self.enabled:
            return 1.0
        c = self.config
        if c.interval is not None:
            value = progress(step, num_steps) if c.interval_space == "fraction" else sigma
            if not in_guidance_interval(value, c.interval):
                return 1.0
        return scheduled_scale(c.scale, c.schedule, step, num_steps)

    def combine(self, branches: list[torch.Tensor], scale: float, step: int, to_x0=None, from_x0=None) -> torch.Tensor:
        """Guided prediction in the model's output space. ``to_x0`` / ``from_x0`` map that space
        to denoised predictions and back (APG only)."""
        if not self.enabled:
            return branches[0]
        c = self.config
        if c.method == "classifier":
            return branches[0]  # the classifier term is added by add_classifier_term
        uncond, cond = branches[0], branches[1]
        if c.method in ("cfg", "classifier+cfg"):
            guided = cfg(uncond, cond, scale)
        elif c.method == "apg":
            x0_guided, self._running = apg(
                to_x0(uncond), to_x0(cond), scale, self._running, c.apg.momentum, c.apg.norm_threshold, c.apg.eta
            )
            guided = from_x0(x0_guided)
        elif c.method == "cfg-zero-star":
            if step < c.cfgzero.zero_init_steps:
                return torch.zeros_like(cond)  # nothing to rescale (std 0)
            guided = cfg_zero_star(uncond, cond, scale, step, c.cfgzero.zero_init_steps, c.cfgzero.use_optimized_scale)
        else:
            guided = perp_neg(uncond, cond, branches[2], scale, c.perpneg.negative_scale)
        if c.rescale:  # None (unresolved) or 0: off
            guided = rescale_cfg(guided, cond, c.rescale)
        return guided

    # ------------------------------------------------------------------ classifier / CLIP guidance

    def bind_classifier(self, classifier, prompt, prompt_embeds, num_images_per_prompt: int, device,
                        clip_guide=None, vae=None):
        """Classifier methods: choose the guide (the trained classifier when the pipeline has one,
        else its CLIP guide; refused with neither), read its target from the prompt, and return the
        prompt the UNet sees: "" for ``classifier`` (no text conditioning at all), the prompt itself
        for ``classifier+cfg``. Other methods: ``prompt`` unchanged. See guidance_gradient.py."""
        if not self.uses_classifier:
            return prompt
        self.gradient_guide = GradientGuide(self.config.method, classifier, clip_guide, prompt,
                                            num_images_per_prompt, device, vae=vae)
        if self.config.method == "classifier":
            return "" if isinstance(prompt, str) else [""] * len(prompt)
        return prompt

    def add_classifier_term(self, guided: torch.Tensor, x_t: torch.Tensor, t, alpha_bar: float,
                            prediction_type: str, denoise=None) -> torch.Tensor:
        """guided + the gradient term at scale s, in the model's output space: epsilon moved by
        -s b g (``classifier_guided_eps``), converted by ``output_shift_from_eps``. ``x_t`` is the VP
        latent the UNet saw; ``denoise(x_vp)`` one UNet call on it (CLIP's x0). s = 0 or zero SNR
        (CLIP: alpha_bar <= CLIP_MIN_ALPHA_BAR): ``guided`` itself, untouched. Keeps the readout (classifier: log p(y|x_t), target
        probabilities, g; CLIP: the cosine, g) for the step record."""
        s = self.config.classifier_scale
        active = s != 0 and alpha_bar > self.gradient_guide.min_alpha_bar
        grad, self.classifier_readout = self.gradient_guide.gradient(x_t, t, alpha_bar, prediction_type, denoise,
                                                                     need_grad=active)
        if not active:
            return guided
        delta_eps = classifier_guided_eps(torch.zeros_like(grad), grad, s, alpha_bar)  # -s b g
        return guided + output_shift_from_eps(delta_eps, alpha_bar, prediction_type).to(guided.dtype)
