"""Crash-safe training checkpoints for the LoRA trainer.

A checkpoint is `accelerator.save_state` (optimizer, LR scheduler, grad scaler, RNG of every
process, accelerate's step counter) plus the LoRA weights in peft's own key format, written by our
hooks so frozen base weights are never copied. It is written into `.tmp-checkpoint-N/`; the
marker `checkpoint_complete.json` (the training position) is written last and the folder is then
renamed to `checkpoint-N/`. "latest" only considers folders that carry the marker, so a kill at
any point leaves the previous checkpoint as the latest.

LoRA weights are restored with `set_peft_model_state_dict` and checked key by key: a checkpoint
that would leave any LoRA parameter at its fresh initialisation is an error, not a warning
(the failure mode of diffusers' training scripts, where resume silently trained a new adapter).
"""
from __future__ import annotations

import json
import os
import re
import shutil

import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

MARKER = "checkpoint_complete.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"
_TRASH_PREFIX = ".trash-checkpoint-"


def complete_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, MARKER)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def read_marker(checkpoint_dir: str) -> dict:
    path = os.path.join(checkpoint_dir, MARKER)
    if not os.path.isfile(path):
        raise ValueError(f"--resume_from_checkpoint={checkpoint_dir!r} is incomplete (no {MARKER}): "
                         "it was interrupted while being written; use an earlier one or \"latest\"")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json_durably(path: str, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(folder: str) -> None:
    """Flush every file of a freshly written folder to disk before its completion marker exists,
    so that a power loss can never leave a marked checkpoint whose data is still in the page cache."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def remove_stale_partials(output_dir: str) -> None:
    """Delete half-written checkpoints left by a crash (main process only)."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def prune_checkpoints(output_dir: str, keep: int | None) -> list[str]:
    if keep is None:
        return []
    found = complete_checkpoints(output_dir)
    doomed = [path for _, path in found[: max(0, len(found) - keep)]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def save_checkpoint(accelerator, output_dir: str, step: int, position: dict, total_limit: int | None) -> str:
    """Every process calls this (each writes its own RNG state); the main process publishes it."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f"{_TMP_PREFIX}{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_tree(tmp)
        _write_json_durably(os.path.join(tmp, MARKER), {"global_step": step, **position})
        if os.path.exists(final):  # e.g. a resumed run reaching a step the killed run had saved
            trash = os.path.join(output_dir, f"{_TRASH_PREFIX}{step}")
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def register_lora_state_hooks(accelerator, named_modules: dict[str, torch.nn.Module]) -> None:
    """Make save_state/load_state carry only the LoRA weights of the given (unwrapped) modules."""

    def name_of(model) -> str:
        unwrapped = accelerator.unwrap_model(model)
        for name, module in named_modules.items():
            if unwrapped is module:
                return name
        raise ValueError(f"unexpected model in the accelerator: {type(unwrapped).__name__}")

    def save_hook(models, weights, output_dir):
        for model in models:
            name = name_of(model)
            if accelerator.is_main_process:
                state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(accelerator.unwrap_model(model)).items()}
                save_file(state, os.path.join(output_dir, f"{name}_lora.safetensors"))
        # Empty `weights` so accelerate does not also save the full (frozen) model weights.
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        while models:
            model = models.pop()  # popped: accelerate must not try to load full weights for it
            name = name_of(model)
            load_lora_state(accelerator.unwrap_model(model), os.path.join(input_dir, f"{name}_lora.safetensors"))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def load_lora_state(module: torch.nn.Module, path: str) -> None:
    """Load peft-format LoRA weights into `module`'s "default" adapter; every LoRA key must match."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file {path!r} is missing: cannot restore the LoRA weights")
    state = load_file(path)
    expected = set(get_peft_model_state_dict(module).keys())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{path!r} does not match the model's LoRA layers (missing {missing[:3]}..., "
                         f"unexpected {extra[:3]}...): were --rank/--target_modules changed since it was saved?")
    result = set_peft_model_state_dict(module, state, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{path!r}: keys not loaded into the model: {unexpected[:3]}...")
    loaded = get_peft_model_state_dict(module)
    for key, value in state.items():
        if not torch.equal(loaded[key].detach().cpu().to(value.dtype), value):
            raise ValueError(f"{path!r}: LoRA weight {key} did not load")
