"""Random, seeded LoRA weight files for tests and benchmarks (no training, no network).

``random_lora`` draws A and B for every targeted Linear/Conv2d of a UNet and a CLIP text
encoder (peft key layout), ``save_diffusers_lora`` writes them the way diffusers' training
scripts do (``save_lora_weights`` with adapter metadata, so lora_alpha travels with the file),
``save_kohya_lora`` writes the same adapter with AUTOMATIC1111 / kohya-ss keys and alphas.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
RESNET_TARGETS = ("conv1", "conv2", "time_emb_proj", "conv_shortcut")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class RandomLora:
    unet: dict[str, torch.Tensor]  # "<module>.lora_A.weight" / "<module>.lora_B.weight"
    text_encoder: dict[str, torch.Tensor]
    rank: int
    alpha: float
    unet_targets: tuple[str, ...]
    text_encoder_targets: tuple[str, ...]


def _targeted(model: nn.Module, targets) -> list[tuple[str, nn.Module]]:
    found = []
    for name, module in model.named_modules():
        name = name.removesuffix(".base_layer")  # a model that already holds LoRAs: the wrapped layer
        if isinstance(module, (nn.Linear, nn.Conv2d)) and any(name == t or name.endswith("." + t) for t in targets):
            found.append((name, module))
    return found


def _lora_pair(module: nn.Module, rank: int, std: float, gen: torch.Generator):
    if isinstance(module, nn.Linear):
        a = torch.randn(rank, module.in_features, generator=gen) * std
        b = torch.randn(module.out_features, rank, generator=gen) * std
    else:  # Conv2d: A carries the kernel, B is 1x1 (peft's layout)
        a = torch.randn(rank, module.in_channels, *module.kernel_size, generator=gen) * std
        b = torch.randn(module.out_channels, rank, 1, 1, generator=gen) * std
    return a, b


def random_lora(unet, text_encoder=None, *, seed: int, rank: int = 4, alpha: float | None = None,
                std: float = 0.2, unet_targets=ATTENTION_TARGETS, text_encoder_targets=TEXT_ENCODER_TARGETS) -> RandomLora:
    gen = torch.Generator().manual_seed(seed)
    parts = {"unet": {}, "text_encoder": {}}
    for part, model, targets in (("unet", unet, unet_targets), ("text_encoder", text_encoder, text_encoder_targets)):
        if model is None or not targets:
            continue
        for name, module in _targeted(model, targets):
            a, b = _lora_pair(module, rank, std, gen)
            parts[part][f"{name}.lora_A.weight"] = a.contiguous()
            parts[part][f"{name}.lora_B.weight"] = b.contiguous()
    return RandomLora(parts["unet"], parts["text_encoder"], rank, float(alpha if alpha is not None else rank),
                      tuple(unet_targets), tuple(text_encoder_targets or ()))


def save_diffusers_lora(lora: RandomLora, folder: str, weight_name: str = "pytorch_lora_weights.safetensors") -> str:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    def metadata(targets):
        return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(targets)).to_dict()

    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=lora.unet or None,
        text_encoder_lora_layers=lora.text_encoder or None,
        unet_lora_adapter_metadata=metadata(lora.unet_targets) if lora.unet else None,
        text_encoder_lora_adapter_metadata=metadata(lora.text_encoder_targets) if lora.text_encoder else None,
        weight_name=weight_name,
        safe_serialization=True,
    )
    return os.path.join(folder, weight_name)


def kohya_state_dict(lora: RandomLora) -> dict[str, torch.Tensor]:
    """The same adapter with kohya-ss keys, as AUTOMATIC1111 / ComfyUI files have them.

    UNet: ``lora_unet_<diffusers module path with _>``; text encoder: ``lora_te_text_model_...``
    (SD 1.x files name CLIP's layers under ``text_model``); per-module ``.alpha``.
    """
    out = {}
    for prefix, part, text_model in (("lora_unet_", lora.unet, ""), ("lora_te_", lora.text_encoder, "text_model_")):
        for key, value in part.items():
            module, kind = key.rsplit(".lora_", 1)  # kind: "A.weight" | "B.weight"
            stem = prefix + text_model + module.replace(".", "_")
            out[f"{stem}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value
            out[f"{stem}.alpha"] = torch.tensor(lora.alpha)
    return out


def save_kohya_lora(lora: RandomLora, path: str) -> str:
    from safetensors.torch import save_file

    save_file(kohya_state_dict(lora), path, metadata={"ss_network_module": "networks.lora",
                                                      "ss_network_dim": str(lora.rank),
                                                      "ss_network_alpha": str(lora.alpha)})
    return path
