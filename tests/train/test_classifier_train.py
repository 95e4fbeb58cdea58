"""train/train_classifier.py: a tiny run writes the classifier folder; a run resumed from its
checkpoint ends with the same weights as the uninterrupted run; bad flags give one line."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from testkit.paths import ROOT
from testkit.tiny import train_env

TRAIN_CLASSIFIER = [sys.executable, "-m", "train.train_classifier"]
TINY = ["--pretrained_model_name_or_path", os.path.join(ROOT, "models", "tiny-shapes"), "--num_samples", "48",
        "--num_eval_samples", "24", "--max_train_steps", "4", "--checkpointing_steps", "2", "--train_batch_size", "8",
        "--channels", "16,16", "--report_to", "none", "--seed", "5", "--threads", "1"]


def train(tmp_path, out, *extra):
    return subprocess.run([*TRAIN_CLASSIFIER, "--output_dir", str(out), *TINY, *extra], cwd=ROOT,
                          env=train_env(tmp_path), capture_output=True, text=True, timeout=600)


def train_in_process(out, *extra) -> int:
    """main() in this process: a single-process run pays no interpreter start and no imports."""
    from train.train_classifier import main

    return main(["--output_dir", str(out), *TINY, *extra])


def test_tiny_run_then_resume_matches(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    caplog.set_level("INFO", logger="train_classifier")
    a = tmp_path / "a"
    assert train_in_process(a) == 0
    for name in ("classifier/config.json", "classifier/model.safetensors", "classifier/training.json",
                 "accuracy_vs_t.json", "accuracy_vs_t.png", "checkpoint-2/checkpoint_complete.json"):
        assert (a / name).is_file(), name
    # resume: a fresh folder holding only the step-2 checkpoint (and the encoded-latent caches)
    b = tmp_path / "b"
    b.mkdir()
    shutil.copytree(a / "checkpoint-2", b / "checkpoint-2")
    for cache in ("latents_train.pt", "latents_eval.pt"):
        shutil.copy(a / cache, b / cache)
    caplog.clear()
    assert train_in_process(b, "--resume_from_checkpoint", "latest") == 0
    assert "resumed from" in caplog.text
    wa, wb = load_file(str(a / "classifier/model.safetensors")), load_file(str(b / "classifier/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.app_process
def test_bad_flags_give_one_line(tmp_path):
    bad = train(tmp_path, tmp_path / "c", "--channels", "10,20")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("train_classifier.py: error: --channels='10,20'")
