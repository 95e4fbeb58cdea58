"""train_lora.py killed mid-run and resumed: checkpoints and exact resumption."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from testkit.tiny import train_env
from testkit.train_lora import ROOT, TRAIN_ARGS, TRAIN_LORA, run_train, load_tensors


@pytest.mark.training
def test_resume_after_kill_matches_uninterrupted_run(reference_run, tiny_model, image_folder, tmp_path):
    out = str(tmp_path / "out")
    args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
            *TRAIN_ARGS]
    env = train_env(tmp_path)
    proc = subprocess.Popen([*TRAIN_LORA, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = os.path.join(out, "checkpoint-2", "checkpoint_complete.json")
    deadline = time.time() + 240
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "pytorch_lora_weights.safetensors")), "killed too late to test resume"

    resumed = run_train([*args, "--resume_from_checkpoint", "latest"], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resuming from" in resumed.stderr
    final = load_tensors(os.path.join(out, "pytorch_lora_weights.safetensors"))
    reference = load_tensors(os.path.join(reference_run["out"], "pytorch_lora_weights.safetensors"))
    assert final.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(final[key], reference[key], rtol=0, atol=1e-6)


def test_checkpoint_round_trip_restores_lora_weights(tmp_path):
    """The diffusers-script bug this guards against: load_state returned without loading LoRA weights."""
    from accelerate import Accelerator
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from testkit.tiny import make_tiny_components
    from train.lora_checkpoints import latest_checkpoint, register_lora_state_hooks, save_checkpoint

    def lora_unet(seed):
        unet = make_tiny_components(seed=0)["unet"]
        unet.requires_grad_(False)
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
        for p in unet.parameters():
            if p.requires_grad:
                p.data.normal_()
        return unet

    accelerator = Accelerator(cpu=True)
    unet = lora_unet(1)
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad])
    unet, optimizer = accelerator.prepare(unet, optimizer)
    register_lora_state_hooks(accelerator, {"unet": accelerator.unwrap_model(unet)})
    saved = {k: v.clone() for k, v in get_peft_model_state_dict(unet).items()}
    save_checkpoint(accelerator, str(tmp_path), 3, {"epoch": 0, "batches_in_epoch": 3, "seed": 0}, None)
    assert sorted(os.listdir(tmp_path / "checkpoint-3")) == [
        "checkpoint_complete.json", "optimizer.bin", "random_states_0.pkl", "unet_lora.safetensors"]

    os.makedirs(tmp_path / "checkpoint-9")  # crashed before its marker: never "latest"
    os.makedirs(tmp_path / ".tmp-checkpoint-11")
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")

    accelerator2 = Accelerator(cpu=True)
    other = lora_unet(2)
    other_opt = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad])
    other, other_opt = accelerator2.prepare(other, other_opt)
    register_lora_state_hooks(accelerator2, {"unet": accelerator2.unwrap_model(other)})
    before = get_peft_model_state_dict(other)
    assert any(not torch.equal(before[k], saved[k]) for k in saved)
    accelerator2.load_state(str(tmp_path / "checkpoint-3"))
    loaded = get_peft_model_state_dict(other)
    assert loaded.keys() == saved.keys()
    for key in saved:
        assert torch.equal(loaded[key], saved[key]), key
