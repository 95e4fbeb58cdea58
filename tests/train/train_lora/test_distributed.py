"""train_lora.py on two CPU processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testkit.tiny import train_env
from testkit.train_lora import ROOT, MODULE, closed_port


@pytest.mark.slow
def test_two_cpu_processes_end_with_identical_weights(tiny_model, image_folder, tmp_path):
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(closed_port()),
           "-m", MODULE, "--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder,
           "--output_dir", out, "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "3",
           "--checkpointing_steps", "2", "--seed", "3", "--learning_rate", "1e-2", "--train_text_encoder",
           "--report_to", "none"]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(tmp_path, ACCELERATE_USE_CPU="true"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.load(open(os.path.join(out, "train_result.json")))
    assert result["num_processes"] == 2 and result["global_step"] == 3
    assert len(result["rank_lora_sha256"]) == 2 and len(set(result["rank_lora_sha256"])) == 1
    assert sorted(os.listdir(os.path.join(out, "checkpoint-2"))) == [
        "checkpoint_complete.json", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl", "scheduler.bin",
        "text_encoder_lora.safetensors", "unet_lora.safetensors"]
