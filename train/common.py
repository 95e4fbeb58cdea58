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


def finish_process(accelerator, code: int = 0) -> int:
    """The last statement of a trainer's ``main()``: returns ``code`` in a single-process run. In a
    multi-process run every rank waits for the others and destroys the process group (torch.distributed's
    advice for the end of a program), then the process leaves with ``os._exit(code)`` once logs and
    streams are flushed, *before* ``main()`` returns. Every output is on disk by then (checkpoints are
    published atomically, the result file written).

    Why not a normal return: when ``main()`` returns, its frame frees the DDP model, whose reducer holds
    the last reference to the gloo process group; ``~ProcessGroupGloo`` then joins its worker thread
    while the main thread holds the GIL, and that worker may itself be waiting for the GIL to free a
    finished collective's tensors. Both wait forever. Seen with py-spy --native in
    tests/train/train_lora/test_distributed.py, about 1 run in 3-4: the main thread in ``Reducer::~Reducer ->
    ~ProcessGroupGloo -> std::thread::join``, the worker in ``~AsyncAllgatherWork -> gil_scoped_acquire``.
    Destroying the group alone does not help (the reducer keeps its own reference), nor does an exit
    after ``main()`` returns (the frame is freed first)."""
    import logging
    import os
    import sys

    import torch.distributed as dist

    if accelerator.num_processes <= 1:
        return code
    if dist.is_available() and dist.is_initialized():
        accelerator.wait_for_everyone()
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))
