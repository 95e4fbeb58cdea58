"""Weights in git: only the embedded model and its LoRAs, all of it under 40 MB, and nothing that
training or the app writes (checkpoints, logs, caches, venvs) is tracked."""
from __future__ import annotations

import os
import subprocess

import pytest

from testkit.paths import ROOT
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".pkl", ".onnx")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.decode().split("\0") if p]


def test_weights_only_under_model_and_lora_folders_and_under_40_mb():
    weights = [p for p in tracked_files() if p.endswith(WEIGHT_SUFFIXES)]
    assert weights, "the embedded model should be tracked"
    stray = [p for p in weights if not p.startswith(("models/tiny-shapes/", "lora_presets/tiny-shapes/"))]
    assert not stray, f"weight files outside models/tiny-shapes and lora_presets/tiny-shapes: {stray}"
    total = sum(os.path.getsize(os.path.join(ROOT, p)) for p in weights)
    assert total < 40 * 2**20, f"weights in git take {total / 2**20:.1f} MiB (limit 40 MiB)"


def test_no_run_outputs_tracked():
    bad = [p for p in tracked_files()
           if p.startswith(("runs/", ".venv/", "test-artifacts/")) or "/checkpoint-" in p or "__pycache__" in p
           or p.endswith((".log", ".tmp"))]
    assert not bad, f"training/app outputs tracked in git: {bad}"
