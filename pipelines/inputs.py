"""Argument checks and prompt encoding for the tracing pipeline (kept apart from the loop).

Every check raises ValueError naming the argument, the bad value and what is allowed.
"""
from __future__ import annotations

import math

import torch

from .guidance import GUIDANCE_METHODS, GuidanceConfig
from .previews import PREVIEW_DECODERS
from .record import RECORD_MODES
from .schedulers import scheduler_names

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
PREVIEW_TARGETS = ("x_t", "x0_guided", "x0_cond", "x0_uncond")
MAX_STEPS = 1000


def _batch_size(prompt, prompt_embeds) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def check_inputs(
    *,
    prompt,
    negative_prompt,
    prompt_embeds,
    negative_prompt_embeds,
    height: int,
    width: int,
    vae_scale_factor: int,
    num_inference_steps: int,
    timesteps,
    sigmas,
    guidance_scale: float,
    guidance_rescale: float,
    guidance,
    eta: float,
    num_images_per_prompt: int,
    output_type: str,
    record: str,
    preview_every: int,
    preview_decoder: str,
    preview_targets,
    scheduler,
    step_callback,
    on_step_begin,
) -> None:
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

    # geometry and steps
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % vae_scale_factor:
            raise ValueError(f"{name}={value!r} must be a positive multiple of the VAE factor {vae_scale_factor}")
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass at most one of `timesteps` and `sigmas`")
    if timesteps is None and sigmas is None:
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= MAX_STEPS:
            raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer in [1, {MAX_STEPS}]")
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} must be an integer >= 1")

    # guidance
    if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale={guidance_scale!r} must be a finite number")
    if not isinstance(guidance_rescale, (int, float)) or not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale={guidance_rescale!r} must be a number in [0, 1]")
    if guidance is not None and not isinstance(guidance, GuidanceConfig):
        raise ValueError(f"guidance={guidance!r} must be a GuidanceConfig (methods: {list(GUIDANCE_METHODS)}) or None")
    if isinstance(guidance, GuidanceConfig) and guidance.method == "perp-neg":
        if negative_prompt is None and negative_prompt_embeds is None:
            raise ValueError("guidance method 'perp-neg' needs a `negative_prompt` (or `negative_prompt_embeds`)")
    if not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta={eta!r} must be a finite number >= 0")
    if scheduler is not None and scheduler not in scheduler_names():
        raise ValueError(f"scheduler={scheduler!r} is not a known scheduler; valid names: {scheduler_names()}")

    # outputs, records, previews, hooks
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not allowed; valid: {list(OUTPUT_TYPES)}")
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
    """Tokenize (pad to max length, truncate) and encode: (len(texts), L, D)."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    if hasattr(pipe, "maybe_convert_prompt"):  # textual inversion multi-vector tokens
        texts = pipe.maybe_convert_prompt(texts, tokenizer)
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    mask = tokens.attention_mask.to(device) if use_mask else None
    return text_hidden_states(text_encoder, tokens.input_ids.to(device), mask, clip_skip)


def repeat_per_image(embeds: torch.Tensor, num_images_per_prompt: int) -> torch.Tensor:
    """(B, L, D) -> (B * n, L, D), each prompt's rows repeated n times in a row (diffusers' order)."""
    batch, length, _ = embeds.shape
    return embeds.repeat(1, num_images_per_prompt, 1).view(batch * num_images_per_prompt, length, -1)
