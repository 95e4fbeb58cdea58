"""One generation request, from a tab (or an API client) to the pipeline: a type of its own.

``GenerationRequest`` holds what one run needs, nested the way the pipeline takes it: the
prompt, negative prompt, seed and size, the steps and scheduler (spacing and sigma options as
None when the model's own are meant, never the UI's "model default"), a ``GuidanceConfig``
(pipelines/guidance.py) and a LoRA ``Blend`` (pipelines/lora/settings.py). Those types validate
themselves; ``__post_init__`` checks the rest, so any request that exists can run.

``GenerationRequest.from_form`` is the one place the flat form (the /generate endpoint's
parameters, by name and default) becomes a request: each value checked against the app's ranges
(``MAX_STEPS``, ``GUIDANCE_RANGE``, ... and the loaded model's ``RequestLimits``), each refusal a
``FieldError`` naming the field. ``to_dict`` writes the flat settings document the UI shows and
the PNG carries; ``call_kwargs(device)`` is the pipeline call.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from . import fields
from .fields import FieldError
from .guidance import (DEFAULT_CLASSIFIER_SCALE, GUIDANCE_METHODS, SCALE_SCHEDULES, APGParams, CFGZeroParams,
                       GuidanceConfig, PerpNegParams)
from .lora.settings import Blend
from .prompt_weights import PROMPT_WEIGHTINGS, parse_emphasis
from .schedulers import SIGMA_KINDS, TIMESTEP_SPACINGS, scheduler_names

# The app's ranges: its policy for one request (the pipeline alone accepts what diffusers does)
MAX_STEPS = 150
MAX_IMAGES = 4
GUIDANCE_RANGE = (0.0, 30.0)
CLASSIFIER_SCALE_RANGE = (0.0, 100.0)  # s of classifier guidance (issue 15); default DEFAULT_CLASSIFIER_SCALE
# The form's words for "the model's own choice" (the request itself says None)
MODEL_DEFAULT_SPACING = "model default"
DEFAULT_SIGMAS = "default"
SPACINGS = (MODEL_DEFAULT_SPACING,) + TIMESTEP_SPACINGS


@dataclass(frozen=True)
class RequestLimits:
    """What the loaded model allows: its id, sizes (half to twice the native size, in multiples of
    the VAE factor) and LoRA presets (None: any adapter name)."""

    model: str
    native_size: int
    size_multiple: int
    presets: tuple[str, ...] | None = ()

    @property
    def size_range(self) -> tuple[int, int, int]:
        """(min, max, step) in pixels for width and height."""
        native, step = self.native_size, self.size_multiple
        return max(step, native // 2), native * 2, step


def schedule_options(timestep_spacing=MODEL_DEFAULT_SPACING, sigmas=DEFAULT_SIGMAS) -> dict:
    """The form's spacing and sigma choices as scheduler options; the model's own is left out."""
    spacing = fields.choice("timestep_spacing", timestep_spacing, SPACINGS)
    sigmas = fields.choice("sigmas", sigmas, SIGMA_KINDS)
    options = {}
    if spacing != MODEL_DEFAULT_SPACING:
        options["timestep_spacing"] = spacing
    if sigmas != DEFAULT_SIGMAS:
        options["sigmas"] = sigmas
    return options


def progress_interval(start: float, end: float) -> tuple[float, float] | None:
    """The form's guidance interval [start, end] of sampling progress as GuidanceConfig's (lo, hi]
    (``in_guidance_interval``: lo < p <= hi); None covers every step. Progress 0 is the first step,
    so a start of 0 becomes lo = -1 to include it."""
    if (start, end) == (0.0, 1.0):
        return None
    return (start if start > 0 else -1.0), end


INTERVAL_FIELDS = ("guidance_interval_start", "guidance_interval_end")  # from_form's two fields for one interval


def interval_fields(interval) -> tuple[float, float]:
    """The inverse of ``progress_interval``: GuidanceConfig's interval (None, or (lo, hi] with lo -1 for
    a start at the first step) -> the form's (start, end)."""
    if interval is None:
        return 0.0, 1.0
    lo, hi = interval
    return max(0.0, lo), hi


def image_seeds(seed: int, count: int) -> list[int]:
    """``count`` seeds from ``seed`` up (wrapping at MAX_SEED), one per image of a batch, as AUTOMATIC1111
    numbers a batch (``GenerationRequest.image_seeds``)."""
    return [(seed + i) % (fields.MAX_SEED + 1) for i in range(count)]


def _fraction_guidance() -> GuidanceConfig:
    return GuidanceConfig(interval_space="fraction")


@dataclass(frozen=True)
class GenerationRequest:
    """One run: what to draw, from which noise, how big, with which sampler, guidance and LoRA blend."""

    prompt: str | list[str]
    negative_prompt: str = ""
    seed: int = 0
    width: int = 32
    height: int = 32
    num_images: int = 1
    steps: int = 25
    guidance_scale: float = 7.5
    guidance: GuidanceConfig = field(default_factory=_fraction_guidance)
    blend: Blend = field(default_factory=Blend)
    scheduler: str = "DDIM"
    timestep_spacing: str | None = None  # None: the model's own
    sigmas: str | None = None  # None: the scheduler's default sigmas
    model: str = ""  # the model the request ran on (the settings document names it)
    # how the prompts are read: "a1111" = AUTOMATIC1111's emphasis syntax, (red:1.4) / (red) / [red]
    # (pipelines/prompt_weights.py, encoded with compel); None = plain text, brackets and all
    prompt_weighting: str | None = "a1111"

    def __post_init__(self):
        prompts = self.prompt if isinstance(self.prompt, list) else [self.prompt]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise FieldError("prompt", self.prompt, "text, or a non-empty list of texts")
        fields.text("negative_prompt", self.negative_prompt)
        if self.prompt_weighting not in PROMPT_WEIGHTINGS:
            raise FieldError("prompt_weighting", self.prompt_weighting, f"one of {list(PROMPT_WEIGHTINGS)}")
        if self.prompt_weighting is not None:  # malformed emphasis is refused here, naming the field
            for name, text in [("prompt", p) for p in prompts] + [("negative_prompt", self.negative_prompt)]:
                try:
                    parse_emphasis(text, name)
                except ValueError as error:
                    raise FieldError(name, text, str(error).removeprefix(f"{name}: ")) from None
        fields.integer("seed", self.seed, 0, fields.MAX_SEED)
        for name in ("width", "height", "num_images", "steps"):
            fields.integer(name, getattr(self, name), 1, math.inf)
        fields.number("guidance_scale", self.guidance_scale, -math.inf, math.inf)
        if not isinstance(self.guidance, GuidanceConfig):
            raise FieldError("guidance", self.guidance, "a pipelines.guidance.GuidanceConfig")
        if not isinstance(self.blend, Blend):
            raise FieldError("blend", self.blend, "a pipelines.lora.settings.Blend")
        fields.choice("scheduler", self.scheduler, scheduler_names())
        if self.timestep_spacing is not None:
            fields.choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        if self.sigmas is not None:
            fields.choice("sigmas", self.sigmas, [k for k in SIGMA_KINDS if k != DEFAULT_SIGMAS])

    # ------------------------------------------------------------------ from the form

    @classmethod
    def from_form(cls, limits: RequestLimits, prompt, negative_prompt, scheduler, steps, guidance_scale, seed,
                  width=0, height=0, num_images=1, guidance_method="cfg", guidance_rescale=0.0,
                  guidance_schedule="constant", guidance_interval_start=0.0, guidance_interval_end=1.0,
                  apg_momentum=-0.5, apg_norm_threshold=15.0, apg_eta=0.0, cfg_zero_init_steps=1, perp_neg_scale=1.0,
                  timestep_spacing=MODEL_DEFAULT_SPACING, sigmas=DEFAULT_SIGMAS, lora="",
                  classifier_scale=DEFAULT_CLASSIFIER_SCALE) -> "GenerationRequest":
        """The flat form (the /generate endpoint's parameters, by name and default; width or height
        0: the model's native size), every value checked against the app's ranges."""
        lo, hi, multiple = limits.size_range
        steps = fields.integer("steps", steps, 1, MAX_STEPS)
        method = fields.choice("guidance_method", guidance_method, GUIDANCE_METHODS)
        negative = fields.text("negative_prompt", negative_prompt)
        if method == "perp-neg" and not negative.strip():
            raise FieldError("negative_prompt", negative, "a non-empty negative prompt when guidance_method='perp-neg'")
        start = fields.number("guidance_interval_start", guidance_interval_start, 0.0, 1.0)
        end = fields.number("guidance_interval_end", guidance_interval_end, 0.0, 1.0)
        if start >= end:
            raise FieldError("guidance_interval_start", start, f"less than guidance_interval_end={end:g}")
        prompt = fields.text("prompt", prompt)
        scheduler = fields.choice("scheduler", scheduler, scheduler_names())
        options = schedule_options(timestep_spacing, sigmas)
        guidance = GuidanceConfig(
            method=method,
            rescale=fields.number("guidance_rescale", guidance_rescale, 0.0, 1.0),
            schedule=fields.choice("guidance_schedule", guidance_schedule, SCALE_SCHEDULES),
            interval=progress_interval(start, end),
            interval_space="fraction",
            apg=APGParams(momentum=fields.number("apg_momentum", apg_momentum, -1.0, 1.0),
                          norm_threshold=fields.number("apg_norm_threshold", apg_norm_threshold, 0.0, 100.0),
                          eta=fields.number("apg_eta", apg_eta, 0.0, 1.0)),
            cfgzero=CFGZeroParams(zero_init_steps=fields.integer("cfg_zero_init_steps", cfg_zero_init_steps, 0, steps)),
            perpneg=PerpNegParams(negative_scale=fields.number("perp_neg_scale", perp_neg_scale, 0.0, 10.0)),
            classifier_scale=fields.number("classifier_scale", classifier_scale, *CLASSIFIER_SCALE_RANGE),
        )
        guidance_scale = fields.number("guidance_scale", guidance_scale, *GUIDANCE_RANGE)
        return cls(
            prompt=prompt,
            negative_prompt=negative,
            seed=fields.integer("seed", seed, 0, fields.MAX_SEED),
            width=fields.integer("width", width or limits.native_size, lo, hi, multiple_of=multiple),
            height=fields.integer("height", height or limits.native_size, lo, hi, multiple_of=multiple),
            num_images=fields.integer("num_images", num_images, 1, MAX_IMAGES),
            steps=steps,
            guidance_scale=guidance_scale,
            guidance=guidance,
            blend=Blend.parse(lora, limits.presets, field="lora"),
            scheduler=scheduler,
            timestep_spacing=options.get("timestep_spacing"),
            sigmas=options.get("sigmas"),
            model=limits.model,
        )

    # ------------------------------------------------------------------ to the pipeline

    @property
    def scheduler_options(self) -> dict:
        """Options for ``pipelines.schedulers.make_scheduler`` (only what differs from the model's)."""
        options = {"timestep_spacing": self.timestep_spacing, "sigmas": self.sigmas}
        return {k: v for k, v in options.items() if v is not None}

    @property
    def num_prompts(self) -> int:
        return len(self.prompt) if isinstance(self.prompt, list) else 1

    @property
    def image_seeds(self) -> list[int]:
        """One seed per image of the batch (prompts x images, diffusers' order): ``seed``, ``seed + 1``,
        ... (wrapping at MAX_SEED), as AUTOMATIC1111 numbers a batch. Image i is the image a one-image
        request with seed ``image_seeds[i]`` makes, so one image of a batch can be made again alone."""
        return image_seeds(self.seed, self.num_prompts * self.num_images)

    def call_kwargs(self, device) -> dict:
        """The pipeline call (TracingStableDiffusionPipeline.__call__ / iter_steps) for this request,
        its noise seeded on ``device`` (on CPU for mps, whose generators diffusers does not take): one
        generator per image (``image_seeds``), so an image's initial noise and every noise a stochastic
        sampler adds to it come from its own seed, whatever else is in the batch. (DPM++ SDE is the
        exception: its Brownian tree draws for the whole batch at once.) The blend is not an argument:
        ``LoraBlender.apply`` puts it on the pipeline around the call."""
        import torch

        device = str(device)
        generator_device = "cpu" if device == "mps" else device
        generators = [torch.Generator(device=generator_device).manual_seed(s) for s in self.image_seeds]
        generator = generators[0] if len(generators) == 1 else generators
        return dict(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt or None,
            num_inference_steps=self.steps,
            guidance_scale=float(self.guidance_scale),
            guidance=self.guidance,
            height=self.height,
            width=self.width,
            num_images_per_prompt=self.num_images,
            generator=generator,
            scheduler=self.scheduler,
            scheduler_options=self.scheduler_options,
            prompt_weighting=self.prompt_weighting,
        )

    def replace(self, **changes) -> "GenerationRequest":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the settings document

    def to_dict(self) -> dict:
        """The flat settings document (shown in the UI, stored in the PNG): the form's names, with
        the guidance interval as GuidanceConfig holds it and the blend as a list of dicts."""
        g = self.guidance
        return {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "model": self.model,
            "scheduler": self.scheduler, "timestep_spacing": self.timestep_spacing or MODEL_DEFAULT_SPACING,
            "sigmas": self.sigmas or DEFAULT_SIGMAS, "steps": self.steps, "guidance_method": g.method,
            "guidance_scale": self.guidance_scale, "guidance_rescale": g.rescale or 0.0,
            "guidance_schedule": g.schedule, "guidance_interval": g.interval, "apg_momentum": g.apg.momentum,
            "apg_norm_threshold": g.apg.norm_threshold, "apg_eta": g.apg.eta,
            "cfg_zero_init_steps": g.cfgzero.zero_init_steps, "perp_neg_scale": g.perpneg.negative_scale,
            "seed": self.seed, "width": self.width, "height": self.height, "num_images": self.num_images,
            "lora": self.blend.to_list(), "classifier_scale": g.classifier_scale,
            "prompt_weighting": self.prompt_weighting or "none",
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
