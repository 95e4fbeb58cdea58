"""A stock diffusers ``StableDiffusionPipeline`` on tiny seeded components and one fixed small call:
the reference the LoRA tests compare against."""
from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from testkit.tiny import make_tiny_components

PROMPT = "a red circle"
CALL = dict(num_inference_steps=3, height=16, width=16, guidance_scale=5.0, output_type="np")


def make_pipe(cls=StableDiffusionPipeline):
    components = make_tiny_components()
    components.pop("image_encoder")
    pipe = cls(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def run(pipe, **kwargs):
    return pipe(PROMPT, generator=gen(), **{**CALL, **kwargs}).images
