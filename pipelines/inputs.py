"""Argument checks and prompt encoding for the tracing pipeline (kept apart from the loop).

Every check raises ValueError naming the argument, the bad value and what is allowed. The
pipeline refuses only what it cannot run: what diffusers' ``StableDiffusionPipeline`` accepts
(``guidance_rescale`` > 1, ``eta`` < 0, many steps, unknown output types, which diffusers maps
to "np" with a warning) it accepts too; the app's own ranges live in ``labapp/generate.py``.
"""
from __future__ import annotations

import math

import torch
from diffusers.models.lora import adjust_lora_scale_text_encoder
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers
from diffusers.utils import logging as diffusers_logging

from .guidance import GUIDANCE_METHODS, GuidanceConfig
from .previews import PREVIEW_DECODERS
from .prompt_weights import encode_weighted
from .record import RECORD_MODES
from .schedulers import scheduler_names

# Warnings go through diffusers' logger, under the stock pipeline's name (what StableDiffusionPipeline
# logs to): diffusers.utils.logging.set_verbosity_*() and diffusers' CaptureLogger in its tests see them.
logger = diffusers_logging.get_logger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")

PREVIEW_TARGETS = ("x_t", "x0_guided", "x0_cond", "x0_uncond")


def _batch_size(prompt, prompt_embeds) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def check_inputs(
    *,
    prompt,
    height,
    width,
    vae_scale_factor: int,
    callback_steps=None,
    negative_prompt=None,
    prompt_embeds=None,
    negative_prompt_embeds=None,
    ip_adapter_image=None,
    ip_adapter_image_embeds=None,
    callback_on_step_end_tensor_inputs=None,
    allowed_tensor_inputs=(),
) -> None:
    """diffusers' ``StableDiffusionPipeline.check_inputs``, with messages that name the value.

    Sizes must be multiples of the VAE factor (8 for SD; stock hard-codes 8).
    """
    # prompts
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("pass either `prompt` or `prompt_embeds`, not both")
    if prompt is None and prompt_embeds is None:
        raise ValueError("one of `prompt` or `prompt_embeds` is required")
    if prompt is not None and not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt))):
        raise ValueError(f"prompt={prompt!r} must be a string or a non-empty list of strings")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass either `negative_prompt` or `negative_prompt_embeds`, not both")
    if negative_prompt is not None:
        if not isinstance(negative_prompt, (str, list)):
            raise ValueError(f"negative_prompt={negative_prompt!r} must be a string or a list of strings")
        if isinstance(negative_prompt, list):
            batch = _batch_size(prompt, prompt_embeds)
            if len(negative_prompt) != batch:
                raise ValueError(
                    f"negative_prompt has {len(negative_prompt)} entries but there are {batch} prompts; "
                    "pass one string, or one negative prompt per prompt"
                )
    if prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
        raise ValueError(
            f"negative_prompt_embeds shape {tuple(negative_prompt_embeds.shape)} must equal "
            f"prompt_embeds shape {tuple(prompt_embeds.shape)}"
        )

    # geometry
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % vae_scale_factor:
            raise ValueError(f"{name}={value!r} must be a positive multiple of the VAE factor {vae_scale_factor}")

    # callbacks
    if callback_steps is not None and (not isinstance(callback_steps, int) or callback_steps <= 0):
        raise ValueError(f"callback_steps={callback_steps!r} must be a positive integer")
    if callback_on_step_end_tensor_inputs is not None:
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in allowed_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs has {bad}; allowed: {list(allowed_tensor_inputs)}")

    # IP-Adapter
    if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
        raise ValueError("pass either `ip_adapter_image` or `ip_adapter_image_embeds`, not both")
    if ip_adapter_image_embeds is not None:
        if not isinstance(ip_adapter_image_embeds, list):
            raise ValueError(f"ip_adapter_image_embeds must be a list of tensors, not {type(ip_adapter_image_embeds).__name__}")
        if ip_adapter_image_embeds[0].ndim not in (3, 4):
            raise ValueError(f"ip_adapter_image_embeds must hold 3-D or 4-D tensors, not {ip_adapter_image_embeds[0].ndim}-D")


def check_trace_options(
    *,
    num_inference_steps,
    timesteps,
    sigmas,
    guidance_scale,
    guidance_rescale,
    guidance,
    negative_prompt,
    negative_prompt_embeds,
    num_images_per_prompt,
    eta,
    record: str,
    preview_every,
    preview_decoder,
    preview_targets,
    scheduler,
    scheduler_options,
    step_callback,
    on_step_begin,
) -> None:
    """The call arguments diffusers does not check, and the tracing pipeline's own."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass at most one of `timesteps` and `sigmas`")
    if timesteps is None and sigmas is None:
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer >= 1")
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} must be an integer >= 1")

    # guidance
    for name, value in (("guidance_scale", guidance_scale), ("guidance_rescale", guidance_rescale), ("eta", eta)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a finite number")
    if guidance is not None and not isinstance(guidance, GuidanceConfig):
        raise ValueError(f"guidance={guidance!r} must be a GuidanceConfig (methods: {list(GUIDANCE_METHODS)}) or None")
    if isinstance(guidance, GuidanceConfig) and guidance.method == "perp-neg":
        if negative_prompt is None and negative_prompt_embeds is None:
            raise ValueError("guidance method 'perp-neg' needs a `negative_prompt` (or `negative_prompt_embeds`)")
    if scheduler is not None and scheduler not in scheduler_names():
        raise ValueError(f"scheduler={scheduler!r} is not a known scheduler; valid names: {scheduler_names()}")
    if scheduler is None and scheduler_options:
        raise ValueError(f"scheduler_options={scheduler_options!r} need a registry `scheduler` name; "
                         "without one the pipeline's own scheduler runs as configured")

    # records, previews, hooks
    if record not in RECORD_MODES:
        raise ValueError(f"record={record!r} is not allowed; valid: {list(RECORD_MODES)}")
    if not isinstance(preview_every, int) or preview_every < 0:
        raise ValueError(f"preview_every={preview_every!r} must be an integer >= 0 (0 = no previews)")
    if preview_decoder not in PREVIEW_DECODERS:
        raise ValueError(f"preview_decoder={preview_decoder!r} is not allowed; valid: {list(PREVIEW_DECODERS)}")
    bad = [t for t in preview_targets if t not in PREVIEW_TARGETS]
    if bad or not preview_targets:
        raise ValueError(f"preview_targets={list(preview_targets)!r} must be a non-empty subset of {list(PREVIEW_TARGETS)}")
    for name, fn in (("step_callback", step_callback), ("on_step_begin", on_step_begin)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name}={fn!r} must be callable or None")


# --------------------------------------------------------------------------------- prompts


def text_hidden_states(text_encoder, input_ids, attention_mask, clip_skip: int | None) -> torch.Tensor:
    """CLIP text features; ``clip_skip`` = k uses the output of the k-th layer from the end
    (hidden_states[-(k + 1)]) passed through the final layer norm, like diffusers and A1111.

    Works on both CLIPTextModel layouts: transformers < 5 (``.text_model.final_layer_norm``)
    and transformers 5 (``.final_layer_norm`` directly).
    """
    if clip_skip is None:
        return text_encoder(input_ids, attention_mask=attention_mask)[0]
    out = text_encoder(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out.hidden_states[-(clip_skip + 1)]
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm(hidden)


def encode_texts(pipe, texts: list[str], device, clip_skip: int | None = None, max_length: int | None = None) -> torch.Tensor:
    """Tokenize (pad to max length, truncate) and encode: (len(texts), L, D).

    Prompts (``max_length`` None) longer than the tokenizer's ``model_max_length`` (77 for
    CLIP) log the truncated words, as diffusers does; negative prompts are cut silently, as there.
    """
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    if hasattr(pipe, "maybe_convert_prompt"):  # textual inversion multi-vector tokens
        texts = pipe.maybe_convert_prompt(texts, tokenizer)
    limit = max_length or tokenizer.model_max_length
    tokens = tokenizer(texts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
    if max_length is None:
        untruncated = tokenizer(texts, padding="longest", return_tensors="pt").input_ids
        if untruncated.shape[-1] >= tokens.input_ids.shape[-1] and not torch.equal(tokens.input_ids, untruncated):
            removed = tokenizer.batch_decode(untruncated[:, limit - 1 : -1])
            logger.warning(f"The following part of your input was truncated because CLIP can only handle "
                           f"sequences up to {limit} tokens: {removed}")
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    mask = tokens.attention_mask.to(device) if use_mask else None
    return text_hidden_states(text_encoder, tokens.input_ids.to(device), mask, clip_skip)


def repeat_per_image(embeds: torch.Tensor, num_images_per_prompt: int) -> torch.Tensor:
    """(B, L, D) -> (B * n, L, D), each prompt's rows repeated n times in a row (diffusers' order)."""
    batch, length, _ = embeds.shape
    return embeds.repeat(1, num_images_per_prompt, 1).view(batch * num_images_per_prompt, length, -1)


def encode_prompt(
    pipe,
    prompt,
    device,
    num_images_per_prompt: int,
    do_classifier_free_guidance: bool,
    negative_prompt=None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    lora_scale: float | None = None,
    clip_skip: int | None = None,
    weighting: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """diffusers' ``StableDiffusionPipeline.encode_prompt``: (prompt_embeds, negative_prompt_embeds),
    each (B * n, L, D); the negative is None without CFG.

    ``lora_scale`` multiplies the text encoder's LoRA layers for this encoding (peft:
    ``scale_lora_layers`` / ``unscale_lora_layers``), as stock does. ``clip_skip`` applies to the
    prompt only. A single negative string with several prompts is used for each of them (stock
    raises a TypeError there). ``weighting="a1111"``: prompts and negative prompts in A1111's emphasis
    syntax, encoded with compel (pipelines/prompt_weights.py).
    """
    if lora_scale is not None:
        pipe._lora_scale = lora_scale
        if not USE_PEFT_BACKEND:
            adjust_lora_scale_text_encoder(pipe.text_encoder, lora_scale)
        elif pipe.text_encoder is not None:
            scale_lora_layers(pipe.text_encoder, lora_scale)
    try:
        batch_size = _batch_size(prompt, prompt_embeds)
        if prompt_embeds is None:
            texts = [prompt] if isinstance(prompt, str) else prompt
            if weighting is None:
                prompt_embeds = encode_texts(pipe, texts, device, clip_skip)
            else:
                prompt_embeds = encode_weighted(pipe, texts, device, clip_skip, field="prompt",
                                                encode_plain=lambda t: encode_texts(pipe, t, device, clip_skip))
        if pipe.text_encoder is not None:
            dtype = pipe.text_encoder.dtype
        elif pipe.unet is not None:
            dtype = pipe.unet.dtype
        else:
            dtype = prompt_embeds.dtype
        prompt_embeds = repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative = "" if negative_prompt is None else negative_prompt
            texts = [negative] * batch_size if isinstance(negative, str) else list(negative)
            if len(texts) != batch_size:
                raise ValueError(f"negative_prompt has {len(texts)} entries but there are {batch_size} prompts")
            length = prompt_embeds.shape[1]
            if weighting is None:
                negative_prompt_embeds = encode_texts(pipe, texts, device, None, max_length=length)
            else:
                negative_prompt_embeds = encode_weighted(
                    pipe, texts, device, None, field="negative_prompt",
                    encode_plain=lambda t: encode_texts(pipe, t, device, None, max_length=length))
        if do_classifier_free_guidance:
            negative_prompt_embeds = repeat_per_image(negative_prompt_embeds.to(dtype=dtype, device=device),
                                                      num_images_per_prompt)
    finally:
        if lora_scale is not None and USE_PEFT_BACKEND and pipe.text_encoder is not None:
            unscale_lora_layers(pipe.text_encoder, lora_scale)  # back to the adapters' own scales
    return prompt_embeds, negative_prompt_embeds
