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


def close_process_group(accelerator) -> None:
    """Leave a multi-process run together: every rank waits for the others, then destroys the process
    group (torch.distributed's own advice for the end of a program). Without it, rank 0 could hang at
    interpreter exit in the group's teardown after its peer had exited: seen as an idle rank 0 in
    ``sys.exit(main())`` until tests/train_lora/test_distributed.py's 600 s limit."""
    import torch.distributed as dist

    if accelerator.num_processes > 1 and dist.is_available() and dist.is_initialized():
        accelerator.wait_for_everyone()
        dist.destroy_process_group()


def exit_process(code) -> None:
    """End a training script with ``code``. In a multi-process run (torchrun sets WORLD_SIZE) the
    process leaves with ``os._exit`` once logs and streams are flushed: every output is already on
    disk (checkpoints are published atomically, the result file written), and a normal interpreter
    exit frees the DDP reducer, whose gloo process group joins worker threads that can wait forever
    for a peer that has already exited (seen: rank 0 in ~ProcessGroupGloo -> std::thread::join after
    main returned, 1 run in 3-4 of tests/train_lora/test_distributed.py)."""
    import logging
    import os
    import sys

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code or 0))
    sys.exit(code)
