"""Prompt adherence of a text-to-image pipeline on the shapes world, read by the scorer.

Works with any diffusers-style pipeline (stock ``StableDiffusionPipeline`` or ours): it only calls
``pipe(prompt=[...], generator=[...], guidance_scale=g, num_inference_steps=n, output_type="pil")``.
Each evaluation image has its own seeded generator, so a result is reproducible image by image
and does not depend on the batch size.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from .scorer import adherence, score_image
from .world import COLOR_NAMES, caption_for, sample

EVAL_SEED_OFFSET = 50_000_000  # far from the training seeds (seed * 1_000_000 + i, i < 1e6)


@dataclass
class EvalCase:
    prompt: str
    target: object  # world.Attributes
    mentioned: tuple
    seed: int


def eval_cases(num_samples: int, seed: int = 0, mentioned=("shape", "color", "size", "h", "v")) -> list[EvalCase]:
    """Held-out prompts naming ``mentioned`` attributes of freshly drawn targets."""
    cases = []
    for i in range(num_samples):
        s = seed * 100_000 + EVAL_SEED_OFFSET + i
        attrs = sample(s).attributes
        cases.append(EvalCase(caption_for(attrs, tuple(mentioned)), attrs, tuple(mentioned), s))
    return cases


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], guidance_scale: float, steps: int,
             batch_size: int = 50, **kwargs) -> list:
    images = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch_size]]
        out = pipe(prompt=prompts[i:i + batch_size], generator=gens, guidance_scale=guidance_scale,
                   num_inference_steps=steps, output_type="pil", **kwargs)
        images.extend(out.images)
    return images


def evaluate_adherence(pipe, guidance_scales=(1.0, 7.5), num_samples: int = 200, steps: int = 25,
                       seed: int = 0, batch_size: int = 50, progress=None, **kwargs) -> dict:
    """Accuracy per attribute at each guidance scale: {g: {"shape": .., "color": .., "position": ..}}."""
    cases = eval_cases(num_samples, seed)
    results = {}
    for g in guidance_scales:
        images = generate(pipe, [c.prompt for c in cases], [c.seed for c in cases], g, steps, batch_size, **kwargs)
        readings = [score_image(im) for im in images]
        results[float(g)] = adherence(readings, [c.target for c in cases], [c.mentioned for c in cases])
        if progress is not None:
            progress(g, results[float(g)])
    return results


def empty_prompt_colors(pipe, num_samples: int = 200, steps: int = 25, seed: int = 1, batch_size: int = 50, **kwargs) -> dict:
    """Share of each color among unconditional samples (an unbiased model spreads them)."""
    seeds = [seed * 100_000 + EVAL_SEED_OFFSET + i for i in range(num_samples)]
    images = generate(pipe, [""] * num_samples, seeds, 1.0, steps, batch_size, **kwargs)
    counts = collections.Counter(score_image(im).color for im in images)
    return {c: counts.get(c, 0) / num_samples for c in COLOR_NAMES} | {"none": counts.get(None, 0) / num_samples}
