"""Scheduler registry: the names people know from AUTOMATIC1111 / ComfyUI -> diffusers schedulers.

Every entry is built from the model's *own* scheduler config with
``SchedulerClass.from_config(base_config, **overrides)``, so the training schedule (betas,
prediction_type, zero-terminal-SNR flag, steps_offset) travels with the model and only the
sampler changes. Options on top: timestep spacing (leading / trailing / linspace),
zero-terminal-SNR rescale, Karras / exponential sigmas.

Schedule data for plots comes out as plain numpy arrays (no plotting import here):
``training_schedule`` (t, alpha_bar, sigma, log-SNR over the training steps) and
``sampling_schedule`` (the timesteps / sigmas a scheduler picks for n steps, model calls).

Notation: alpha_bar_t = prod_{s<=t} (1 - beta_s); sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)
(the variance-exploding / k-diffusion noise level); log-SNR_t = log(alpha_bar_t / (1 - alpha_bar_t)).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from .forward import snr, training_betas, zero_snr_betas
from .zero_snr import zero_snr_class


@dataclass(frozen=True)
class SchedulerSpec:
    """One registry entry: a diffusers class plus the config overrides that make it 'the' sampler."""

    cls: type
    overrides: dict = field(default_factory=dict)
    note: str = ""


# Mapping as documented by diffusers ("A1111/k-diffusion -> diffusers") and used by ComfyUI users.
# ``note``: one line the Scheduler lab shows beside the name (cost, and what a zero-SNR model needs).
TWO_CALLS = "2 model calls per step: compare it with others at half the steps"
# measured: BENCHMARKS.md, "Samplers on the embedded model (issue 27)" (5 and 10 steps more than 0.05 below DDIM)
NEEDS_25 = "on a zero-SNR model (the embedded one) it needs about 25 steps to match DDIM (5-10 steps lose color or shape)"
SCHEDULERS: dict[str, SchedulerSpec] = {
    "DDIM": SchedulerSpec(DDIMScheduler),
    "DDPM": SchedulerSpec(DDPMScheduler, note="adds fresh noise every step (stochastic)"),
    # A1111's "PLMS": PNDM without the Runge-Kutta warm-up (as SD's own scheduler config does).
    "PNDM": SchedulerSpec(PNDMScheduler, {"skip_prk_steps": True},
                          note="its first step costs 2 model calls; " + NEEDS_25 + " (its multistep history starts cold)"),
    "LMS": SchedulerSpec(LMSDiscreteScheduler),
    "LMS Karras": SchedulerSpec(LMSDiscreteScheduler, {"use_karras_sigmas": True}),
    "Euler": SchedulerSpec(EulerDiscreteScheduler),
    "Euler a": SchedulerSpec(EulerAncestralDiscreteScheduler, note="ancestral: adds noise each step"),
    "Heun": SchedulerSpec(HeunDiscreteScheduler, note=TWO_CALLS),
    "DPM2": SchedulerSpec(KDPM2DiscreteScheduler, note=TWO_CALLS),
    "DPM2 Karras": SchedulerSpec(KDPM2DiscreteScheduler, {"use_karras_sigmas": True}, note=TWO_CALLS),
    "DPM2 a": SchedulerSpec(KDPM2AncestralDiscreteScheduler, note=TWO_CALLS + "; ancestral; " + NEEDS_25),
    "DPM2 a Karras": SchedulerSpec(KDPM2AncestralDiscreteScheduler, {"use_karras_sigmas": True},
                                   note=TWO_CALLS + "; ancestral; " + NEEDS_25),
    "DPM++ 2M": SchedulerSpec(DPMSolverMultistepScheduler),
    "DPM++ 2M Karras": SchedulerSpec(DPMSolverMultistepScheduler, {"use_karras_sigmas": True},
                                     note="on a zero-SNR model (the embedded one) use 10 steps or more (at 5 it loses color and shape)"),
    # torchsde's Brownian tree draws its own seed when none is given; a fixed seed keeps runs
    # reproducible (the initial latents still come from the caller's generator).
    "DPM++ SDE": SchedulerSpec(DPMSolverSDEScheduler, {"noise_sampler_seed": 0}, note=TWO_CALLS + "; stochastic"),
    "DPM++ SDE Karras": SchedulerSpec(DPMSolverSDEScheduler, {"use_karras_sigmas": True, "noise_sampler_seed": 0},
                                      note=TWO_CALLS + "; stochastic"),
    "DPM++ 2M SDE": SchedulerSpec(DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"},
                                  note="stochastic"),
    "DPM++ 2M SDE Karras": SchedulerSpec(
        DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        note="stochastic; " + NEEDS_25),
    "UniPC": SchedulerSpec(UniPCMultistepScheduler),
    "DEIS": SchedulerSpec(DEISMultistepScheduler),
    "LCM": SchedulerSpec(LCMScheduler, note="meant for LCM-distilled weights; at most 50 steps"),
}

# What every Karras / exponential ramp and second-order sampler does on a zero-terminal-SNR model (one
# line for the lab; the reason: pipelines/zero_snr.py).
ZERO_SNR_NOTE = ("on a zero-terminal-SNR model (the embedded one) Karras / exponential sigmas take one step from pure "
                 "noise, then the ramp from sigma 14.6, and Heun / DPM2 take steep steps first order; without that "
                 "diffusers' classes crash or smear there")


def scheduler_note(name: str) -> str:
    """The lab's one-line note for registry scheduler ``name`` ("" when there is nothing to say)."""
    return SCHEDULERS[name].note if name in SCHEDULERS else ""


TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
SIGMA_KINDS = ("default", "karras", "exponential")

# Schedulers whose latents live in sigma space: x = x0 + sigma * eps (variance exploding); the
# model sees x / sqrt(1 + sigma^2). All others keep variance-preserving latents
# x = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps.
SIGMA_SPACE_SCHEDULERS = (
    EulerDiscreteScheduler,
    EulerAncestralDiscreteScheduler,
    LMSDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    DPMSolverSDEScheduler,
)


def scheduler_names() -> list[str]:
    return list(SCHEDULERS)


def _accepts(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def _base_dict(base_config) -> dict:
    """The model's scheduler config as from_config reads it. ``_use_default_values`` (the keys the model's
    file left unset) stays: like ``Class.from_config(pipe.scheduler.config)``, those take the new
    class's defaults (the naming rule, see ``make_scheduler``)."""
    config = dict(base_config)
    return {k: v for k, v in config.items() if not k.startswith("_") or k == "_use_default_values"}


def make_scheduler(
    name: str,
    base_config,
    *,
    timestep_spacing: str | None = None,
    zero_snr: bool | None = None,
    sigmas: str | None = None,
    **overrides,
):
    """Build registry scheduler ``name`` from a model's scheduler config.

    The naming rule: ``make_scheduler(name, pipe.scheduler.config)`` builds what diffusers' idiom
    ``SchedulerClass.from_config(pipe.scheduler.config, **overrides)`` builds for that name (the
    entry's class and overrides, e.g. "DPM++ 2M Karras" = DPMSolverMultistepScheduler with
    use_karras_sigmas=True): a setting the model's config file leaves unset (``timestep_spacing`` in
    older SD configs) takes the new class's default, as there. Only zero-terminal-SNR schedules
    differ, where diffusers' own classes crash or smear (pipelines/zero_snr.py).

    timestep_spacing: None keeps the model's; else one of TIMESTEP_SPACINGS.
    zero_snr: None keeps the model's ``rescale_betas_zero_snr``; True/False forces it. Classes
        without that option (LMS, Heun, DPM2, DPM++ SDE, PNDM, DEIS) get the rescaled betas as
        ``trained_betas`` (see ``zero_snr_betas``), so a zero-SNR model samples with its own schedule.
    sigmas: None keeps the entry's default; "karras" / "exponential" / "default" override it.
    The model's ``prediction_type`` is always kept.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is not a known scheduler; valid names: {scheduler_names()}")
    spec = SCHEDULERS[name]
    config = _base_dict(base_config)
    kwargs = dict(spec.overrides)

    if timestep_spacing is not None:
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing={timestep_spacing!r} is not allowed; valid: {list(TIMESTEP_SPACINGS)}")
        kwargs["timestep_spacing"] = timestep_spacing

    wants_zero_snr = config.get("rescale_betas_zero_snr", False) if zero_snr is None else bool(zero_snr)
    if _accepts(spec.cls, "rescale_betas_zero_snr"):
        kwargs["rescale_betas_zero_snr"] = wants_zero_snr
    elif wants_zero_snr:
        kwargs["trained_betas"] = zero_snr_betas(config).tolist()

    if sigmas is not None:
        if sigmas not in SIGMA_KINDS:
            raise ValueError(f"sigmas={sigmas!r} is not allowed; valid: {list(SIGMA_KINDS)}")
        for kind in ("karras", "exponential"):
            key = f"use_{kind}_sigmas"
            if _accepts(spec.cls, key):
                kwargs[key] = sigmas == kind
            elif sigmas == kind:
                raise ValueError(f"scheduler={name!r} does not support sigmas={kind!r}")

    kwargs.update(overrides)
    kwargs["prediction_type"] = config.get("prediction_type", "epsilon")
    scheduler = zero_snr_class(spec.cls).from_config(config, **kwargs)
    if hasattr(scheduler, "ramp_sigma_max"):
        scheduler.ramp_sigma_max = unrescaled_sigma_max(config)
    return scheduler


def unrescaled_sigma_max(config) -> float:
    """sigma_T of the model's betas before any zero-terminal-SNR rescale (SD's scaled-linear: 14.6):
    where a Karras / exponential ramp starts on a zero-SNR model, after one step from pure noise
    (pipelines/zero_snr.py)."""
    alpha_bar = float(np.cumprod(1.0 - training_betas(dict(config, rescale_betas_zero_snr=False)))[-1])
    return float(np.sqrt((1.0 - alpha_bar) / alpha_bar))


def check_schedule(scheduler, name: str, options: dict | None, steps: int, from_noise: bool = True) -> None:
    """Refuse, before the first model call, a schedule that cannot produce an image (one line each).

    Call after ``set_timesteps(steps)``. ``from_noise``: the run starts from pure noise (text-to-image).
    """
    options = options or {}
    combo = f"scheduler={name!r}" + "".join(f", {k}={v!r}" for k, v in options.items()) + f" at {steps} step(s)"
    sigmas = getattr(scheduler, "sigmas", None)
    tables = [scheduler.timesteps] + ([sigmas] if isinstance(sigmas, torch.Tensor) else [])
    if not all(bool(torch.isfinite(t.double()).all()) for t in tables):
        # DPM2 a at 2 linspace steps (2 leading steps with a Karras / exponential ramp) on a zero-SNR model:
        # sigma falls 4096 -> 0.03, and its ancestral split sigma_down = sigma_next^2 / sigma ~ 2e-7 rounds
        # to 0 in float32, leaving a NaN timestep
        raise ValueError(f"{combo}: a step falls so far (sigma {float(scheduler.sigmas[0]):.4g} to near 0) that this "
                         "sampler's tables come out NaN in float32; use more steps or timestep_spacing='trailing'")
    t_min, t_max = float(scheduler.timesteps.min()), float(scheduler.timesteps.max())
    if t_min < 0 or t_max > len(scheduler.alphas_cumprod) - 1:
        # diffusers' trailing spacing, round(arange(T, 0, -T / n)) - 1, gains a t = -1 at some n (61, 103, 121,
        # 122 of 1-150) from float round-off; DDIM then reads alpha_bar[-1] = 0 (zero SNR) and divides by it
        raise ValueError(f"{combo}: diffusers' spacing puts a timestep at t={t_min:g} (outside 0..{len(scheduler.alphas_cumprod) - 1}, "
                         f"float round-off at this step count); use {steps - 1} or {steps + 1} steps")
    if isinstance(sigmas, torch.Tensor) and len(sigmas) > 1 and float(sigmas[-1]) > 0 and float(sigmas[-1]) >= float(sigmas[0]):
        raise ValueError(f"{combo}: this sampler stops at its ramp's sigma_min, which 1 step puts at the pure-noise "
                         "start, so the image would stay noise; use 2 or more steps or sigmas='default'")
    if from_noise:
        t0 = float(scheduler.timesteps[0])
        alpha_bar = float(scheduler.alphas_cumprod[round(t0)])
        if alpha_bar > 0.5:
            raise ValueError(f"{combo}: the first timestep is t={t0:g} of {len(scheduler.alphas_cumprod)}, where the model "
                             "expects a nearly clean image, so the pure-noise start would come back as noise; use "
                             "timestep_spacing='trailing' or 'linspace', or more steps")


# ---------------------------------------------------------------------------------------------
# Where the model is evaluated: one small record of (timestep, sigma, alpha_bar) per model call.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalPoint:
    """Noise level of one model evaluation, as the scheduler itself uses it.

    sigma_space: latents are x0 + sigma * eps (see SIGMA_SPACE_SCHEDULERS); else VP latents.
    sigma: sqrt((1 - alpha_bar) / alpha_bar), or None for schedulers that index by timestep only.
    """

    timestep: float
    alpha_bar: float
    sigma: float | None
    sigma_space: bool

    @property
    def noise_sigma(self) -> float:
        """sigma, or the one implied by alpha_bar (inf at zero terminal SNR)."""
        if self.sigma is not None:
            return self.sigma
        return ((1.0 - self.alpha_bar) / self.alpha_bar) ** 0.5 if self.alpha_bar > 0 else float("inf")

    @property
    def input_scale(self) -> float:
        """Factor that maps the scheduler's latents to the VP latents the model sees."""
        return 1.0 / (self.sigma**2 + 1.0) ** 0.5 if self.sigma_space else 1.0


class ScheduleTables:
    """CPU copies of a scheduler's per-generation tables, taken once after ``set_timesteps``.

    Reading python floats from these never touches the accelerator inside the loop.
    """

    def __init__(self, scheduler):
        self.timesteps = scheduler.timesteps.detach().to("cpu", torch.float64)
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
        sig = getattr(scheduler, "sigmas", None)
        self.sigmas = sig.detach().to("cpu", torch.float64) if isinstance(sig, torch.Tensor) else None
        interp = getattr(scheduler, "sigmas_interpol", None)
        self.sigmas_interpol = interp.detach().to("cpu", torch.float64) if isinstance(interp, torch.Tensor) else None


def _step_index(scheduler, loop_index: int) -> int:
    index = getattr(scheduler, "step_index", None)
    if index is not None:
        return int(index)
    # Multistep solvers set their index inside step(); before the first step it is the loop's.
    begin = getattr(scheduler, "begin_index", None)
    return int(begin) if begin is not None else loop_index


def eval_point(scheduler, tables: ScheduleTables, loop_index: int) -> EvalPoint:
    """The noise level of the model call about to happen (call after ``scale_model_input``).

    Second-order schedulers evaluate their second call at an intermediate sigma; each class keeps
    it in a different place, read here explicitly.
    """
    t = float(tables.timesteps[loop_index])
    sigma_space = isinstance(scheduler, SIGMA_SPACE_SCHEDULERS)
    if tables.sigmas is None:  # DDIM, DDPM, PNDM, LCM: indexed by the integer training timestep
        return EvalPoint(t, float(tables.alphas_cumprod[int(round(t))]), None, False)
    i = _step_index(scheduler, loop_index)
    first = getattr(scheduler, "state_in_first_order", True)
    if not first and isinstance(scheduler, KDPM2AncestralDiscreteScheduler):
        sigma = float(tables.sigmas_interpol[i - 1])
    elif not first and isinstance(scheduler, KDPM2DiscreteScheduler):
        sigma = float(tables.sigmas_interpol[i])
    elif not first and isinstance(scheduler, DPMSolverSDEScheduler):
        sigma = float(scheduler.mid_point_sigma)
    else:
        sigma = float(tables.sigmas[i])
    return EvalPoint(t, 1.0 / (1.0 + sigma * sigma), sigma, sigma_space)


def starts_scheduler_step(scheduler) -> bool:
    """True when the next model call opens a new scheduler step (not the 2nd call of Heun & co.).

    Heun / DPM2 / DPM2 a / DPM++ SDE expose ``state_in_first_order``. PNDM without PRK steps
    re-evaluates its first step once (counter == 1) as a Heun-like correction. Anything else:
    one call per step.
    """
    if isinstance(scheduler, PNDMScheduler):
        return not (scheduler.config.skip_prk_steps and scheduler.counter == 1)
    return bool(getattr(scheduler, "state_in_first_order", True))


# ---------------------------------------------------------------------------------------------
# Schedule data for plots
# ---------------------------------------------------------------------------------------------


def training_schedule(scheduler_or_config) -> dict[str, np.ndarray]:
    """Training-time schedule as float64 numpy arrays: t, alpha_bar, sigma, log_snr.

    At a zero-terminal-SNR final step alpha_bar = 0: sigma = inf, log_snr = -inf.
    """
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    alpha_bar = np.cumprod(1.0 - training_betas(config))
    ratio = snr(alpha_bar)
    with np.errstate(divide="ignore"):
        sigma = 1.0 / np.sqrt(ratio)  # sqrt((1 - alpha_bar) / alpha_bar)
        log_snr = np.log(ratio)
    return {"t": np.arange(len(alpha_bar)), "alpha_bar": alpha_bar, "sigma": sigma, "log_snr": log_snr}


def sampling_schedule(name_or_scheduler, base_config=None, num_inference_steps: int = 25, **options) -> dict:
    """What a scheduler picks for ``num_inference_steps``: numpy arrays + call count.

    Returns {"timesteps": (n_calls,), "sigmas": as the scheduler stores them, or None, "num_model_calls": int,
    "num_steps": int}; ``timesteps`` lists every model call (Heun-style schedulers repeat them).
    """
    if isinstance(name_or_scheduler, str):
        scheduler = make_scheduler(name_or_scheduler, base_config, **options)
    else:
        scheduler = copy.deepcopy(name_or_scheduler)  # keeps what the registry set beside the config
    scheduler.set_timesteps(num_inference_steps, device="cpu")
    timesteps = scheduler.timesteps.detach().to(torch.float64).numpy()
    sig = getattr(scheduler, "sigmas", None)
    sigmas = sig.detach().to(torch.float64).numpy() if isinstance(sig, torch.Tensor) else None
    return {
        "timesteps": timesteps,
        "sigmas": sigmas,
        "num_model_calls": int(len(timesteps)),
        "num_steps": int(getattr(scheduler, "num_inference_steps", None) or num_inference_steps),
    }
