"""Diffusion Lab's pipeline package: the tracing Stable Diffusion pipeline and its math.

No gradio import anywhere under pipelines/.

The names below load on first use (PEP 562), so that light modules of the package, such as the
model registry that ``app.py --help`` reads, import without torch and diffusers (~9 s here).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "APGParams": ".guidance",
    "CFGZeroParams": ".guidance",
    "GUIDANCE_METHODS": ".guidance",
    "GuidanceConfig": ".guidance",
    "PerpNegParams": ".guidance",
    "StepRecord": ".record",
    "TracingPipelineOutput": ".record",
    "SCHEDULERS": ".schedulers",
    "make_scheduler": ".schedulers",
    "sampling_schedule": ".schedulers",
    "scheduler_names": ".schedulers",
    "training_schedule": ".schedulers",
    "TracingStableDiffusionPipeline": ".tracing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
