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
from typing import Any

import torch

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


@dataclass
class TracingPipelineOutput:
    images: Any  # list of PIL images, np.ndarray or latents tensor, as output_type asks
    nsfw_content_detected: list[bool] | None
    trace: list[StepRecord] | None = None
    lora_path: str = "none"  # how LoRAs ran (pipelines/lora.py): "none", "fused" or "unfused"


def guidance_norm(eps_cond: torch.Tensor, eps_uncond: torch.Tensor) -> float:
    """Mean over the batch of the per-sample RMS of (eps_cond - eps_uncond) (see module doc)."""
    diff = (eps_cond - eps_uncond).flatten(1).to(torch.float32)  # (B, C*h*w)
    return float((diff.norm(dim=1) / diff.shape[1] ** 0.5).mean())


def to_record_tensor(x: torch.Tensor | None) -> torch.Tensor | None:
    """Detached CPU float32 copy (always a copy: the loop may reuse device buffers)."""
    if x is None:
        return None
    return x.detach().to(device="cpu", dtype=torch.float32, copy=True)
