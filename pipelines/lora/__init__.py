"""Everything about applying LoRA adapters to a pipeline, in one package.

- ``blender``: :class:`LoraBlender` (load, blend, fuse, per-block and per-step weights) and ``lora_grid``
- ``layers``: the per-blend forward of each peft layer (base / dense / stacked / peft)
- ``settings``: :class:`AdapterSetting` and :class:`Blend`, with ``Blend.parse`` (the one blend parser)
- ``files``: safe reading of adapter files (names, headers) and the Hub/offline switches
- ``presets``: the adapters each model family ships (``lora_presets/``)
- ``user``, ``user_store``, ``hub``: a user's own adapters (upload or Hub id), checked before any
  tensor is read, owned by one session, least recently used unloaded first
- ``inspector``: what an adapter changes (rank, alpha, module kinds per block, ||(alpha/r) B A||_F)

The common names are importable from the package itself (``from pipelines.lora import LoraBlender,
Blend``); they load on first use (PEP 562), so importing ``pipelines.lora.settings`` alone pulls in
no peft or diffusers.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "LoraBlender": "blender",
    "lora_grid": "blender",
    "AdapterSetting": "settings",
    "Blend": "settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
