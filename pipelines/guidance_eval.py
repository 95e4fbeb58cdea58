"""Run one kind of guidance on shapes-world prompts and measure it (beside the guidance it measures): adherence (the scorer), model
calls and seconds per image. Shared by bench/eval_guidance_kinds.py and the app's CFG lab
("Classifier vs classifier-free"), so both measure the same thing the same way.

Kinds (same prompts, same seeds, hence the same initial noise for every kind):
    uncond          the empty prompt, no guidance (one UNet evaluation per step)
    cfg             eps_u + w (eps_c - eps_u)                        (two per step)
    classifier      eps_u - s sqrt(1 - alpha_bar) grad log p(y|x_t)  (one, plus a classifier
                    forward + backward; the UNet never sees the prompt)
    classifier+cfg  CFG at w plus the classifier term at s           (two, plus the classifier)

Model calls are counted, not assumed: forward pre-hooks on the UNet and the classifier add up
the batch rows each call processes, divided by the number of images.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from shapesworld.scorer import adherence, score_image

KINDS = ("uncond", "cfg", "classifier", "classifier+cfg")


@dataclass
class KindRun:
    kind: str
    cfg_scale: float
    classifier_scale: float
    adherence: dict
    unet_calls_per_image: float
    classifier_calls_per_image: float
    seconds_per_image: float
    images: list = field(default_factory=list, repr=False)
    traces: list = field(default_factory=list, repr=False)  # one trace per batch, when recorded

    def summary(self) -> dict:
        keep = ("kind", "cfg_scale", "classifier_scale", "adherence", "unet_calls_per_image",
                "classifier_calls_per_image", "seconds_per_image")
        return {k: getattr(self, k) for k in keep}


def kind_call(kind: str, prompts: list[str], cfg_scale: float, classifier_scale: float) -> dict:
    """Pipeline keyword arguments for one kind (see the module docstring)."""
    from .guidance import GuidanceConfig

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a guidance kind; valid: {list(KINDS)}")
    if kind == "uncond":
        return {"prompt": [""] * len(prompts), "guidance_scale": 1.0}
    if kind == "cfg":
        return {"prompt": list(prompts), "guidance_scale": cfg_scale}
    scale = 1.0 if kind == "classifier" else cfg_scale
    return {"prompt": list(prompts), "guidance_scale": scale,
            "guidance": GuidanceConfig(method=kind, classifier_scale=classifier_scale)}


class _RowCounter:
    """Counts the batch rows a module's forward sees (a forward pre-hook)."""

    def __init__(self, module):
        self.rows = 0
        self._handle = module.register_forward_pre_hook(self._hook) if module is not None else None

    def _hook(self, module, args):
        self.rows += int(args[0].shape[0])

    def close(self):
        if self._handle is not None:
            self._handle.remove()


def run_kind(pipe, prompts: list[str], seeds: list[int], targets: list, mentioned: list, kind: str,
             cfg_scale: float = 1.0, classifier_scale: float = 0.0, steps: int = 25, scheduler: str | None = None,
             batch_size: int = 50, record: str = "off", keep_images: bool = False) -> KindRun:
    """Generate one image per (prompt, seed) with ``kind`` and score it against ``targets``."""
    unet_rows = _RowCounter(pipe.unet)
    clf_rows = _RowCounter(getattr(pipe, "classifier", None))
    images, traces = [], []
    start = time.perf_counter()
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch_size]]
            out = pipe(num_inference_steps=steps, generator=gens, output_type="pil", scheduler=scheduler,
                       record=record, **kind_call(kind, chunk, cfg_scale, classifier_scale))
            images.extend(out.images)
            if out.trace is not None:
                traces.append(out.trace)
    finally:
        unet_rows.close()
        clf_rows.close()
    seconds = time.perf_counter() - start
    n = len(prompts)
    scores = adherence([score_image(im) for im in images], targets, mentioned) if targets is not None else {}
    return KindRun(kind, float(cfg_scale), float(classifier_scale), {k: round(v, 4) for k, v in scores.items()},
                   unet_rows.rows / n, clf_rows.rows / n, seconds / n,
                   images if keep_images else [], traces)


def mean_adherence(scores: dict, keys=("shape", "color", "size", "h", "v")) -> float:
    """Mean accuracy over the attributes the prompts named (NaN entries: not named, skipped)."""
    vals = [scores[k] for k in keys if k in scores and scores[k] == scores[k]]
    return sum(vals) / len(vals) if vals else float("nan")
