"""The step-record contract between the tracing pipeline and everything that shows it.

One ``StepRecord`` per scheduler step, handed to ``step_callback`` while the loop runs, yielded
by ``pipe.iter_steps(...)`` and collected in ``TracingPipelineOutput.trace``. Field names are a
contract (the app, plots and tests read them): add fields at the end with defaults, never rename.

Conventions
- Tensors are CPU float32, shape (B, C, h, w) with B = batch_size * num_images_per_prompt.
- ``x_t`` is the latent entering the step exactly as the scheduler holds it. For sigma-space
  schedulers (Euler, LMS, Heun, DPM2, DPM++ SDE) that is x0 + sigma * eps; multiply by
  ``input_scale`` (= 1 / sqrt(1 + sigma^2), 1 elsewhere) to get the variance-preserving latent
  sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps that the UNet sees.
- ``eps_*`` are in epsilon space even for v-prediction models; ``x0_*`` are computed by the
  pipeline from the model output and (alpha_bar, sigma) of this evaluation, for every scheduler.
- Second-order schedulers (Heun, DPM2, DPM2 a, DPM++ SDE; PNDM's first step) evaluate the model
  twice per step. One record per scheduler step: tensors and noise level are those of the step's
  first evaluation (where the step starts), ``model_calls`` counts every evaluation, both included.
- ``guidance_norm`` = mean over the batch of ||eps_cond - eps_uncond||_2 / sqrt(C*h*w), i.e. the
  per-sample RMS of the guidance direction in epsilon space; independent of resolution. 0.0
  without CFG.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput

from .attention import AttentionMaps
from .prediction import predicted_eps, predicted_x0
from .previews import decode_preview

RECORD_MODES = ("off", "light", "full")


@dataclass
class StepRecord:
    step: int
    num_steps: int
    timestep: float
    sigma: float | None
    alpha_bar: float
    x_t: torch.Tensor
    eps_uncond: torch.Tensor | None
    eps_cond: torch.Tensor | None
    eps_guided: torch.Tensor | None
    x0_uncond: torch.Tensor | None
    x0_cond: torch.Tensor | None
    x0_guided: torch.Tensor | None
    guidance_scale: float
    guidance_norm: float
    adapters: dict[str, float] = field(default_factory=dict)
    previews: dict[str, list] = field(default_factory=dict)
    model_calls: int = 0
    # additions (after the contract fields)
    input_scale: float = 1.0
    eps_negative: torch.Tensor | None = None  # Perp-Neg's negative-prompt prediction (full mode)
    guidance_method: str = "cfg"
    # classifier methods: {"log_prob": [per sample], "probs": {attribute: p(target)}, "grad": (B, C, h, w)};
    # with a CLIP guide instead (guidance_gradient.py): {"clip_similarity": [per sample], "grad", "clip_model"}
    classifier: dict | None = None
    # record_attention=True / "levels" (pipelines/attention.py): the conditional branch's cross-attention maps
    attention: AttentionMaps | None = None


@dataclass
class TracingPipelineOutput(StableDiffusionPipelineOutput):
    """diffusers' output (a ``BaseOutput``: ``out.images``, ``out[0]``, ``to_tuple()``) plus the trace.

    ``trace`` is None with record="off", so ``to_tuple()`` is stock's ``(images,)`` /
    ``(images, nsfw)`` then; with a trace it comes last.
    """

    trace: list[StepRecord] | None = None
    # how a LoRA blender ran this call (pipelines/lora/blender.py): "none", "fused" or "unfused"; None when no
    # blender was involved, so that to_tuple() stays stock's (BaseOutput leaves None fields out)
    lora_path: str | None = None


def guidance_norm(eps_cond: torch.Tensor, eps_uncond: torch.Tensor) -> float:
    """Mean over the batch of the per-sample RMS of (eps_cond - eps_uncond) (see module doc)."""
    diff = (eps_cond - eps_uncond).flatten(1).to(torch.float32)  # (B, C*h*w)
    return float((diff.norm(dim=1) / diff.shape[1] ** 0.5).mean())


def to_record_tensor(x: torch.Tensor | None) -> torch.Tensor | None:
    """Detached CPU float32 copy (always a copy: the loop may reuse device buffers)."""
    if x is None:
        return None
    return x.detach().to(device="cpu", dtype=torch.float32, copy=True)


def build_record(*, step, num_steps, point, latents, branches, guided, scale, method, prediction_type, full,
                 adapters, preview_every, preview_targets, preview_decoder, preview_kw) -> StepRecord:
    """The step's record from the step's first model call (``branches``: the UNet batch split
    into [uncond,] cond[, negative]; ``guided``: their combination; see the module doc)."""
    def eps(out):
        return predicted_eps(out, latents, point, prediction_type)

    def x0(out):
        return predicted_x0(out, latents, point, prediction_type)

    cfg_on = len(branches) > 1
    uncond, cond = (branches[0], branches[1]) if cfg_on else (None, branches[0])
    eps_cond = eps(cond)
    eps_uncond = eps(uncond) if cfg_on else None
    tensors = {"x0_guided": x0(guided)}
    if full or "x0_cond" in preview_targets:
        tensors["x0_cond"] = x0(cond)
    if cfg_on and (full or "x0_uncond" in preview_targets):
        tensors["x0_uncond"] = x0(uncond)

    previews = {}
    if preview_every and (step % preview_every == 0 or step == num_steps - 1):
        vp_latents = latents * point.input_scale
        for target in preview_targets:
            source = vp_latents if target == "x_t" else tensors.get(target)
            if source is not None:
                previews[target] = decode_preview(source, preview_decoder, **preview_kw)

    keep = to_record_tensor
    return StepRecord(
        step=step,
        num_steps=num_steps,
        timestep=point.timestep,
        sigma=point.sigma,
        alpha_bar=point.alpha_bar,
        x_t=keep(latents),
        eps_uncond=keep(eps_uncond) if full else None,
        eps_cond=keep(eps_cond) if full and cfg_on else None,
        eps_guided=keep(eps(guided)) if full else None,
        x0_uncond=keep(tensors.get("x0_uncond")) if full else None,
        x0_cond=keep(tensors.get("x0_cond")) if full and cfg_on else None,
        x0_guided=keep(tensors["x0_guided"]),
        guidance_scale=float(scale),
        guidance_norm=guidance_norm(eps_cond, eps_uncond) if cfg_on else 0.0,
        adapters=dict(adapters or {}),
        previews=previews,
        input_scale=point.input_scale,
        eps_negative=keep(eps(branches[2])) if full and len(branches) > 2 else None,
        guidance_method=method,
    )
