"""Diffusion Lab's pipeline package: the tracing Stable Diffusion pipeline and its math.

No gradio import anywhere under pipelines/.
"""
from .guidance import APGParams, CFGZeroParams, GuidanceConfig, GUIDANCE_METHODS, PerpNegParams
from .record import StepRecord, TracingPipelineOutput
from .schedulers import (
    SCHEDULERS,
    make_scheduler,
    sampling_schedule,
    scheduler_names,
    training_schedule,
)
from .tracing import TracingStableDiffusionPipeline

__all__ = [
    "APGParams",
    "CFGZeroParams",
    "GUIDANCE_METHODS",
    "GuidanceConfig",
    "PerpNegParams",
    "SCHEDULERS",
    "StepRecord",
    "TracingPipelineOutput",
    "TracingStableDiffusionPipeline",
    "make_scheduler",
    "sampling_schedule",
    "scheduler_names",
    "training_schedule",
]
