"""Per-layer LoRA mechanics on peft layers: what each layer runs, at what scale, fused or not.

peft's layer forward runs the base layer, then one ``B_i(A_i x) * s_i`` pass per active adapter,
with a dozen Python-level steps around them (argument checks, dtype casts, a loop over the
active names) whether or not any adapter is active. On a small model those steps cost more than
the matmuls: measured on the embedded model with the three shipped presets (337 LoRA layers),
a loaded but idle blender cost 1.11-1.14x a pipeline without LoRA, three active adapters 1.54-1.77x
(BENCHMARKS.md, "Multi-LoRA blending"). So every layer runs one of four forwards, chosen when
the blend is set (``set_layer_scales``), never per call:

- **base**: no adapter active on the layer. The layer's ``forward`` is its base module's own, so
  the call costs what it costs in a pipeline that never loaded a LoRA (same op, same bits).
- **stacked**: one or more plain LoRAs (Linear or Conv2d, no bias, no DoRA/variants, groups 1).
  Their weights are stacked into one low-rank pair with peft's scaling folded into ``B``::

      A = [A_1; A_2; ...]                    # (sum r_i, in): stacked rows
      B = [s_1 B_1, s_2 B_2, ...]            # (out, sum r_i): scale folded into the columns
      y = W x + b + B (A x)                  # = W x + b + sum_i s_i B_i (A_i x), up to rounding

  with ``s_i`` peft's scaling (weight * alpha_i / r_i; Hu et al. 2021, "LoRA", eq. 3): the base
  op, ``A x`` and one in-place ``addmm_`` / ``baddbmm_``, no module dispatch.
- **dense**: the same sum as one weight, ``y = (W + B A) x + b``, held as a copy beside the
  untouched base weight: the base op on another weight, so the layer costs what the base layer
  costs. Why: on small layers the low-rank pair is not cheap. On the embedded model a rank-16
  3x3 ``A`` conv costs about half the base conv (per-call overhead of small convs on CPU), and a
  summed rank of 48 on 64-128 channels adds 40-150% of a layer's multiply-adds. Copies cost
  memory, so the caller gives each blend a budget (``LoraBlender(dense_budget_mb=...)``) and
  layers beyond it run stacked.
- **peft**: anything else (DoRA, biased LoRAs, embeddings, grouped convs), or every active layer
  when stacking is off: peft's own forward, bit-identical to diffusers' ``set_adapters``.

The choice is an instance attribute ``forward`` on the peft layer (what accelerate's hooks do
too): the module tree, ``state_dict`` and peft's own bookkeeping (``scaling``,
``active_adapters``) stay as peft made them.

Fusing (``fuse`` / ``unfuse``) writes the ``W + B A`` of each stacked or peft layer into its
base weight and switches the layer to **base** (a dense layer already runs the base op on its
merged weight); restoring copies the saved base weights back, bit-exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Prefix no user adapter may take (kept from the time blends were written into extra peft slots,
# so a name that collided then is still refused and files stay portable between versions).
BLEND_SLOT = "blend__stacked"

_PLAN = "_lab_lora_plan"  # instance attribute: ("base" | "stacked" | "peft", A, B)


def freeze(module) -> None:
    """Inference only: what ``set_adapter(..., inference_mode=True)`` would do, once."""
    for param in module.parameters():
        param.requires_grad_(False)


def activate(module, names: list[str]) -> None:
    """Make ``names`` the layer's active adapters (peft's bookkeeping).

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
    base = module.get_base_layer()
    if all(type(a) is nn.Linear for a in lora_a):
        return type(base) is nn.Linear
    if all(type(a) is nn.Conv2d for a in lora_a):
        first = lora_a[0]
        same = all((a.kernel_size, a.stride, a.padding, a.dilation, a.groups, a.padding_mode) ==
                   (first.kernel_size, first.stride, first.padding, first.dilation, 1, "zeros") for a in lora_a)
        return same and type(base) is nn.Conv2d and all(module.lora_B[n].groups == 1 for n in names)
    return False


def stacked_weights(module, names: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A, B) of the named adapters at their current scaling, in the base weight's dtype, or None
    where they cannot run stacked (see ``_stackable``)."""
    if not names or not _stackable(module, names):
        return None
    weight = module.get_base_layer().weight
    with torch.no_grad():
        if len(names) == 1:
            a = module.lora_A[names[0]].weight
            b = module.lora_B[names[0]].weight * module.scaling[names[0]]
        else:
            a = torch.cat([module.lora_A[n].weight for n in names], dim=0)
            b = torch.cat([module.lora_B[n].weight * module.scaling[n] for n in names], dim=1)
        return a.to(weight.dtype).detach(), b.to(weight.dtype).detach()


def _has_hooks(module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or getattr(module, "_forward_hooks_with_kwargs", None))


def _base_forward(base):
    # the base module's own forward: no module dispatch on top of the peft layer's (which is one
    # level, as for the plain layer in a model without LoRA); hooks on the base module keep running
    return base if _has_hooks(base) else base.forward


def _stacked_forward(module, a: torch.Tensor, b: torch.Tensor):
    """``y = base(x) + B (A x)`` in as few CPU ops as possible: the ``B`` product is added into the
    base output in place by one ``addmm_`` / ``baddbmm_`` (the ops dominate on small models)."""
    base = module.get_base_layer()
    hooked = _has_hooks(base)
    if isinstance(base, nn.Linear):
        a_t, b_t = a.t().contiguous(), b.t().contiguous()  # (in, r), (r, out)

        def forward(x, *args, **kwargs):
            out = base(x) if hooked else F.linear(x, base.weight, base.bias)  # (..., out)
            out.view(-1, out.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]) @ a_t, b_t)
            return out
        return forward
    lora_a = module.lora_A[next(iter(module.active_adapters))]
    stride, padding, dilation = lora_a.stride, lora_a.padding, lora_a.dilation
    b_2d = b.flatten(1)  # (out, r): B is a 1x1 conv

    def forward(x, *args, **kwargs):
        out = base(x) if hooked else base._conv_forward(x, base.weight, base.bias)  # (N, out, H, W)
        h = F.conv2d(x, a, None, stride, padding, dilation)  # (N, r, H, W)
        if out.is_contiguous() and h.is_contiguous():
            n = out.shape[0]
            out.view(n, out.shape[1], -1).baddbmm_(b_2d.expand(n, -1, -1), h.view(n, h.shape[1], -1))
            return out
        return out.add_(F.conv2d(h, b))
    return forward


def _dense_forward(base, weight: torch.Tensor):
    """The base layer's own op with the blend's weight ``W + B A`` (a copy; W stays untouched)."""
    if isinstance(base, nn.Linear):
        return lambda x, *args, **kwargs: F.linear(x, weight, base.bias)
    return lambda x, *args, **kwargs: base._conv_forward(x, weight, base.bias)


def _install(module, kind: str, a=None, b=None) -> None:
    plan = getattr(module, _PLAN, None)
    if plan is not None and plan[0] == kind and plan[1] is a and plan[2] is b:
        return
    if kind == "peft":
        module.__dict__.pop("forward", None)  # the class's (peft's) forward
    elif kind == "base":
        module.forward = _base_forward(module.get_base_layer())
    elif kind == "dense":
        module.forward = _dense_forward(module.get_base_layer(), a)
    else:
        module.forward = _stacked_forward(module, a, b)
    setattr(module, _PLAN, (kind, a, b))


def plan_of(module) -> str:
    """Which forward the layer runs now: "base", "dense", "stacked" or "peft"."""
    plan = getattr(module, _PLAN, None)
    return "peft" if plan is None else plan[0]


def layer_form(module, names: list[str], dense: bool = True) -> tuple | None:
    """How the layer runs the named adapters at their current scaling, or None for peft's path.

    ("dense", W + B A, None) when ``dense`` (the caller's memory budget allows a copy of the
    weight): the layer then costs exactly what its base layer costs; otherwise ("stacked", A, B).
    """
    stacked = stacked_weights(module, names)
    if stacked is None:
        return None
    if not dense:
        return ("stacked", *stacked)
    base = module.get_base_layer()
    if _has_hooks(base):  # the hooks may manage the weight (offloading): keep using it
        return ("stacked", *stacked)
    with torch.no_grad():
        return ("dense", base.weight.detach() + _delta(*stacked, base.weight), None)


def set_layer_scales(module, scales: dict[str, float], stack: bool = True, cached: tuple | None = None,
                     dense: bool = True) -> tuple | None:
    """Activate exactly the adapters in ``scales`` (name -> weight) on one peft LoRA layer.

    Zero weights should be left out by the caller (they add nothing). ``cached``: the form this
    blend gave the layer in an earlier call (the caller's cache); ``dense``: whether a dense
    weight copy is allowed (``layer_form``). Returns the form the layer now runs, or None when it
    runs its base module or peft's path.
    """
    names = list(scales)
    for name, weight in scales.items():
        module.set_scale(name, weight)
    if list(module.active_adapters) != names:
        activate(module, names)
    if not names:
        _install(module, "base")
        return None
    if stack:
        form = cached if cached is not None else layer_form(module, names, dense)
        if form is not None:
            _install(module, *form)
            return form
    _install(module, "peft")
    return None


def _delta(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """B A shaped like the base weight: (out, r) @ (r, in[*kh*kw]) for Linear and Conv2d (groups 1)."""
    return (b.flatten(1) @ a.flatten(1)).view_as(weight)


def fuse(modules) -> list:
    """Merge each layer's active adapters into its base weight, keeping what ``unfuse`` restores.

    Stacked layers add their ``B A`` to the base weight; peft-path layers use peft's ``merge``.
    Every merged layer then runs its base module (now holding the merged weight). Dense layers
    already run the base op on the merged weight ``W + B A``, held beside the base weight:
    copying it in and the base back out would cost time and change nothing, so they stay.
    """
    saved = []
    with torch.no_grad():
        for module in modules:
            kind = plan_of(module)
            if kind in ("base", "dense") or not module.active_adapters:
                continue
            base = module.get_base_layer()
            params = [base.weight]
            if kind == "peft" and getattr(base, "bias", None) is not None and any(
                    module.lora_bias.get(n, False) for n in module.active_adapters):
                params.append(base.bias)
            saved.append((module, [(p, p.detach().clone()) for p in params], getattr(module, _PLAN, None)))
            if kind == "stacked":
                _, a, b = getattr(module, _PLAN)
                base.weight.add_(_delta(a, b, base.weight))
            else:
                module.merge(adapter_names=list(module.active_adapters))
            _install(module, "base")
    return saved


def unfuse(saved) -> None:
    """Undo ``fuse`` bit-exactly and give each layer back the forward it ran before.

    peft's ``unmerge`` subtracts the delta again, which is not exact in floating point; copying
    the saved base weights back is.
    """
    with torch.no_grad():
        for module, params, plan in saved:
            for param, original in params:
                param.copy_(original)
            module.merged_adapters.clear()
            if plan is not None:
                _install(module, *plan)
            else:  # it ran peft's forward, never set by us
                module.__dict__.pop(_PLAN, None)
                module.__dict__.pop("forward", None)
