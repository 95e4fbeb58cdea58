"""Start the trained adapter from an existing LoRA (--init_lora) instead of peft's fresh init.

Continue training a LoRA on more steps, another objective or another partner without starting
over. The file must describe the same adapter as the flags: same rank, alpha and target layers,
UNet only (as this script writes them). A layer the file lacks, a layer the model lacks, or a
different rank or alpha is refused, with the flag, the value and what differs: silently starting
part of the adapter from zero, or at another scale, is the mistake this guards against.
"""
from __future__ import annotations

import torch


def read_unet_lora(path: str, flag: str) -> tuple[dict, dict | None, dict | None]:
    """(state dict with "unet." keys, network alphas, adapter metadata) of a UNet-only LoRA file.

    Shared by --init_lora and --partner_lora: a file with text-encoder layers, or none for the
    UNet, is refused naming the flag.
    """
    from diffusers import StableDiffusionPipeline

    state_dict, network_alphas, metadata = StableDiffusionPipeline.lora_state_dict(path, return_lora_metadata=True)
    if any(k.startswith("text_encoder") for k in state_dict):
        raise ValueError(f"{flag}={path!r} has text-encoder layers; only UNet LoRAs are accepted here")
    if not any(k.startswith("unet.") for k in state_dict):
        raise ValueError(f"{flag}={path!r} has no UNet LoRA layers")
    return state_dict, network_alphas, metadata


def load_initial_lora(unet, path: str, rank: int, alpha: float) -> int:
    """Copy the UNet LoRA weights of ``path`` into the "default" adapter; returns the tensor count."""
    from peft import set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict

    state_dict, _, metadata = read_unet_lora(path, "--init_lora")
    unet_state = {k[len("unet."):]: v for k, v in state_dict.items() if k.startswith("unet.")}
    if metadata and "unet.r" in metadata:  # diffusers writes the adapter's LoraConfig: rank and alpha must agree
        file_rank, file_alpha = metadata["unet.r"], metadata.get("unet.lora_alpha")
        if (file_rank, file_alpha) != (rank, alpha):
            raise ValueError(f"--init_lora={path!r} has rank {file_rank}, alpha {file_alpha}; this run has "
                             f"--rank {rank}, --lora_alpha {alpha}: give the file's values")
    expected = set(get_peft_model_state_dict(unet, adapter_name="default"))
    missing, extra = sorted(expected - set(unet_state)), sorted(set(unet_state) - expected)
    if missing or extra:
        example = (missing or extra)[0]
        raise ValueError(f"--init_lora={path!r} does not match --target_modules: {len(missing)} LoRA tensor(s) of "
                         f"this run are not in the file and {len(extra)} of the file are not in this run "
                         f"(e.g. {example}); use the target modules it was trained with")
    try:
        set_peft_model_state_dict(unet, {k: v.to(torch.float32) for k, v in unet_state.items()},
                                  adapter_name="default")
    except RuntimeError as err:  # size mismatch: another rank
        raise ValueError(f"--init_lora={path!r} does not fit --rank {rank}: {err}") from None
    return len(unet_state)
