"""What each word does (issue 32): the prompt's words, where each one's cross-attention goes, and when.

Handlers for the attention tab (labapp/tabs/attention.py) and the ``/attention_maps`` endpoint:
- ``record``: one generation with the conditional branch's cross-attention recorded
  (pipelines/attention.py, through ``engine.attention_run``); keeps each word's map per step (the
  first image of the batch) and the x0 preview per step; shows the picked word.
- ``view``: another word or step of the recorded run (no model call).
- ``compare_weights``: the picked word at emphasis weights 0.5 / 1 / 1.5 (``(word:w)``, compel):
  the image and the word's map for each.
A word's map is the sum of its tokens' maps (mean over heads and layers, at latent resolution);
"mean over steps" averages the steps as DAAM does. How far to trust it comes from
``docs/attention_iou.json`` (bench/eval_attention.py, measured on the embedded model).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import gradio as gr
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from pipelines.attention import word_map, word_tokens
from pipelines.prompt_weights import parse_emphasis
from pipelines.request import GenerationRequest

from . import engine as eng
from . import generate as gen
from . import lora_user_ui
from . import validation as check
from .images import upscale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRUST_FILE = os.path.join(ROOT, "docs", "attention_iou.json")
DISPLAY = 256  # px of the overlays
COMPARE_WEIGHTS = (0.5, 1.0, 1.5)
ALL_STEPS = -1


@dataclass
class AttentionRun:
    """One recorded run, as the view needs it (kept in the session's gr.State)."""

    settings: GenerationRequest
    words: list[tuple[str, float]]  # (word, emphasis weight)
    tokens: list[list[int]]  # each word's token positions
    maps: torch.Tensor  # (steps, words, h, w) float16, the first image's maps
    image: Image.Image
    x0: list[Image.Image]  # the x0 preview at each step
    timesteps: list[float]
    model: str
    embedded: bool


def prompt_words(tokenizer, prompt: str, field: str = "prompt") -> list[tuple[str, float, list[int]]]:
    """(word, weight, token positions) for each word of an A1111-syntax prompt (syntax stripped)."""
    parsed = parse_emphasis(prompt, field)
    weight_at = []  # the emphasis weight of each character of the plain text
    for text, weight in parsed.fragments:
        weight_at += [weight] * len(text)
    starts = [m.start() for m in re.finditer(r"\S+", parsed.text)]
    return [(word, weight_at[start], positions)
            for (word, positions), start in zip(word_tokens(tokenizer, parsed.text), starts)]


def _check_step(run: AttentionRun, step) -> int:
    return check.integer("step", step, ALL_STEPS, run.maps.shape[0] - 1)


# ------------------------------------------------------------------------------ pictures


def overlay(image: Image.Image, heat: torch.Tensor, size: int = DISPLAY, alpha: float = 0.6) -> Image.Image:
    """The map (h, w) over the image: bilinear upsampling, min-max normalized, inferno colors."""
    base = upscale(image.convert("RGB"), size).resize((size, size), Image.NEAREST)
    up = F.interpolate(heat.float()[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(up.min()), float(up.max())
    norm = ((up - lo) / (hi - lo)).numpy() if hi > lo else np.zeros((size, size), np.float32)
    colored = colormaps["inferno"](norm)[..., :3]
    mixed = (1 - alpha) * np.asarray(base, np.float32) / 255 + alpha * colored
    return Image.fromarray((mixed.clip(0, 1) * 255).round().astype(np.uint8))


def mass_curve(run: AttentionRun, word_index: int, step: int) -> Figure:
    """Each word's share of the attention per step (the picked word bold): when does it matter."""
    mass = run.maps.float().mean(dim=(-2, -1)).numpy()  # (steps, words)
    fig = Figure(figsize=(6.4, 2.8), dpi=100, layout="constrained")
    ax = fig.subplots()
    steps = np.arange(mass.shape[0])
    for i, (word, _) in enumerate(run.words):
        if i != word_index:
            ax.plot(steps, mass[:, i], color="#cbd5e1", linewidth=1)
    ax.plot(steps, mass[:, word_index], color="#7c3aed", linewidth=2.2, marker="o", markersize=3,
            label=f"'{run.words[word_index][0]}'")
    if step != ALL_STEPS:
        ax.axvline(step, color="#0ea5e9", linestyle="--", linewidth=1)
    ax.set_title(f"When does '{run.words[word_index][0]}' matter: its share of the cross-attention per step",
                 fontsize=10)
    ax.set_xlabel("step (0 = pure noise)", fontsize=9)
    ax.set_ylabel("attention share", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.25)
    ax.tick_params(labelsize=8)
    return fig


def trust_line(run: AttentionRun, word_index: int) -> str:
    """One line on how far to trust this word's map, from the measurement on the embedded model."""
    try:
        with open(TRUST_FILE, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return "No measurement of the maps' accuracy is on file (run bench/eval_attention.py)."
    if not run.embedded:
        return (f"Measured on the embedded model only (the shape word's map overlaps the drawn shape by "
                f"{m['shape_iou']:.2f} IoU there); on {run.model} nothing is measured: read the map as a hint.")
    from shapesworld.attention_eval import POSITION_WORDS
    from shapesworld.world import COLOR_NAMES, SHAPES

    word = run.words[word_index][0].lower()
    chance = f"the whole image as the map: {m['baseline_iou']:.2f}"
    if word in SHAPES:
        return (f"On this model a shape word's map overlaps the drawn shape by {m['shape_iou']:.2f} IoU on average "
                f"({m['prompts']} prompts; {chance}; BENCHMARKS.md).")
    if word in COLOR_NAMES:
        return (f"On this model a color word's map overlaps the drawn shape by {m['color_iou']:.2f} IoU on average "
                f"({m['prompts']} prompts; {chance}; BENCHMARKS.md).")
    if word in POSITION_WORDS:
        return (f"Position words' maps do not point at the position on this model: {m['position_mass']:.2f} of the "
                "map lies in the named third of the image, chance is 0.33 (BENCHMARKS.md).")
    return (f"Measured for shape and color words only ({m['shape_iou']:.2f} / {m['color_iou']:.2f} IoU with the "
            f"drawn shape; {chance}); other words' maps are not checked against anything.")


def _payload(run: AttentionRun, word_index: int, step: int, heat: torch.Tensor) -> dict:
    mass = run.maps.float().mean(dim=(-2, -1))[:, word_index]
    return {
        "words": [{"index": i, "word": w, "weight": wt, "tokens": t}
                  for i, ((w, wt), t) in enumerate(zip(run.words, run.tokens))],
        "word_index": word_index, "word": run.words[word_index][0],
        "step": step, "num_steps": int(run.maps.shape[0]), "timesteps": run.timesteps,
        "mass_per_step": [round(float(v), 5) for v in mass],
        "map": [[round(float(v), 5) for v in row] for row in heat.float()],
        "map_shape": list(heat.shape),
    }


def _show(run: AttentionRun, word_index: int, step: int):
    """(map over the image, map over the x0 preview, curve, trust line, numbers)."""
    heat = run.maps[:, word_index].float().mean(0) if step == ALL_STEPS else run.maps[step, word_index].float()
    x0 = run.x0[-1 if step == ALL_STEPS else step]
    return (overlay(run.image, heat), overlay(x0, heat), mass_curve(run, word_index, step),
            trust_line(run, word_index), _payload(run, word_index, step, heat))


def chips(run: AttentionRun, word_index: int):
    choices = [(w if wt == 1.0 else f"{w} ×{wt:.2g}", i) for i, (w, wt) in enumerate(run.words)]
    return gr.update(choices=choices, value=word_index)


# ------------------------------------------------------------------------------ handlers


def _run(settings: GenerationRequest) -> AttentionRun:
    engine = eng.current()
    words = prompt_words(engine.pipe.tokenizer, settings.prompt)
    if not words:
        raise check.FieldError("prompt", settings.prompt, "at least one word (the map is per word)")
    output = eng.attention_run(settings, gen.engine_decoder(engine))
    records = [r for r in output.trace if r.attention is not None]
    maps = torch.stack([torch.stack([word_map(r.attention.maps[0], t) for _, _, t in words]) for r in records])
    return AttentionRun(settings=settings, words=[(w, wt) for w, wt, _ in words], tokens=[t for _, _, t in words],
                        maps=maps.to(torch.float16), image=output.images[0],
                        x0=[r.previews["x0_guided"][0] for r in records], timesteps=[float(r.timestep) for r in records],
                        model=engine.model_id, embedded=engine.is_embedded)


@check.gradio_errors
def record(prompt, negative_prompt, scheduler, steps, guidance_scale, seed, word_index=0, step=ALL_STEPS,
           lora=""):
    """/attention_maps: generate once with the cross-attention recorded, then show word ``word_index``
    (0 = the prompt's first word) at ``step`` (-1: the mean over all steps).

    Returns (word chips, map over the image, map over the x0 preview at ``step``, per-step curve,
    trust line, numbers as JSON: words, the map, each step's attention share, the run state, the step slider)."""
    engine = eng.current()
    settings = GenerationRequest.from_form(lora_user_ui.limits(engine), prompt=prompt, negative_prompt=negative_prompt,
                                           scheduler=scheduler, steps=steps, guidance_scale=guidance_scale, seed=seed,
                                           lora=lora)
    # the indices are checked before any work: the word count is known from the prompt alone
    count = len(prompt_words(engine.pipe.tokenizer, settings.prompt))
    word_index = check.integer("word_index", word_index, 0, max(0, count - 1))
    step = check.integer("step", step, ALL_STEPS, settings.steps - 1)
    run = _run(settings)
    step = min(step, run.maps.shape[0] - 1)  # img2img-like starts would run fewer steps; none here
    slider = gr.update(maximum=run.maps.shape[0] - 1, value=step)
    return (chips(run, word_index), *_show(run, word_index, step), run, slider)


@check.gradio_errors
def view(run, word_index, step):
    """Another word or step of the recorded run (no model call)."""
    if not isinstance(run, AttentionRun):
        raise check.FieldError("run", type(run).__name__, "a recorded run: press Record first")
    word_index = check.integer("word_index", word_index, 0, len(run.words) - 1)
    step = _check_step(run, step)
    return _show(run, word_index, step)


def weighted_prompt(run: AttentionRun, word_index: int, weight: float) -> str:
    """The run's prompt in A1111 syntax with word ``word_index`` at ``weight`` (the others keep theirs)."""
    def escape(word):
        return re.sub(r"([()\[\]\\])", r"\\\1", word)

    parts = []
    for i, (word, w) in enumerate(run.words):
        w = weight if i == word_index else w
        parts.append(escape(word) if w == 1.0 else f"({escape(word)}:{w:.4g})")
    return " ".join(parts)


@check.gradio_errors
def compare_weights(run, word_index):
    """The picked word at weights 0.5 / 1 / 1.5: each image and the word's map (mean over steps)."""
    if not isinstance(run, AttentionRun):
        raise check.FieldError("run", type(run).__name__, "a recorded run: press Record first")
    word_index = check.integer("word_index", word_index, 0, len(run.words) - 1)
    items = []
    for weight in COMPARE_WEIGHTS:
        other = _run(run.settings.replace(prompt=weighted_prompt(run, word_index, weight)))
        heat = other.maps[:, word_index].float().mean(0)
        label = f"'{run.words[word_index][0]}' at {weight:g}"
        items += [(upscale(other.image, DISPLAY), label), (overlay(other.image, heat), f"{label}: its map")]
    return items
