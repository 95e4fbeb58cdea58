"""Sweep the sampler options a user can reach: scheduler x timestep spacing x sigmas x steps x mode.

Shared by tests/pipelines/test_sampler_sweep.py and bench/sweep_samplers.py. One case is refused when
``make_scheduler`` raises ValueError before anything runs; otherwise it runs the real pipeline and
is a crash (any exception), nonfinite (NaN / inf in the image), flat (pixel std < FLAT_STD on the
0-255 scale) or ok.
"""
from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipelines.schedulers import SIGMA_KINDS, TIMESTEP_SPACINGS, check_schedule, make_scheduler, scheduler_names

SPACINGS = (None,) + TIMESTEP_SPACINGS  # None: the model's own (the form's "model default")
SIGMAS = (None,) + tuple(k for k in SIGMA_KINDS if k != "default")  # None: the entry's own (the form's "default")
MODES = ("txt2img", "img2img-0.1", "img2img-0.5", "img2img-1.0", "inpaint")
FLAT_STD = 2.0
PROMPT = "a large red circle in the top left"


@dataclass
class Case:
    scheduler: str
    spacing: str | None
    sigmas: str | None
    steps: int
    mode: str = "txt2img"

    @property
    def options(self) -> dict:
        out = {}
        if self.spacing is not None:
            out["timestep_spacing"] = self.spacing
        if self.sigmas is not None:
            out["sigmas"] = self.sigmas
        return out

    def label(self) -> str:
        return (f"{self.scheduler} / spacing={self.spacing or 'model'} / sigmas={self.sigmas or 'default'} / "
                f"{self.steps} steps / {self.mode}")


@dataclass
class Outcome:
    case: Case
    status: str  # ok | refused | crash | nonfinite | flat
    message: str = ""
    image: np.ndarray | None = None  # (H, W, 3) float in [0, 1]


def grid(schedulers=None, spacings=SPACINGS, sigmas=SIGMAS, steps=(10, 25, 50), modes=("txt2img",)) -> list[Case]:
    return [Case(n, sp, sg, s, m) for n in (schedulers or scheduler_names()) for sp in spacings for sg in sigmas
            for s in steps for m in modes]


def source_image(size: int) -> Image.Image:
    """img2img / inpainting input: a shapes-world picture at the model's size."""
    from shapesworld import sample

    return sample(7, empty_prob=0.0, resolution=size).image


def right_half_mask(size: int) -> Image.Image:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, size // 2:] = 255
    return Image.fromarray(mask)


def run_case(pipe, case: Case, *, prompt: str = PROMPT, seed: int = 0, guidance_scale: float = 3.0,
             size: int | None = None) -> Outcome:
    try:
        sched = make_scheduler(case.scheduler, pipe.scheduler.config, **case.options)
        sched.set_timesteps(case.steps)
        check_schedule(sched, case.scheduler, case.options, case.steps, from_noise=case.mode == "txt2img")
    except ValueError as error:
        return Outcome(case, "refused", str(error))
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    kwargs = {"prompt": prompt, "num_inference_steps": case.steps, "guidance_scale": guidance_scale,
              "output_type": "np", "generator": torch.Generator().manual_seed(seed), "scheduler": case.scheduler,
              "scheduler_options": case.options}
    try:
        if case.mode == "txt2img":
            out = pipe(height=size, width=size, **kwargs)
        elif case.mode.startswith("img2img"):
            from pipelines.img2img import img2img

            out = img2img(pipe, source_image(size), float(case.mode.split("-")[1]), **kwargs)
        elif case.mode == "inpaint":
            from pipelines.inpaint import inpaint

            out = inpaint(pipe, source_image(size), right_half_mask(size), **kwargs)
        else:
            raise ValueError(f"mode={case.mode!r} is not one of {MODES}")
    except Exception as error:  # noqa: BLE001 (what the sweep counts)
        return Outcome(case, "crash", f"{type(error).__name__}: {error}")
    image = np.asarray(out.images[0], dtype=np.float64)
    if not np.isfinite(image).all():
        return Outcome(case, "nonfinite", "NaN or inf in the image", image)
    if (image * 255.0).std() < FLAT_STD:
        return Outcome(case, "flat", f"pixel std {(image * 255).std():.2f} < {FLAT_STD}", image)
    return Outcome(case, "ok", "", image)


def counts(outcomes) -> dict[str, int]:
    c = collections.Counter(o.status for o in outcomes)
    return {k: c.get(k, 0) for k in ("ok", "refused", "crash", "nonfinite", "flat")}


def wrong_color(outcomes, color: str = "red") -> list[Outcome]:
    """ok outcomes whose scorer reading is not ``color`` (the prompt's)."""
    from shapesworld import score_image

    return [o for o in outcomes if o.status == "ok" and score_image((o.image * 255).round().astype(np.uint8)).color != color]


def sd15_tiny_pipeline():
    """Tiny seeded components (testkit.tiny) with SD 1.5's own scheduler config (PNDM, leading, epsilon)."""
    import os

    from diffusers import PNDMScheduler

    from pipelines import TracingStableDiffusionPipeline
    from testkit.components import SD15_CONFIGS
    from testkit.tiny import make_tiny_components

    components = make_tiny_components("epsilon")
    components["scheduler"] = PNDMScheduler.from_config(PNDMScheduler.load_config(os.path.join(SD15_CONFIGS, "scheduler")))
    pipe = TracingStableDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------ a stand-in model with a known answer


class GaussianDenoiser:
    """The exact denoiser of Gaussian data x0 ~ N(mu, s^2 I) (a stand-in UNet, microseconds a call).

    For a VP latent x = a x0 + b eps (a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar)):
    E[x0 | x] = mu + a s^2 / (a^2 s^2 + b^2) (x - a mu); the output is that x0 written as the
    model's prediction type. A sampler that solves the reverse process ends near mu within a few s
    (exactly mu + s eps_T for a deterministic one from pure noise); a wrong schedule, a drifting step
    index or an unstable update ends far from it (or not finite). The timestep -> alpha_bar map is the
    training schedule's, log-sigma interpolated between integers as diffusers' ``_sigma_to_t`` does.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, mu: torch.Tensor, s: float, prediction_type: str):
        self.alpha_bar = alphas_cumprod.double().clamp(min=2.0**-24)
        self.log_sigma = (((1 - self.alpha_bar) / self.alpha_bar) ** 0.5).log()
        self.mu, self.s, self.prediction_type = mu.double(), s, prediction_type

    def alpha_bar_at(self, t: float) -> float:
        lo = int(np.floor(t))
        if lo >= len(self.alpha_bar) - 1 or t == lo:
            return float(self.alpha_bar[min(lo, len(self.alpha_bar) - 1)])
        w = t - lo
        sigma = float(((1 - w) * self.log_sigma[lo] + w * self.log_sigma[lo + 1]).exp())
        return 1.0 / (1.0 + sigma * sigma)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        ab = self.alpha_bar_at(float(t))
        a, b = ab**0.5, (1.0 - ab) ** 0.5
        x = x.double()
        x0 = self.mu + a * self.s**2 / (a * a * self.s**2 + b * b) * (x - a * self.mu)
        eps = (x - a * x0) / b
        out = {"epsilon": eps, "v_prediction": a * eps - b * x0, "sample": x0}[self.prediction_type]
        return out.float()


_TEMPLATES: dict = {}


def cached_scheduler(name: str, config, options: dict):
    """A fresh copy of ``make_scheduler(name, config, **options)`` (DPM2's __init__ takes seconds; a
    deepcopy microseconds). ValueError: refused."""
    import copy
    import json

    key = (name, json.dumps(dict(config), sort_keys=True, default=str), json.dumps(options, sort_keys=True))
    if key not in _TEMPLATES:
        _TEMPLATES[key] = make_scheduler(name, config, **options)
    return copy.deepcopy(_TEMPLATES[key])


def stand_in_run(name: str, config, options: dict, steps: int, strength: float | None = None, seed: int = 0,
                 s: float = 0.5) -> float:
    """Run registry scheduler ``name`` for ``steps`` with the Gaussian stand-in, from pure noise
    (``strength`` None) or img2img-style from q_sample at ``strength`` (begin index set as the
    pipeline does). Returns rms(final - mu) / s: ~1 for a sampler that works, 0 at 1 step (the
    mean), inf (NaN / inf) or large when it does not. ValueError: refused before the run."""
    sched = cached_scheduler(name, config, options)
    sched.set_timesteps(steps, device="cpu")
    check_schedule(sched, name, options, steps, from_noise=strength is None)
    if strength is not None:
        from pipelines.img2img import check_strength

        check_strength(strength, steps)  # the app's refusal: strength x steps must leave a step
    try:
        return _stand_in_loop(sched, strength, steps, seed, s)
    except ValueError as error:  # during the run: a crash, not a refusal
        raise RuntimeError(f"ValueError during the run: {error}") from error


def stock_stand_in_run(name: str, config, options: dict, steps: int, strength: float | None = None, seed: int = 0,
                       s: float = 0.5) -> float:
    """``stand_in_run`` with diffusers' own class for registry entry ``name``, built by the
    plain idiom ``Class.from_config(config, **entry overrides, timestep_spacing=..., use_karras_sigmas=...)``
    (no zero-SNR mixin, no refusal): what stock diffusers does, to compare ours with."""
    from pipelines.schedulers import SCHEDULERS

    spec = SCHEDULERS[name]
    kwargs = dict(spec.overrides)
    if options.get("timestep_spacing"):
        kwargs["timestep_spacing"] = options["timestep_spacing"]
    if options.get("sigmas"):
        kwargs.update(use_karras_sigmas=options["sigmas"] == "karras", use_exponential_sigmas=options["sigmas"] == "exponential")
    sched = spec.cls.from_config(config, **kwargs)
    sched.set_timesteps(steps, device="cpu")
    return _stand_in_loop(sched, strength, steps, seed, s)


def _stand_in_loop(sched, strength, steps, seed, s) -> float:
    import inspect

    from pipelines.forward import q_sample
    from pipelines.img2img import strength_timesteps

    g = torch.Generator().manual_seed(seed)
    mu = torch.linspace(-1.0, 1.0, 256).reshape(1, 4, 8, 8)
    model = GaussianDenoiser(sched.alphas_cumprod, mu, s, sched.config.prediction_type)
    noise = torch.randn(mu.shape, generator=g)
    if strength is None:
        timesteps, x = sched.timesteps, noise * sched.init_noise_sigma
    else:
        timesteps, _ = strength_timesteps(sched, steps, strength)
        x0 = mu + s * torch.randn(mu.shape, generator=g)
        x = q_sample(sched, x0, noise, timesteps[:1])
    extra = {"generator": g} if "generator" in inspect.signature(sched.step).parameters else {}
    with warnings.catch_warnings():  # torchsde warns on float32 round-off at the interval's ends, every step
        warnings.filterwarnings("ignore", module="torchsde")
        for t in timesteps:
            x = sched.step(model(sched.scale_model_input(x, t), t), t, x, **extra, return_dict=False)[0]
    err = float(((x.double() - mu) ** 2).mean().sqrt() / s)
    return err if np.isfinite(err) else float("inf")
