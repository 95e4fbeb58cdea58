"""TracingStableDiffusionPipeline: diffusers' StableDiffusionPipeline, with the loop made visible.

A subclass of diffusers' ``StableDiffusionPipeline``: same constructor (legacy scheduler configs
normalized), loader mixins (LoRA, textual inversion, IP-Adapter, single-file checkpoints),
``encode_prompt``, ``check_inputs``, ``prepare_latents``, properties, ``callback_on_step_end``,
``return_dict=False`` tuple, output class (a ``StableDiffusionPipelineOutput``). With plain CFG
its images equal diffusers' for the same inputs (tests/pipelines/test_pipeline_contract.py).

On top: guidance methods (``guidance=GuidanceConfig``), a registry scheduler per call
(``scheduler="DPM++ 2M Karras"``, a private copy; without it ``pipe.scheduler`` runs and is
advanced, as in diffusers), one ``StepRecord`` per step (``record="light"|"full"``,
``step_callback``, ``pipe.iter_steps(...)``), previews, and an ``on_step_begin`` hook for
per-step adapter weights.

The denoising loop is written once, as the generator ``iter_steps``; ``__call__`` drains it.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
from typing import Any, Callable

import torch
from diffusers import StableDiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.utils import deprecate
from diffusers.utils.torch_utils import randn_tensor

from . import inputs
from .attention import AttentionRecorder, check_record_attention
from .prompt_weights import check_prompt_weighting, plain_text
from .guidance import GuidanceConfig, Guider
from .prediction import output_from_x0, predicted_x0
from .record import StepRecord, TracingPipelineOutput, build_record
from .schedulers import ScheduleTables, check_schedule, eval_point, make_scheduler, starts_scheduler_step

logger = logging.getLogger(__name__)


def _with_record_attention(signature: inspect.Signature) -> inspect.Signature:
    """The loop's signature as ``iter_steps`` takes it: ``record_attention`` added, the private
    ``_attention`` left out."""
    params = [p for p in signature.parameters.values() if p.name != "_attention"]
    extra = inspect.Parameter("record_attention", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool | str")
    return signature.replace(parameters=params[:-1] + [extra, params[-1]])  # before **kwargs


class TracingStableDiffusionPipeline(StableDiffusionPipeline):
    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker: bool = False,
    ):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self.preview_factors: torch.Tensor | None = None  # (C + 1, 3), see previews.py
        self.preview_taesd = None  # an AutoencoderTiny, when the caller has one
        self._scheduler_templates: dict = {}
        self._guidance_config: GuidanceConfig | None = None
        self._guider_enabled = False

    # ----------------------------------------------------------------------------- stock's steps

    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, clip_skip=None):
        """diffusers' ``encode_prompt`` (see ``inputs.encode_prompt``); ``clip_skip`` works on
        transformers 5 too."""
        return inputs.encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance,
                                    negative_prompt, prompt_embeds, negative_prompt_embeds, lora_scale, clip_skip)

    def check_inputs(self, prompt, height, width, callback_steps, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                     callback_on_step_end_tensor_inputs=None):
        """diffusers' ``check_inputs`` (see ``inputs.check_inputs``)."""
        inputs.check_inputs(
            prompt=prompt, height=height, width=width, vae_scale_factor=self.vae_scale_factor,
            callback_steps=callback_steps, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            allowed_tensor_inputs=self._callback_tensor_inputs,
        )

    def prepare_latents(self, batch_size, num_channels_latents, height, width, dtype, device, generator,
                        latents=None, scheduler=None):
        """diffusers' ``prepare_latents``; ``scheduler`` (default ``self.scheduler``) gives the
        initial noise sigma. A wrong ``latents`` shape is refused here, not deep in the UNet."""
        shape = (batch_size, num_channels_latents, int(height) // self.vae_scale_factor, int(width) // self.vae_scale_factor)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"generator is a list of {len(generator)} generators; the batch has {batch_size} images")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents shape {tuple(latents.shape)} must be {shape}")
            latents = latents.to(device)
        return latents * (scheduler or self.scheduler).init_noise_sigma

    def prepare_extra_step_kwargs(self, generator, eta, scheduler=None):
        """diffusers' ``prepare_extra_step_kwargs`` for ``scheduler`` (default ``self.scheduler``)."""
        params = inspect.signature((scheduler or self.scheduler).step).parameters
        kwargs = {"eta": eta} if "eta" in params else {}
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    @property
    def do_classifier_free_guidance(self):
        """Stock's rule (guidance_scale > 1, no guidance-embedded UNet); with a GuidanceConfig:
        whether any step of it guides."""
        if self._guidance_config is not None:
            return self._guider_enabled
        return super().do_classifier_free_guidance

    # ----------------------------------------------------------------------------- our helpers

    def fresh_scheduler(self, name: str, options: dict | None = None):
        """A private scheduler for one call: registry scheduler ``name`` built from the model's
        scheduler config. Templates are cached: some classes (DPM2) spend seconds in ``__init__``;
        a deepcopy takes microseconds."""
        key = (name, json.dumps(options or {}, sort_keys=True, default=str), self.scheduler.to_json_string())
        template = self._scheduler_templates.get(key)
        if template is None:
            template = make_scheduler(name, self.scheduler.config, **(options or {}))
            self._scheduler_templates[key] = template
        return copy.deepcopy(template)

    def _encode_branches(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
                         num_branches, perp_neg, lora_scale, clip_skip, device, weighting=None):
        """(UNet text batch [uncond,] cond[, negative], negative_prompt_embeds as stock returns them).

        Perp-Neg's uncond branch is the empty prompt; its negative prompt is a third branch. ``weighting``:
        the prompts' emphasis syntax (prompt_weights.py); None: ``self.encode_prompt``, as stock.
        """
        n = num_images_per_prompt
        encode_prompt = self.encode_prompt if weighting is None else functools.partial(
            inputs.encode_prompt, self, weighting=weighting)
        if not perp_neg:
            cond, uncond = encode_prompt(prompt, device, n, num_branches > 1, negative_prompt, prompt_embeds,
                                              negative_prompt_embeds, lora_scale, clip_skip)
            return (torch.cat([uncond, cond]) if num_branches > 1 else cond), uncond
        cond, uncond = encode_prompt(prompt, device, n, True, None, prompt_embeds, None, lora_scale, clip_skip)
        _, negative = encode_prompt(None, device, n, True, negative_prompt, cond[::n], negative_prompt_embeds,
                                         lora_scale)
        return torch.cat([uncond, cond, negative]), uncond

    # ----------------------------------------------------------------------------- the call

    def __call__(self, *args, **kwargs):
        """Run ``iter_steps`` to the end and return its output (arguments: see ``iter_steps``)."""
        result = None
        for result in self.iter_steps(*args, **kwargs):
            pass
        return result

    def iter_steps(self, *args, record_attention: bool | str = False, **kwargs):
        """``record_attention`` (False, True or "levels"): record the conditional branch's cross-attention
        maps on each step record (``StepRecord.attention``, pipelines/attention.py); with record="off" it
        records in "light" mode. Off, no processor is touched. The other arguments: see ``_iter_steps``."""
        check_record_attention(record_attention)
        if not record_attention:
            yield from self._iter_steps(*args, **kwargs)
            return
        if kwargs.get("record", "off") == "off":
            kwargs["record"] = "light"
        # the processors go back when the loop ends, fails or is closed early (a stopped generation)
        with AttentionRecorder(self.unet, levels=record_attention == "levels") as recorder:
            yield from self._iter_steps(*args, _attention=recorder, **kwargs)

    @torch.no_grad()
    def _iter_steps(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # stock's default (never mutated)
        *,
        scheduler: str | None = None,
        scheduler_options: dict | None = None,
        guidance: GuidanceConfig | None = None,
        record: str = "off",
        step_callback: Callable[[StepRecord], None] | None = None,
        preview_every: int = 0,
        preview_decoder: str = "linear",
        preview_targets: tuple[str, ...] = ("x0_guided",),
        preview_taesd=None,
        on_step_begin: Callable[[int, int], dict | None] | None = None,
        start: Callable | None = None,
        prompt_weighting: str | None = None,
        _attention: AttentionRecorder | None = None,
        **kwargs,
    ):
        """Generate, yielding one ``StepRecord`` per scheduler step (when recording), then the output.

        Diffusers' arguments keep their meaning (deprecated ``callback`` / ``callback_steps``
        included). Added: ``scheduler`` (registry name: a private scheduler from the model's
        config; None: ``self.scheduler``, advanced as in diffusers), ``scheduler_options``
        (make_scheduler options), ``guidance`` (method + knobs; its None scale / rescale take
        ``guidance_scale`` / ``guidance_rescale``), ``record`` ("off": no record, no extra work;
        "light": scalars, x_t, x0_guided; "full": every tensor), ``step_callback`` (called with
        each record as it is made), ``preview_every`` (previews at steps 0, k, 2k, ... and the
        last), ``preview_decoder``, ``preview_targets``, ``preview_taesd``,
        ``on_step_begin(step, num_steps) -> dict | None`` (before the step's first UNet call; its
        dict becomes ``StepRecord.adapters``), ``start`` (begin from an x_t made elsewhere instead of
        pure noise: ``start(pipe, sched, timesteps, num_inference_steps, batch, dtype, device,
        generator) -> (timesteps, num_inference_steps, latents)``; img2img, see img2img.py; its optional
        ``model_input`` / ``after_step`` hooks: inpainting, see inpaint.py), ``prompt_weighting`` (None: the
        prompt is plain text, as in diffusers; "a1111": AUTOMATIC1111's emphasis syntax ``(red:1.4)``,
        ``(red)``, ``[red]``, encoded with compel, see prompt_weights.py), ``record_attention`` (see
        ``iter_steps``).
        ``step_callback`` or previews with record="off" record in "light" mode.
        """
        callback, callback_steps = kwargs.pop("callback", None), kwargs.pop("callback_steps", None)
        for name, value in (("callback", callback), ("callback_steps", callback_steps)):
            if value is not None:
                deprecate(name, "1.0.0", f"Passing `{name}` to `__call__` is deprecated, use `callback_on_step_end`")
        if kwargs:
            logger.warning(f"ignored unknown arguments {sorted(kwargs)} (diffusers ignores them too)")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 0. Default height and width to the UNet's
        if not height or not width:
            size = self.unet.config.sample_size
            h, w = (size, size) if isinstance(size, int) else size
            height, width = h * self.vae_scale_factor, w * self.vae_scale_factor
        preview_targets = tuple(preview_targets)

        # 1. Check inputs
        self.check_inputs(prompt, height, width, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          ip_adapter_image, ip_adapter_image_embeds, callback_on_step_end_tensor_inputs)
        inputs.check_trace_options(
            num_inference_steps=num_inference_steps, timesteps=timesteps, sigmas=sigmas,
            guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, guidance=guidance,
            negative_prompt=negative_prompt, negative_prompt_embeds=negative_prompt_embeds,
            num_images_per_prompt=num_images_per_prompt, eta=eta, record=record, preview_every=preview_every,
            preview_decoder=preview_decoder, preview_targets=preview_targets, scheduler=scheduler,
            scheduler_options=scheduler_options, step_callback=step_callback, on_step_begin=on_step_begin,
        )
        check_prompt_weighting(prompt_weighting)
        if record == "off" and (step_callback is not None or preview_every > 0):
            record = "light"
        recording = record != "off"
        full = record == "full"

        # 2. Call state (the properties) and guidance: one branch (cond) unless some step's scale
        # exceeds 1 and the UNet is not guidance-embedded, like diffusers
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        config = (guidance or GuidanceConfig()).resolved(guidance_scale, guidance_rescale)
        guided_unet = self.unet.config.time_cond_proj_dim is not None
        guider = Guider(config, enabled=config.peak_scale() > 1.0 and not guided_unet)
        self._guidance_config, self._guider_enabled = guidance, guider.enabled
        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
        device = self._execution_device
        # classifier guidance (issue 15): targets from the prompt; CG alone sends the UNet the empty prompt
        words = plain_text(prompt, prompt_weighting)  # the classifier reads the words, not the emphasis syntax
        unet_prompt = guider.bind_classifier(getattr(self, "classifier", None), words, prompt_embeds,
                                             num_images_per_prompt, device,
                                             clip_guide=getattr(self, "clip_guide", None), vae=self.vae)
        prompt = prompt if unet_prompt is words else unet_prompt
        record_text = config.method != "classifier"  # classifier guidance alone: no branch sees the prompt

        # 3. Encode input prompt (cross_attention_kwargs["scale"] scales text-encoder LoRA layers too)
        lora_scale = cross_attention_kwargs.get("scale") if cross_attention_kwargs is not None else None
        prompt_embeds, negative_prompt_embeds = self._encode_branches(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
            guider.num_branches, config.method == "perp-neg", lora_scale, clip_skip, device, prompt_weighting,
        )
        added_cond_kwargs = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device, batch_size * num_images_per_prompt, guider.enabled)
            if guider.num_branches == 3:  # Perp-Neg: the negative branch gets the unconditional image
                image_embeds = [torch.cat([e, e.chunk(2)[0]]) for e in image_embeds]
            added_cond_kwargs = {"image_embeds": image_embeds}

        # 4. Prepare timesteps: pipe.scheduler, or a private registry scheduler for this call
        sched = self.scheduler if scheduler is None else self.fresh_scheduler(scheduler, scheduler_options)
        try:
            timesteps, num_inference_steps = retrieve_timesteps(sched, num_inference_steps, device, timesteps, sigmas)
        except ValueError as error:  # e.g. LCM above its 50 original steps: name the combination
            if scheduler is None:
                raise
            raise ValueError(f"scheduler={scheduler!r} at {num_inference_steps} step(s): {error}") from None
        if scheduler is not None and sigmas is None:  # a registry combination that cannot make an image: refused here
            check_schedule(sched, scheduler, scheduler_options, num_inference_steps, from_noise=start is None)
        num_steps = int(getattr(sched, "num_inference_steps", None) or num_inference_steps)

        # 5. Prepare latent variables: pure noise, or an x_t from ``start`` on the tail of the grid
        if self.unet.config.in_channels != self.vae.config.latent_channels and not hasattr(start, "model_input"):
            raise ValueError(f"this UNet takes {self.unet.config.in_channels} input channels (an inpainting model): it "
                             "needs an image and a mask (pipelines/inpaint.py), not text-to-image or img2img")
        if start is None:
            latents = self.prepare_latents(batch_size * num_images_per_prompt, self.unet.config.in_channels, height,
                                           width, prompt_embeds.dtype, device, generator, latents, scheduler=sched)
        else:
            timesteps, num_inference_steps, latents = start(self, sched, timesteps, num_inference_steps,
                                                            batch_size * num_images_per_prompt, prompt_embeds.dtype,
                                                            device, generator)
            num_steps = num_inference_steps
        # inpainting (pipelines/inpaint.py): extra UNet input channels, and a step-end blend
        model_input, after_step = getattr(start, "model_input", None), getattr(start, "after_step", None)
        grid_offset = len(sched.timesteps) - len(timesteps)  # loop index -> index in the scheduler's tables

        # 6. Extra step kwargs; guidance-scale embedding for guidance-distilled (LCM) UNets
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta, scheduler=sched)
        timestep_cond = None
        if guided_unet:
            w = torch.tensor(self.guidance_scale - 1).repeat(batch_size * num_images_per_prompt)
            timestep_cond = self.get_guidance_scale_embedding(
                w, embedding_dim=self.unet.config.time_cond_proj_dim).to(device=device, dtype=latents.dtype)
        prediction_type = sched.config.prediction_type
        tables = ScheduleTables(sched) if recording or guider.needs_eval_point else None  # one copy, before the loop
        trace: list[StepRecord] = []
        preview_kw = dict(factors=self.preview_factors, vae=self.vae, taesd=preview_taesd or self.preview_taesd)

        def finish(record: StepRecord) -> StepRecord:
            record.model_calls = model_calls
            trace.append(record)
            if step_callback is not None:
                step_callback(record)
            return record

        # 7. Denoising loop
        num_warmup_steps = len(timesteps) - num_inference_steps * sched.order
        self._num_timesteps = len(timesteps)
        step, model_calls, pending, scale = -1, 0, None, 1.0
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                new_step = starts_scheduler_step(sched)
                if new_step:
                    step += 1
                    adapters = on_step_begin(step, num_steps) if on_step_begin is not None else None

                # branches in the UNet batch; a step-end callback may drop the uncond one (CFG cutoff)
                num_branches = prompt_embeds.shape[0] // latents.shape[0]
                latent_model_input = torch.cat([latents] * num_branches) if num_branches > 1 else latents
                latent_model_input = sched.scale_model_input(latent_model_input, t)
                if _attention is not None:  # the conditional rows [uncond,] cond[, negative], first evaluation only
                    cond = 1 if num_branches > 1 else 0
                    rows = slice(cond * latents.shape[0], (cond + 1) * latents.shape[0])
                    _attention.expect(rows if new_step and record_text else None, latents.shape[-2:])
                noise_pred = self.unet(
                    latent_model_input if model_input is None else model_input(latent_model_input, num_branches), t, encoder_hidden_states=prompt_embeds, timestep_cond=timestep_cond,
                    cross_attention_kwargs=self.cross_attention_kwargs, added_cond_kwargs=added_cond_kwargs,
                    return_dict=False,
                )[0]
                model_calls += 1
                attention_maps = _attention.take() if _attention is not None else None
                branches = noise_pred.chunk(num_branches) if num_branches > 1 else [noise_pred]

                # guidance: the guider's method and scale; with plain CFG a step-end callback may
                # change pipe._guidance_scale, as in stock (read only then: calls share the attribute)
                point = eval_point(sched, tables, grid_offset + i) if tables is not None else None
                if new_step:
                    scale = guider.scale_at(step, num_steps, None if point is None else point.noise_sigma)
                    if guidance is None and guider.enabled and callback_on_step_end is not None:
                        scale = self.guidance_scale
                if num_branches == 1:
                    guided, scale = branches[0], 1.0
                else:
                    sample = latents
                    guided = guider.combine(
                        branches, scale, step,
                        to_x0=lambda out: predicted_x0(out, sample, point, prediction_type),
                        from_x0=lambda x0: output_from_x0(x0, sample, point, prediction_type),
                    )
                if guider.uses_classifier:  # classifier guidance (issue 15): g at the VP latent the UNet saw
                    guided = guider.add_classifier_term(
                        guided, latent_model_input[: latents.shape[0]], t, point.alpha_bar, prediction_type,
                        denoise=lambda x: self.unet(  # CLIP's x0: the last branch (cond, or CG's empty prompt)
                            x, t, encoder_hidden_states=prompt_embeds[-x.shape[0]:], timestep_cond=timestep_cond,
                            cross_attention_kwargs=self.cross_attention_kwargs, return_dict=False)[0])
                if recording and new_step:
                    pending = build_record(
                        step=step, num_steps=num_steps, point=point, latents=latents, branches=branches,
                        guided=guided, scale=scale, method=guider.config.method, prediction_type=prediction_type,
                        full=full, adapters=adapters, preview_every=preview_every, preview_targets=preview_targets,
                        preview_decoder=preview_decoder, preview_kw=preview_kw,
                    )
                    pending.classifier = guider.classifier_readout  # issue 15 (None without a classifier method)
                    pending.attention = attention_maps

                # x_t -> x_{t-1}
                latents = sched.step(guided, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if after_step is not None:
                    latents = after_step(i, latents)

                if callback_on_step_end is not None:
                    named = {"latents": latents, "prompt_embeds": prompt_embeds,
                             "negative_prompt_embeds": negative_prompt_embeds}
                    outputs = callback_on_step_end(self, i, t, {k: named[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % sched.order == 0):
                    progress_bar.update()
                    if callback is not None and i % callback_steps == 0:
                        callback(i // getattr(sched, "order", 1), t, latents)

                # the step is complete when the next call opens a new one (Heun & co.: flush at the end)
                if pending is not None and starts_scheduler_step(sched):
                    yield finish(pending)
                    pending = None
        if pending is not None:
            yield finish(pending)

        # 8. Decode
        if output_type != "latent":
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
            image, has_nsfw = self.run_safety_checker(image, device, prompt_embeds.dtype)
        else:
            image, has_nsfw = latents, None
        denormalize = [True] * image.shape[0] if has_nsfw is None else [not n for n in has_nsfw]
        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        self.maybe_free_model_hooks()

        if not return_dict:
            yield (image, has_nsfw)
        else:
            yield TracingPipelineOutput(images=image, nsfw_content_detected=has_nsfw, trace=trace if recording else None)

    # what inspect shows: the real arguments
    __call__.__signature__ = iter_steps.__signature__ = _with_record_attention(inspect.signature(_iter_steps))
