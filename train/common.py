"""Pieces the from-scratch trainers share (train/train_base.py, train/train_classifier.py); their
checkpoints are train/lora_checkpoints.py's (atomic, marked complete, pruned)."""
from __future__ import annotations

import math

from train.lora_checkpoints import read_marker


def warmup_cosine(warmup: int, total: int, floor: float):
    """A LambdaLR factor: linear warmup to 1 over ``warmup`` steps, then cosine decay to ``floor`` at
    ``total`` (SGDR's cosine, Loshchilov & Hutter 2017, without restarts)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def resume_step(accelerator, checkpoint: str | None) -> int:
    """Load ``checkpoint`` (a complete checkpoint-N folder, or None: a fresh start) into the
    accelerator's prepared objects; the step it was saved at (0 for a fresh start)."""
    if not checkpoint:
        return 0
    accelerator.load_state(checkpoint)
    return int(read_marker(checkpoint)["global_step"])
