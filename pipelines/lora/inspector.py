"""What a loaded LoRA changes: per layer rank, alpha and ||ΔW||_F, per block and module kind.

Read from the peft layers the adapter was injected into (what the blender applies), not from the
file: ranks ``r``, alphas ``alpha`` and the effective scale ``s = alpha / r`` (``alpha / sqrt(r)``
for rsLoRA; Hu et al. 2021, "LoRA", eq. 3; Kalajdzievski 2023, "rsLoRA"). The weight change of a
layer at adapter weight 1 is ``ΔW = s B A`` (A: r x in, B: out x r; a conv's A carries the kernel,
flattened to r x (in k k)), and its Frobenius norm needs only r x r products::

    ||B A||_F^2 = tr(Aᵀ Bᵀ B A) = sum_ij (Bᵀ B)_ij (A Aᵀ)_ij

so no out x in matrix is built. The heat map sums ``||ΔW||_F^2`` of the layers in each (block,
module kind) cell and shows its square root: which blocks the adapter changes most, on the same
blocks the mixer's per-block weights act on (down / mid / up; lora.py ``_unet_region``).
"""
from __future__ import annotations

import math
import re

import torch

UNET_KINDS = ("attn1", "attn2", "ff", "proj", "resnet", "sampler", "time embedding", "other")
TEXT_KINDS = ("self-attention", "mlp", "other")


def module_kind(component: str, name: str) -> str:
    """The kind of module a LoRA layer wraps, from its path in the UNet or the text encoder."""
    if component != "unet":
        return "self-attention" if ".self_attn." in name else "mlp" if ".mlp." in name else "other"
    for pattern, kind in ((r"\.attn1\.", "attn1"), (r"\.attn2\.", "attn2"), (r"\.ff\.", "ff"),
                          (r"\.attentions\.\d+\.proj_(in|out)$", "proj"), (r"\.resnets\.\d+\.", "resnet"),
                          (r"(down|up)samplers\.", "sampler"), (r"^time_embedding\.", "time embedding")):
        if re.search(pattern, name):
            return kind
    return "other"


def block_label(component: str, name: str, unet) -> str:
    """"down 0" ... "mid" ... "up 3" for the UNet's blocks; "outside" for conv_in/out, time embedding."""
    from .blender import _unet_region

    if component != "unet":
        return "text encoder"
    region = _unet_region(name, unet)
    if region is None:
        return "outside"
    return "mid" if region[0] == "mid" else f"{region[0]} {region[1]}"


def delta_norm(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """||scale · B A||_F from r x r products (module docstring), built a band of rows at a time.

    A band of ``k`` rows of ``Bᵀ B`` and of ``A Aᵀ`` (k x r each) is at most as large as A and B
    themselves, so the memory is linear in the adapter's size whatever its rank (issue 30: whole
    r x r float64 matrices cost 3·r²·8 bytes, +1.4 GB at rank 8000 for a 2 MB file).
    """
    a = a.detach().double().reshape(a.shape[0], -1)  # (r, in·k·k)
    b = b.detach().double().reshape(b.shape[0], -1).T  # (r, out): row i is column i of B
    rank = a.shape[0]
    band = max(1, min(rank, min(a.shape[1], b.shape[1])))  # k·r <= r·min(in, out) elements per product
    squared = torch.zeros((), dtype=torch.float64)
    for start in range(0, rank, band):
        rows = slice(start, start + band)
        bb = b[rows] @ b.T  # (k, r) rows of Bᵀ B
        aa = a[rows] @ a.T  # (k, r) rows of A Aᵀ
        squared += (bb * aa).sum()
    return float(abs(scale) * squared.clamp_min(0).sqrt())


def _layers(pipe, name: str):
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component in ("unet", "text_encoder"):
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for path, module in model.named_modules():
            if isinstance(module, BaseTunerLayer) and hasattr(module, "lora_A") and name in module.lora_A:
                yield component, path, module


def base_parameter_count(pipe) -> dict[str, int]:
    """Parameters of the UNet and text encoder without any LoRA weights (the seed's trainable-parameters view)."""
    counts = {}
    for component in ("unet", "text_encoder"):
        model = getattr(pipe, component, None)
        if model is not None:
            counts[component] = sum(p.numel() for n, p in model.named_parameters() if ".lora_" not in n)
    return counts


def inspect_adapter(pipe, name: str) -> dict:
    """Per-layer and per-block report of a loaded adapter (JSON-ready)."""
    layers, adapter_params = [], {"unet": 0, "text_encoder": 0}
    unet = pipe.unet
    for component, path, module in _layers(pipe, name):
        r = int(module.r[name])
        alpha = float(module.lora_alpha[name])
        rslora = bool(getattr(module, "use_rslora", {}).get(name, False))
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        a, b = module.lora_A[name].weight, module.lora_B[name].weight
        adapter_params[component] += a.numel() + b.numel()
        layers.append({"component": component, "module": path, "block": block_label(component, path, unet),
                       "kind": module_kind(component, path), "layer": type(module.get_base_layer()).__name__,
                       "rank": r, "alpha": alpha, "scale": scale, "rslora": rslora,
                       "delta_norm": delta_norm(a, b, scale)})
    if not layers:
        raise ValueError(f"adapter {name!r} has no layers in this pipeline (not loaded?)")
    base = base_parameter_count(pipe)
    blocks = _block_order(unet) + (["text encoder"] if any(l["component"] == "text_encoder" for l in layers) else [])
    counts: dict[str, dict[str, int]] = {}
    energy: dict[tuple[str, str], float] = {}
    for layer in layers:
        counts.setdefault(layer["block"], {}).setdefault(layer["kind"], 0)
        counts[layer["block"]][layer["kind"]] += 1
        key = (layer["block"], layer["kind"])
        energy[key] = energy.get(key, 0.0) + layer["delta_norm"] ** 2
    kinds = [k for k in UNET_KINDS + TEXT_KINDS if any(k == kind for _, kind in energy)]
    kinds = list(dict.fromkeys(kinds))
    heat = [[math.sqrt(energy[(b, k)]) if (b, k) in energy else None for k in kinds] for b in blocks]
    ranks = sorted({l["rank"] for l in layers})
    scales = sorted({round(l["scale"], 6) for l in layers})
    return {
        "adapter": name,
        "num_layers": len(layers),
        "ranks": ranks,
        "alphas": sorted({l["alpha"] for l in layers}),
        "scales": scales,
        "parameters": {"adapter": adapter_params, "base": base,
                       "adapter_total": sum(adapter_params.values()), "base_total": sum(base.values()),
                       "percent_of_base": 100.0 * sum(adapter_params.values()) / max(1, sum(base.values()))},
        "counts": counts,
        "heatmap": {"blocks": blocks, "kinds": kinds, "values": heat},
        "layers": layers,
    }


def _block_order(unet) -> list[str]:
    return ([f"down {i}" for i in range(len(unet.down_blocks))] + ["mid"]
            + [f"up {i}" for i in range(len(unet.up_blocks))] + ["outside"])
