"""Model access for the app: one small interface between the handlers and the pipeline.

The handlers never touch the pipeline directly. They call the module-level functions below
(``stream_generation``, ``generate_batch``, ``decode_latents``, ``forward_noise_latents``,
``img2img_run``, ``inpaint_run``),
which are the app's GPU functions: on a ZeroGPU Space ``@spaces.GPU`` runs them in a worker
with the GPU attached for a duration that follows the requested work (steps x images); anywhere
else the decorator is a no-op. They take only picklable arguments (ZeroGPU pickles them) and
reach the model through ``current()``, the engine the app was built with.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import queue
import threading
from dataclasses import dataclass, field

import spaces
import torch

from pipelines.forward import encode_image, q_sample
from pipelines.guidance_gradient import DEFAULT_SPACE_CLIP_MODEL, ClipGuide
from pipelines.img2img import SDEditStart
from pipelines.inpaint import InpaintStart, region_errors
from pipelines.lora.settings import Blend
from pipelines.models import EMBEDDED_MODEL, GPU_DEFAULT_MODEL, load_pipeline, model_family, model_names, model_spec
from pipelines.previews import PreviewChoice, decode_preview, preview_choice_for
from pipelines.request import GenerationRequest, RequestLimits
from pipelines.schedulers import make_scheduler, scheduler_names

log = logging.getLogger("diffusion_lab")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED_DIR = os.path.join(ROOT, "models", EMBEDDED_MODEL)

# Seconds of GPU time per (step x image) on a ZeroGPU slice, SD 1.5 at 512 px, plus a margin for
# loading, encoding and decoding. Generous on purpose: a task killed at its limit shows nothing.
GPU_SECONDS_PER_STEP_IMAGE = 0.12
GPU_SECONDS_OVERHEAD = 15
# A CLIP-guided step also runs the UNet with a backward pass, the VAE decoder forward and backward
# at full size, and CLIP: counted as this many plain steps (an estimate, not measured on a GPU).
CLIP_GUIDANCE_GPU_FACTOR = 6
# Work one request may ask for, in model calls (one UNet evaluation of one image in one guidance
# branch): the largest single /generate, 150 steps x 2 calls per step (second-order samplers) x
# 4 images x 3 branches (Perp-Neg) = 3600. No lab request may hold the pipeline slot longer than
# the largest generation (a maximal /cfg_sweep asked for 79,200 and held the slot 322 s).
MODEL_CALL_BUDGET = 3600


class RunGate:
    """Plain runs (no adapter: no blender lock) share the pipeline; loading an adapter waits until
    none runs and holds new ones back meanwhile. A count, not a thread-owned lock: Gradio resumes
    a generator on any worker thread. Needed because /lora_inspect runs outside the pipeline slot
    (issue 30: a Hub fetch must not hold the slot) and peft injects layers into the live UNet."""

    def __init__(self):
        self._cond = threading.Condition()
        self._runs = 0
        self._changing = False

    @contextlib.contextmanager
    def run(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._changing)
            self._runs += 1
        try:
            yield
        finally:
            with self._cond:
                self._runs -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def change(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._changing)
            self._changing = True
            self._cond.wait_for(lambda: self._runs == 0)
        try:
            yield
        finally:
            with self._cond:
                self._changing = False
                self._cond.notify_all()


@dataclass
class Engine:
    """The loaded model, why it was chosen, and the lock that serializes global pipeline state."""

    pipe: object
    model_id: str
    reason: str
    device: str = "cpu"
    family: str = ""  # base-model family, for LoRA presets ("tiny-shapes", "sd15", ...)
    blender: object | None = None  # pipelines.lora.LoraBlender
    previews: PreviewChoice | None = None  # decoders this model offers and the one it streams with
    clip_request: str | None = None  # --clip-guidance-model as asked (None: the default), kept across switches
    lock: threading.RLock = field(default_factory=threading.RLock)
    gate: RunGate = field(default_factory=RunGate)  # plain runs vs adapter loads (RunGate)

    @property
    def is_embedded(self) -> bool:
        return self.model_id == EMBEDDED_MODEL

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @property
    def native_size(self) -> int:
        size = self.pipe.unet.config.sample_size
        return int((size if isinstance(size, int) else size[0]) * self.vae_scale_factor)

    @property
    def scheduler_config(self):
        return self.pipe.scheduler.config

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    def defaults(self) -> tuple[str, int, float]:
        """(scheduler, steps, guidance scale) the model registry suggests for this model."""
        try:
            spec = model_spec(self.model_id)
        except ValueError:  # components injected by a test or a benchmark, not a registry model
            return "DDIM", 20, 7.5
        return spec.default_scheduler, spec.default_steps, spec.default_guidance

    def limits(self) -> RequestLimits:
        """What a request may ask of this model (sizes, LoRA presets), for GenerationRequest.from_form."""
        return RequestLimits(model=self.model_id, native_size=self.native_size, size_multiple=self.vae_scale_factor,
                             presets=tuple(p.id for p in self.lora_presets()))

    def lora_presets(self) -> list:
        """The LoRA presets of this model's family whose weights are on disk (or cached)."""
        if self.blender is None:
            return []
        from pipelines.lora.presets import available_presets

        return available_presets(self.family)

    def _load_adapters(self, names: list[str]) -> None:
        """Load presets on first use (keeps start-up fast; peft injection costs seconds)."""
        from pipelines.lora.presets import get_preset

        with self.lock:
            for name in names:
                if name not in self.blender.adapters:
                    self.blender.load_preset(get_preset(name), family=self.family)

    @contextlib.contextmanager
    def pipeline(self, blend: Blend | None = None):
        """The pipeline, with the requested LoRA blend applied for the duration of the block.

        peft's set_adapters is global pipeline state (peft issue 804): with a blender every call
        goes through ``blender.apply`` (its lock serializes blends; no LoRA = Blend()).
        """
        blend = blend or Blend()
        if self.blender is None or (not blend.adapters and not self.blender.adapters):
            # nothing loaded, nothing to switch off: no lock, so plain requests run concurrently
            if blend.adapters:
                raise ValueError(f"lora={blend.to_list()!r}: this model has no LoRA support")
            with self.gate.run():
                yield self.pipe
            return
        # the cheapest exact path: fused (merge + exact restore, a few ms a request) unless an
        # adapter is gated by steps, which needs unfused layers; BlendedPipeline.lora_path says which
        blend = dataclasses.replace(blend, fuse=not blend.has_step_ranges)
        self._load_adapters(blend.names)
        with self.blender.apply(blend) as pipe:
            yield pipe


_current: Engine | None = None


def install(engine: Engine) -> Engine:
    global _current
    _current = engine
    return engine


def current() -> Engine:
    if _current is None:
        raise RuntimeError("no engine installed: call labapp.engine.install(engine) first")
    return _current


# ------------------------------------------------------------------------------ loading


def choose_model(requested: str | None, cuda: bool) -> tuple[str, str]:
    """(model id, the reason, in words) for the model to load at start."""
    if requested:
        return requested, f"--model {requested} was requested"
    if cuda:
        return GPU_DEFAULT_MODEL, "CUDA is available, so the app defaults to Stable Diffusion 1.5"
    return EMBEDDED_MODEL, "no CUDA device: the embedded 32x32 shapes model runs fast on CPU"


def model_choices() -> list[str]:
    return model_names()


def load_engine(model_id: str, reason: str, device: str | None = None, clip_guidance_model: str | None = None) -> Engine:
    """``clip_guidance_model``: the CLIP checkpoint for CLIP guidance (``choose_clip_guide``)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = load_pipeline(model_id, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    family = _family(model_id)
    previews = preview_choice_for(pipe)
    clip_id = choose_clip_guide(clip_guidance_model, model_id, device)
    pipe.clip_guide = _load_clip_guide(clip_id, device, dtype)
    clip_note = f"; CLIP guidance: {clip_id}" if pipe.clip_guide is not None else ""
    # one line for the model (the page header says the same, with the preview decoder's reason)
    log.info("Diffusion Lab: loaded model %r on %s (%s); previews: %s%s", model_id, device, reason, previews.default,
             clip_note)
    return Engine(pipe=pipe, model_id=model_id, reason=reason, device=device, family=family, blender=_make_blender(pipe),
                  previews=previews, clip_request=clip_guidance_model)


def choose_clip_guide(requested: str | None, model_id: str, device: str) -> str | None:
    """The CLIP checkpoint for CLIP guidance (the ``classifier`` methods on a model without a
    trained classifier; pipelines/guidance_gradient.py), or None. ``requested`` (the app's
    --clip-guidance-model or its env var) wins; "none" / "off" / "" turn it off. Unset: a Hub
    model on CUDA (SD 1.5 on the Space) gets DEFAULT_SPACE_CLIP_MODEL; the embedded model (it
    ships a classifier) and CPU runs get none."""
    if requested is not None:
        return None if requested.strip().lower() in ("", "none", "off") else requested.strip()
    try:
        local = model_spec(model_id).local
    except ValueError:
        local = True  # injected components: nothing to download for them
    return DEFAULT_SPACE_CLIP_MODEL if device == "cuda" and not local else None


def _load_clip_guide(clip_id: str | None, device: str, dtype):
    """The ClipGuide, or None; a CLIP model that cannot be loaded (offline, a wrong id) leaves the
    app serving without it (CLIP guidance is then refused, naming what is missing)."""
    if clip_id is None:
        return None
    try:
        return ClipGuide.from_pretrained(clip_id, device=device, dtype=dtype)
    except Exception as error:
        log.warning("CLIP guidance off: clip_guidance_model=%r could not be loaded (%s)", clip_id, error)
        return None


def engine_from_pipe(pipe, model_id: str = "tiny-test", reason: str = "injected pipeline", family: str | None = None) -> Engine:
    pipe.set_progress_bar_config(disable=True)
    return Engine(pipe=pipe, model_id=model_id, reason=reason, device=str(pipe.device),
                  family=family or _family(model_id), blender=_make_blender(pipe), previews=preview_choice_for(pipe))


def _family(model_id: str) -> str:
    try:
        return model_family(model_id)
    except ValueError:  # not a registry model: its own family (no presets)
        return model_id


def _make_blender(pipe):
    from pipelines.lora import LoraBlender

    try:
        return LoraBlender(pipe)
    except Exception as error:  # a missing preset folder must not take the app down
        log.warning("LoRA mixer disabled: %s", error)
        return None


# ------------------------------------------------------------------------------ work per request


def _gpu_seconds(step_images: int) -> int:
    return int(GPU_SECONDS_OVERHEAD + GPU_SECONDS_PER_STEP_IMAGE * step_images)


def job_images(s: GenerationRequest) -> int:
    """Images one job makes: a list prompt (the sweep's adherence batch) is one image per prompt."""
    return s.num_prompts * s.num_images


def job_branches(s: GenerationRequest) -> int:
    """UNet branches per image and call: 1 without guidance, 2 with CFG, 3 with Perp-Neg; CLIP
    guidance adds its own UNet call (with a backward pass) for the predicted x0."""
    from pipelines.guidance import Guider

    config = s.guidance.resolved(float(s.guidance_scale), 0.0)
    return Guider(config, enabled=config.peak_scale() > 1.0).num_branches + int(uses_clip_guidance(s))


def uses_clip_guidance(s: GenerationRequest) -> bool:
    """Whether ``s`` runs CLIP guidance: a classifier method on a model with a CLIP guide and no
    trained classifier (the pipeline's own choice, pipelines/guidance_gradient.GradientGuide)."""
    from pipelines.guidance import CLASSIFIER_METHODS

    pipe = current().pipe
    return (s.guidance.method in CLASSIFIER_METHODS and getattr(pipe, "classifier", None) is None
            and getattr(pipe, "clip_guide", None) is not None)


def job_calls(s: GenerationRequest) -> int:
    """Scheduler model calls for ``s.steps`` (second-order samplers call the model twice a step)."""
    from pipelines.schedulers import sampling_schedule

    return int(sampling_schedule(s.scheduler, current().scheduler_config, s.steps, **s.scheduler_options)["num_model_calls"])


def request_cost(jobs: list[GenerationRequest], columns: int = 1) -> int:
    """Model calls of a request: calls x images x branches, summed over its jobs (x ``columns``
    for the LoRA grid, which runs each job once per column)."""
    return sum(job_calls(j) * job_images(j) * job_branches(j) for j in jobs) * columns


# ------------------------------------------------------------------------------ GPU functions


def _generation_duration(settings: GenerationRequest, preview_every: int = 0, preview_decoder: str = "linear") -> int:
    previews = 0 if not preview_every else settings.steps // max(1, preview_every) + 1
    calls = job_calls(settings) * (CLIP_GUIDANCE_GPU_FACTOR if uses_clip_guidance(settings) else 1)
    return _gpu_seconds((calls + previews) * job_images(settings))


class _Cancelled(Exception):
    pass


@spaces.GPU(duration=_generation_duration)
def stream_generation(settings: GenerationRequest, preview_every: int = 0, preview_decoder: str = "linear"):
    """Yields one StepRecord per step (record='full'), then the TracingPipelineOutput.

    The pipeline runs in a thread of its own that holds ``engine.pipeline(...)`` (and so the
    LoRA blender's lock) from start to end. Holding it in this generator would not work: Gradio
    resumes a generator on whichever worker thread is free, and the blender's lock belongs to a
    thread. Closing this generator (client gone) stops the run at its next step.
    """
    engine = current()
    records: queue.Queue = queue.Queue()
    stop = threading.Event()
    done = object()

    def check_stop(record):
        if stop.is_set():
            raise _Cancelled()

    def produce():
        try:
            with engine.pipeline(settings.blend) as pipe:
                for item in pipe.iter_steps(**settings.call_kwargs(engine.device), record="full", preview_every=int(preview_every),
                                            preview_decoder=preview_decoder, preview_targets=("x_t", "x0_guided"),
                                            step_callback=check_stop):
                    records.put(item)
        except _Cancelled:
            pass
        except BaseException as error:  # handed to the consumer, raised there
            records.put(error)
        finally:
            records.put(done)

    worker = threading.Thread(target=produce, name="diffusion-lab-generate", daemon=True)
    worker.start()
    try:
        while (item := records.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=60)  # ends at its next step; a thread left running can abort the interpreter at exit


def _batch_duration(jobs: list[GenerationRequest], record: str = "off") -> int:
    # every image counts: the sweep's adherence jobs make one image per prompt (this counted 1)
    return _gpu_seconds(sum(job_calls(j) * job_images(j) for j in jobs))


@spaces.GPU(duration=_batch_duration)
def generate_batch(jobs: list[GenerationRequest], record: str = "off") -> list:
    """Runs every job to the end; returns their TracingPipelineOutputs (trace when recording)."""
    engine = current()
    outputs = []
    for job in jobs:
        with engine.pipeline(job.blend) as pipe:
            outputs.append(pipe(**job.call_kwargs(engine.device), record=record))
    return outputs


def _attention_duration(settings: GenerationRequest, preview_decoder: str = "linear") -> int:
    return _generation_duration(settings, 1, preview_decoder)


@spaces.GPU(duration=_attention_duration)
def attention_run(settings: GenerationRequest, preview_decoder: str = "linear"):
    """One generation with the conditional branch's cross-attention maps on every step record
    (record_attention=True, pipelines/attention.py) and an x0 preview per step (issue 32)."""
    engine = current()
    with engine.pipeline(settings.blend) as pipe:
        return pipe(**settings.call_kwargs(engine.device), record_attention=True, preview_every=1,
                    preview_decoder=preview_decoder, preview_targets=("x0_guided",))


@spaces.GPU(duration=20)
def decode_latents(latents: torch.Tensor, decoder: str = "vae") -> list:
    """UNet-space latents (B, C, h, w) -> PIL images with one of the preview decoders."""
    pipe = current().pipe
    with torch.no_grad():
        return decode_preview(latents.to(pipe.device), decoder, factors=pipe.preview_factors, vae=pipe.vae,
                              taesd=pipe.preview_taesd)


@spaces.GPU(duration=20)
def forward_noise_latents(image: torch.Tensor, timestep: int, seed: int) -> dict:
    """The forward process q(x_t | x_0) with the model's own schedule (scheduler.add_noise).

    ``image``: (1, 3, H, W) in [-1, 1] at the model's size. Returns the noised image in pixel
    space and the noised latent (what the UNet would see), both from the same noise seed, and
    the clean latent decoded (the VAE round trip, for reference).
    """
    engine = current()
    pipe = engine.pipe
    sched = make_scheduler("DDPM", engine.scheduler_config)
    t = torch.tensor([int(timestep)])
    generator = torch.Generator("cpu").manual_seed(int(seed))
    with torch.no_grad():
        z0 = encode_image(pipe, image, sample=False).float().cpu()
        z_noise = torch.randn(z0.shape, generator=generator)
        pixel_noise = torch.randn(image.shape, generator=generator)
        z_t = q_sample(sched, z0, z_noise, t)
        x_t = q_sample(sched, image.float().cpu(), pixel_noise, t)
    return {"z0": z0, "z_t": z_t, "x_t_pixels": x_t}


def _img2img_duration(settings: GenerationRequest, image: torch.Tensor, strength: float) -> int:
    return _gpu_seconds(math.ceil(settings.steps * strength) * settings.num_images)


@spaces.GPU(duration=_img2img_duration)
def img2img_run(settings: GenerationRequest, image: torch.Tensor, strength: float):
    """img2img (SDEdit, pipelines/img2img.py), record='full': ``image`` (1, 3, H, W) in [-1, 1] at
    the settings' size, noised to t ~ strength x T, denoised on the grid's tail."""
    engine = current()
    with engine.pipeline(settings.blend) as pipe:
        return pipe(**settings.call_kwargs(engine.device), start=SDEditStart(image, strength), record="full")


def _inpaint_duration(settings: GenerationRequest, image, mask, strength: float, method=None) -> int:
    return _img2img_duration(settings, image, strength)


@spaces.GPU(duration=_inpaint_duration)
def inpaint_run(settings: GenerationRequest, image: torch.Tensor, mask: torch.Tensor, strength: float,
                method: str | None = None) -> dict:
    """Inpainting (pipelines/inpaint.py), record='full': ``image`` (1, 3, H, W) in [-1, 1] and ``mask``
    (1, 1, H, W) in {0, 1} (1 = regenerate) at the settings' size. Returns the output, the method
    run, the latent mask and the per-step known / unknown x0 errors (``region_errors``)."""
    start = InpaintStart(image, mask, strength, method)
    engine = current()
    with engine.pipeline(settings.blend) as pipe:
        output = pipe(**settings.call_kwargs(engine.device), start=start, record="full")
        if start.z0 is None:  # the 9-channel method at strength 1 never encodes the image
            with torch.no_grad():
                start.z0 = encode_image(pipe, image, sample=False)
    return {"output": output, "method": start.method, "mask_latent": start.mask_latent[:1].cpu(),
            "regions": region_errors(output.trace, start)}


def _grid_duration(settings: GenerationRequest) -> int:
    return _gpu_seconds(job_calls(settings) * (len(settings.blend.adapters) + 2))


@spaces.GPU(duration=_grid_duration)
def lora_grid_images(settings: GenerationRequest) -> tuple[list[str], list]:
    """pipelines.lora.lora_grid: none / each adapter alone / the blend, one seed. (columns, images)"""
    from pipelines.lora import lora_grid

    engine = current()
    blend = settings.blend
    engine._load_adapters(blend.names)
    kwargs = settings.call_kwargs(engine.device)
    for key in ("prompt", "generator", "num_images_per_prompt"):
        kwargs.pop(key)
    grid = lora_grid(engine.blender, settings.prompt, blend, seed=settings.seed, **kwargs)
    return grid.columns, grid.images[0]


def _kind_duration(kind, prompts, *args, steps: int = 25, **kwargs) -> int:
    return _gpu_seconds(2 * steps * len(prompts))


@spaces.GPU(duration=_kind_duration)
def measure_guidance_kind(kind: str, prompts: list[str], seeds: list[int], targets=None, mentioned=None, *,
                          cfg_scale: float = 1.0, classifier_scale: float = 0.0, steps: int = 25,
                          scheduler: str | None = None, record: str = "off"):
    """pipelines.guidance_eval.run_kind on the loaded model, no LoRA (issue 15): images, adherence,
    counted model calls and seconds per image of one guidance kind."""
    from pipelines.guidance_eval import run_kind

    with current().pipeline(None) as pipe:
        return run_kind(pipe, prompts, seeds, targets, mentioned, kind, cfg_scale=cfg_scale,
                        classifier_scale=classifier_scale, steps=steps, scheduler=scheduler, record=record,
                        keep_images=True)


def known_schedulers() -> list[str]:
    return scheduler_names()
