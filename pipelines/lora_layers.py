"""Per-layer LoRA mechanics on peft layers: which adapters are active, at what scale, fused or not.

peft computes one ``B_i(A_i x) * s_i`` pass per active adapter per layer. With several adapters
on a small model that per-pass overhead dominates (measured on the bench's mid-size UNet: 3
adapters cost ~2.7x one adapter of their summed rank). ``set_layer_scales`` therefore writes
a blend of two or more plain LoRAs into one extra peft adapter slot per layer:

    A = [A_1; A_2; ...]                    # (sum r_i, in): stacked rows
    B = [s_1 B_1, s_2 B_2, ...]            # (out, sum r_i): scale folded into the columns
    B (A x) = sum_i s_i B_i (A_i x)        # the same sum, one pass, equal up to rounding

where ``s_i`` is peft's scaling (weight * alpha_i / r_i). One adapter alone, DoRA or other
variants, biased LoRAs and grouped convs keep peft's own per-adapter path.
"""
from __future__ import annotations

import torch
from torch import nn

BLEND_SLOT = "blend__stacked"  # prefix of the extra peft adapter slots; never a user adapter name


def slot_name(rank: int) -> str:
    """One slot per stacked rank, made on first use and kept, so switching blends allocates nothing."""
    return f"{BLEND_SLOT}_r{rank}"


def freeze(module) -> None:
    """Inference only: what ``set_adapter(..., inference_mode=True)`` would do, once."""
    for param in module.parameters():
        param.requires_grad_(False)


def activate(module, names: list[str]) -> None:
    """Make ``names`` the layer's active adapters.

    peft's ``set_adapter`` also resets requires_grad on every adapter's weights each call,
    which costs more than everything else in a blend switch (~0.1 ms per layer, times hundreds
    of layers); weights are frozen once (``freeze``), so only the active list is set. Falls back
    to ``set_adapter`` for a layer class without peft's ``_active_adapter`` attribute.
    """
    if hasattr(module, "_active_adapter"):
        module._active_adapter = list(names)
    else:
        module.set_adapter(list(names), inference_mode=True)


def _stackable(module, names) -> bool:
    lora_a = [module.lora_A[n] for n in names]
    if any(n in module.lora_variant or module.lora_bias.get(n, False) for n in names):
        return False
    if any(not isinstance(module.lora_dropout[n], nn.Identity) and module.lora_dropout[n].training for n in names):
        return False
    if all(type(a) is nn.Linear for a in lora_a):
        return True
    if all(type(a) is nn.Conv2d for a in lora_a):
        first = lora_a[0]
        same = all((a.kernel_size, a.stride, a.padding, a.dilation) ==
                   (first.kernel_size, first.stride, first.padding, first.dilation) for a in lora_a)
        return same and all(module.lora_B[n].groups == 1 for n in names)
    return False


def _write_stacked(module, names: list[str]) -> str:
    """Fill the slot of this rank from the named adapters at their current scaling; its name."""
    from peft import LoraConfig

    rank = sum(module.r[n] for n in names)
    slot = slot_name(rank)
    if slot not in module.lora_A:
        # rank = alpha: the slot's own scaling is 1, the adapters' scales live in B
        module.update_layer(slot, rank, lora_alpha=rank,
                            config=LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False))
        freeze(module)
    with torch.no_grad():
        torch.cat([module.lora_A[n].weight for n in names], dim=0, out=module.lora_A[slot].weight)
        torch.cat([module.lora_B[n].weight * module.scaling[n] for n in names], dim=1, out=module.lora_B[slot].weight)
    module.scaling[slot] = 1.0
    return slot


def set_layer_scales(module, scales: dict[str, float], stack: bool = True) -> None:
    """Activate exactly the adapters in ``scales`` (name -> weight) on one peft LoRA layer.

    Zero weights should be left out by the caller (they add nothing).
    """
    names = list(scales)
    for name, weight in scales.items():
        module.set_scale(name, weight)
    if stack and len(names) >= 2 and _stackable(module, names):
        names = [_write_stacked(module, names)]
    if list(module.active_adapters) != names:
        activate(module, names)


def fuse(modules) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Merge each layer's active adapters into its base weight, keeping exact copies to restore."""
    saved = []
    for module in modules:
        if not module.active_adapters:
            continue
        base = module.get_base_layer()
        saved.append((base.weight, base.weight.detach().clone()))
        if getattr(base, "bias", None) is not None and any(module.lora_bias.get(n, False) for n in module.active_adapters):
            saved.append((base.bias, base.bias.detach().clone()))
        module.merge(adapter_names=list(module.active_adapters))
    return saved


def unfuse(modules, saved) -> None:
    """Undo ``fuse`` bit-exactly.

    peft's ``unmerge`` subtracts the delta again, which is not exact in floating point; copying
    the saved base weights back is.
    """
    with torch.no_grad():
        for param, original in saved:
            param.data.copy_(original)
    for module in modules:
        module.merged_adapters.clear()
