"""TracingStableDiffusionPipeline: diffusers' StableDiffusionPipeline, with the loop made visible.

Same components and call arguments as ``StableDiffusionPipeline``; with plain CFG the images
equal diffusers' for the same inputs. On top: guidance methods (``guidance=GuidanceConfig``),
a registry scheduler per call (``scheduler="DPM++ 2M Karras"``), one ``StepRecord`` per step
(``record="light"|"full"``, ``step_callback``, ``pipe.iter_steps(...)``), previews, and an
``on_step_begin`` hook for per-step adapter weights.

The denoising loop is written once, as the generator ``iter_steps``; ``__call__`` drains it.
"""
from __future__ import annotations

import copy
import inspect
import json
from typing import Callable

import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.utils.torch_utils import randn_tensor

from .guidance import GuidanceConfig, Guider
from .inputs import check_inputs, encode_texts, repeat_per_image
from .prediction import output_from_x0, predicted_eps, predicted_x0
from .previews import decode_preview
from .record import StepRecord, TracingPipelineOutput, guidance_norm, to_record_tensor
from .schedulers import ScheduleTables, eval_point, make_scheduler, starts_scheduler_step


class TracingStableDiffusionPipeline(
    DiffusionPipeline, StableDiffusionMixin, TextualInversionLoaderMixin, StableDiffusionLoraLoaderMixin
):
    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _exclude_from_cpu_offload = ["safety_checker"]

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
        super().__init__()
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("safety_checker needs a feature_extractor; pass both, or safety_checker=None")
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.preview_factors: torch.Tensor | None = None  # (C + 1, 3), see previews.py
        self.preview_taesd = None  # an AutoencoderTiny, when the caller has one
        self._scheduler_templates: dict = {}

    # ----------------------------------------------------------------------------- helpers

    def _default_size(self) -> tuple[int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    def encode_branches(self, *, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                        num_images_per_prompt, num_branches, perp_neg, clip_skip, device) -> torch.Tensor:
        """Text embeddings for the UNet batch, branches stacked: [uncond,] cond[, negative].

        As in diffusers, ``clip_skip`` applies to the prompt only; the negative / empty prompt
        uses the last layer. Perp-Neg's uncond branch is the empty prompt.
        """
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        if prompt_embeds is None:
            texts = [prompt] if isinstance(prompt, str) else prompt
            prompt_embeds = encode_texts(self, texts, device, clip_skip)
        prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)
        batch, length = prompt_embeds.shape[:2]
        if num_branches == 1:
            return repeat_per_image(prompt_embeds, num_images_per_prompt)

        def encode_negative(neg):
            texts = [neg] * batch if isinstance(neg, str) else list(neg)
            return encode_texts(self, texts, device, None, max_length=length)

        if perp_neg:
            uncond = encode_negative("")
            negative = negative_prompt_embeds if negative_prompt_embeds is not None else encode_negative(negative_prompt)
            branches = [uncond, prompt_embeds, negative]
        else:
            if negative_prompt_embeds is None:
                negative_prompt_embeds = encode_negative("" if negative_prompt is None else negative_prompt)
            branches = [negative_prompt_embeds, prompt_embeds]
        branches = [repeat_per_image(b.to(dtype=dtype, device=device), num_images_per_prompt) for b in branches]
        return torch.cat(branches)

    def prepare_latents(self, scheduler, batch_size, height, width, dtype, device, generator, latents=None):
        shape = (batch_size, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"generator is a list of {len(generator)} generators; the batch has {batch_size} images")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents shape {tuple(latents.shape)} must be {shape}")
            latents = latents.to(device)
        return latents * scheduler.init_noise_sigma

    def fresh_scheduler(self, name: str | None = None, options: dict | None = None):
        """A private copy of ``self.scheduler`` (name None) or of registry scheduler ``name`` built
        from the model's scheduler config. Templates are cached: some classes (DPM2) spend seconds
        in ``__init__``; a deepcopy takes microseconds."""
        if name is None:
            return copy.deepcopy(self.scheduler)
        key = (name, json.dumps(options or {}, sort_keys=True, default=str), self.scheduler.to_json_string())
        template = self._scheduler_templates.get(key)
        if template is None:
            template = make_scheduler(name, self.scheduler.config, **(options or {}))
            self._scheduler_templates[key] = template
        return copy.deepcopy(template)

    @staticmethod
    def set_timesteps(scheduler, num_inference_steps, device, timesteps=None, sigmas=None):
        """``scheduler.set_timesteps`` with custom ``timesteps`` / ``sigmas`` where it takes them."""
        custom = {"timesteps": timesteps} if timesteps is not None else {"sigmas": sigmas} if sigmas is not None else None
        if custom is None:
            scheduler.set_timesteps(num_inference_steps, device=device)
            return scheduler.timesteps, num_inference_steps
        (key, value), = custom.items()
        if key not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(f"{key}= is not supported by {type(scheduler).__name__}.set_timesteps")
        scheduler.set_timesteps(device=device, **custom)
        return scheduler.timesteps, len(scheduler.timesteps)

    @staticmethod
    def _step_kwargs(scheduler, generator, eta) -> dict:
        params = inspect.signature(scheduler.step).parameters
        kwargs = {"eta": eta} if "eta" in params else {}
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    def run_safety_checker(self, image, device, dtype):
        if self.safety_checker is None:
            return image, None
        pil = self.image_processor.postprocess(image, output_type="pil")
        inputs = self.feature_extractor(pil, return_tensors="pt").to(device)
        return self.safety_checker(images=image, clip_input=inputs.pixel_values.to(dtype))

    # ----------------------------------------------------------------------------- the call

    def __call__(self, *args, **kwargs):
        """Run ``iter_steps`` to the end and return its output (see ``iter_steps`` for arguments)."""
        result = None
        for result in self.iter_steps(*args, **kwargs):
            pass
        return result

    @torch.no_grad()
    def iter_steps(
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
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
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
    ):
        """Generate, yielding one ``StepRecord`` per scheduler step (when recording), then the output.

        Diffusers' arguments keep their meaning. Added: ``scheduler`` (registry name; a fresh
        scheduler from the model's config; None: a fresh copy of ``self.scheduler``),
        ``scheduler_options`` (make_scheduler options), ``guidance`` (method + knobs; its None
        scale / rescale take ``guidance_scale`` / ``guidance_rescale``), ``record`` ("off": no
        record, no extra work; "light": scalars, x_t, x0_guided; "full": every tensor),
        ``step_callback`` (called with each record as it is made), ``preview_every`` (previews at
        steps 0, k, 2k, ... and the last), ``preview_decoder``, ``preview_targets``,
        ``preview_taesd``, ``on_step_begin(step, num_steps) -> dict | None`` (before the step's
        first UNet call; its dict becomes ``StepRecord.adapters``).
        ``step_callback`` or previews with record="off" record in "light" mode.
        """
        # 0. Defaults
        if not height or not width:
            height, width = self._default_size()
        preview_targets = tuple(preview_targets)

        # 1. Check inputs
        check_inputs(
            prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, height=height, width=width,
            vae_scale_factor=self.vae_scale_factor, num_inference_steps=num_inference_steps,
            timesteps=timesteps, sigmas=sigmas, guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale, guidance=guidance, eta=eta,
            num_images_per_prompt=num_images_per_prompt, output_type=output_type, record=record,
            preview_every=preview_every, preview_decoder=preview_decoder,
            preview_targets=preview_targets, scheduler=scheduler, step_callback=step_callback,
            on_step_begin=on_step_begin,
        )
        if self.unet.config.time_cond_proj_dim is not None:
            raise ValueError("UNets with time_cond_proj_dim (guidance-embedded, LCM-distilled) are not supported")
        if record == "off" and (step_callback is not None or preview_every > 0):
            record = "light"
        recording = record != "off"
        full = record == "full"

        # 2. Guidance: one branch (cond) unless some step's scale exceeds 1, like diffusers
        config = (guidance or GuidanceConfig()).resolved(guidance_scale, guidance_rescale)
        guider = Guider(config, enabled=config.peak_scale() > 1.0)
        num_branches = guider.num_branches

        # 3. Encode input prompt
        device = self._execution_device
        # classifier guidance (issue 15): targets from the prompt; CG alone sends the UNet the empty prompt
        prompt = guider.bind_classifier(getattr(self, "classifier", None), prompt, prompt_embeds, num_images_per_prompt, device)
        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
        embeds = self.encode_branches(
            prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, num_images_per_prompt=num_images_per_prompt,
            num_branches=num_branches, perp_neg=config.method == "perp-neg", clip_skip=clip_skip, device=device,
        )

        # 4. Prepare timesteps on a per-call scheduler (no shared state between concurrent calls)
        sched = self.fresh_scheduler(scheduler, scheduler_options)
        timesteps, num_inference_steps = self.set_timesteps(sched, num_inference_steps, device, timesteps, sigmas)
        num_steps = int(getattr(sched, "num_inference_steps", None) or num_inference_steps)

        # 5. Prepare latent variables
        latents = self.prepare_latents(
            sched, batch_size * num_images_per_prompt, height, width, embeds.dtype, device, generator, latents
        )

        # 6. Prepare extra step kwargs
        step_kwargs = self._step_kwargs(sched, generator, eta)
        prediction_type = sched.config.prediction_type
        tables = ScheduleTables(sched) if recording or guider.needs_eval_point else None  # one copy, before the loop
        trace: list[StepRecord] = []
        preview_kw = dict(factors=self.preview_factors, vae=self.vae, taesd=preview_taesd or self.preview_taesd)

        # 7. Denoising loop
        step, model_calls, pending, scale = -1, 0, None, 1.0
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for loop_index, t in enumerate(timesteps):
                new_step = starts_scheduler_step(sched)
                if new_step:
                    step += 1
                    adapters = on_step_begin(step, num_steps) if on_step_begin is not None else None

                model_input = torch.cat([latents] * num_branches) if num_branches > 1 else latents
                model_input = sched.scale_model_input(model_input, t)
                noise_pred = self.unet(
                    model_input, t, encoder_hidden_states=embeds,
                    cross_attention_kwargs=cross_attention_kwargs, return_dict=False,
                )[0]
                model_calls += 1
                branches = noise_pred.chunk(num_branches) if num_branches > 1 else [noise_pred]

                point = eval_point(sched, tables, loop_index) if tables is not None else None
                if new_step:
                    scale = guider.scale_at(step, num_steps, None if point is None else point.noise_sigma)
                sample = latents
                guided = guider.combine(
                    branches, scale, step,
                    to_x0=lambda out: predicted_x0(out, sample, point, prediction_type),
                    from_x0=lambda x0: output_from_x0(x0, sample, point, prediction_type),
                )
                if guider.uses_classifier:  # classifier guidance (issue 15): g at the VP latent the UNet saw
                    guided = guider.add_classifier_term(guided, model_input[: latents.shape[0]], t, point.alpha_bar, prediction_type)
                if recording and new_step:
                    pending = self._make_record(
                        step, num_steps, point, latents, branches, guided, guider, scale, prediction_type,
                        full, adapters, preview_every, preview_targets, preview_decoder, preview_kw,
                    )
                    pending.classifier = guider.classifier_readout  # issue 15 (None without a classifier method)

                latents = sched.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
                progress_bar.update()

                # the step is complete (Heun & co. end their last step in 2nd-order state: flush)
                if pending is not None and (starts_scheduler_step(sched) or loop_index == len(timesteps) - 1):
                    pending.model_calls = model_calls
                    trace.append(pending)
                    if step_callback is not None:
                        step_callback(pending)
                    yield pending
                    pending = None

        # 8. Decode
        if output_type != "latent":
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
            image, has_nsfw = self.run_safety_checker(image, device, embeds.dtype)
            denormalize = [True] * image.shape[0] if has_nsfw is None else [not n for n in has_nsfw]
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        else:
            image, has_nsfw = latents, None
        self.maybe_free_model_hooks()

        if not return_dict:
            yield (image, has_nsfw)
        else:
            yield TracingPipelineOutput(images=image, nsfw_content_detected=has_nsfw, trace=trace if recording else None)

    def _make_record(self, step, num_steps, point, latents, branches, guided, guider, scale, prediction_type,
                     full, adapters, preview_every, preview_targets, preview_decoder, preview_kw) -> StepRecord:
        """Build the step's record from the first model call of the step (see record.py)."""
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
            guidance_method=guider.config.method,
        )
