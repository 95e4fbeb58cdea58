"""train_lora.py with a frozen partner LoRA (--partner_lora)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from testkit.tiny import train_env, write_noise_imagefolder
from testkit.train_lora import ROOT, MODULE, TRAIN_ARGS, run_train, load_tensors, closed_port


def test_partner_lora_is_frozen_and_switches_exactly(tiny_model, tiny_partner):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from train.lora_partner import PartnerLoRA

    def unet_with_trained_adapter():
        unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
        unet.requires_grad_(False)
        torch.manual_seed(0)  # the gaussian init of lora_A draws from the global generator
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.1)
        return unet.eval()

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 16, 16, generator=g)  # (B, tokens, cross_attention_dim of the tiny UNet)

    def predict(unet):
        with torch.no_grad():
            return unet(latents, torch.tensor([10, 500]), text).sample

    alone = unet_with_trained_adapter()
    reference = predict(alone)
    unet = unet_with_trained_adapter()
    trainable_before = {n for n, p in unet.named_parameters() if p.requires_grad}
    partner = PartnerLoRA(unet, tiny_partner, weight=1.0)
    # Only the trained adapter learns; the partner's layers (even ones the trained adapter lacks) are frozen.
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == trainable_before
    assert partner.num_parameters > 0 and any(".conv1." in n and ".partner." in n for n, _ in unet.named_parameters())
    torch.testing.assert_close(predict(unet), reference, rtol=0, atol=0)  # off: exactly the adapter alone
    partner.switch(True)
    on = predict(unet)
    assert (on - reference).abs().max() > 1e-3
    partner.switch(False)
    torch.testing.assert_close(predict(unet), reference, rtol=0, atol=0)
    # What gets saved is the trained adapter only.
    assert not any("partner" in k for k in get_peft_model_state_dict(unet))
    assert set(get_peft_model_state_dict(unet)) == set(get_peft_model_state_dict(alone))


@pytest.mark.training
def test_partner_run_trains_both_contexts_and_resumes_exactly(reference_run, tiny_model, tiny_partner, image_folder,
                                                              tmp_path):
    partner_data = tmp_path / "both-styles"
    partner_data.mkdir()
    write_noise_imagefolder(partner_data, 6, (16, 16), ["red circle at night", "blue square at night"], seed=1)
    out = str(tmp_path / "out")
    args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
            *TRAIN_ARGS, "--partner_lora", tiny_partner, "--partner_train_data_dir", str(partner_data),
            "--partner_prob", "0.5"]
    env = train_env(tmp_path)
    proc = run_train(args, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.load(open(os.path.join(out, "train_result.json")))
    micro_steps = 16 * 2  # --max_train_steps 16, --gradient_accumulation_steps 2
    assert 0 < result["partner_micro_steps_this_run"] < micro_steps
    for name in ("validation/step-4-0.png", "validation/step-4-with-partner-0.png", "validation/final-with-partner-0.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "## Composes with" in card and os.path.basename(tiny_partner) in card

    final = load_tensors(os.path.join(out, "pytorch_lora_weights.safetensors"))
    alone = load_tensors(os.path.join(reference_run["out"], "pytorch_lora_weights.safetensors"))
    assert final.keys() == alone.keys()  # the same adapter layout, no partner tensors in the file
    assert max((final[k] - alone[k]).abs().max().item() for k in final) > 1e-4  # the partner steps changed training

    # Resume from a mid-run checkpoint into a fresh folder: the partner steps and their batches are keyed by
    # the micro-step, so the resumed run ends on the same adapter.
    resumed_out = str(tmp_path / "resumed")
    resumed = run_train([*[resumed_out if a == out else a for a in args], "--resume_from_checkpoint",
                         os.path.join(out, "checkpoint-12")], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    again = load_tensors(os.path.join(resumed_out, "pytorch_lora_weights.safetensors"))
    for key in final:
        torch.testing.assert_close(again[key], final[key], rtol=0, atol=1e-6)


def test_partner_flags_are_checked(image_folder, tmp_path):
    from train.lora_args import parse_args

    fake = tmp_path / "partner.safetensors"
    fake.write_bytes(b"")
    base = ["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder]
    cases = [
        (["--partner_shapes_style", "night"], "--partner_shapes_style needs --partner_lora"),
        (["--partner_lora", str(tmp_path / "missing.safetensors"), "--partner_train_data_dir", image_folder],
         "--partner_lora="),
        (["--partner_lora", str(fake)], "--partner_lora needs exactly one of"),
        (["--partner_lora", str(fake), "--partner_shapes_style", "night"], "--partner_shapes_style needs --shapes_style"),
        (["--partner_lora", str(fake), "--partner_train_data_dir", image_folder, "--partner_prob", "0"], "--partner_prob=0.0"),
        (["--partner_lora", str(fake), "--partner_train_data_dir", image_folder, "--partner_weight", "-1"],
         "--partner_weight=-1.0"),
        (["--partner_lora", str(fake), "--partner_train_data_dir", str(tmp_path)], "--partner_train_data_dir="),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_args([*base, *extra])
    with pytest.raises(ValueError, match=re.escape("--partner_shapes_style='night' is invalid: must differ")):
        parse_args(["--pretrained_model_name_or_path", "m", "--shapes_style", "night", "--partner_lora", str(fake),
                    "--partner_shapes_style", "night"])
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(b"")
    args = parse_args([*base, "--partner_lora", str(tmp_path), "--partner_train_data_dir", image_folder])
    assert args.partner_lora == str(tmp_path / "pytorch_lora_weights.safetensors")  # a folder names its weights file


@pytest.mark.slow
def test_two_cpu_processes_with_a_partner_end_with_identical_weights(tiny_model, tiny_partner, image_folder, tmp_path):
    """DDP with a frozen partner adapter: its parameters stay out of the gradient buckets, ranks agree."""
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(closed_port()),
           "-m", MODULE, "--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder,
           "--partner_lora", tiny_partner, "--partner_train_data_dir", image_folder, "--partner_prob", "0.5",
           "--output_dir", out, "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "4",
           "--checkpointing_steps", "2", "--seed", "3", "--learning_rate", "1e-2", "--report_to", "none"]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(tmp_path, ACCELERATE_USE_CPU="true"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.load(open(os.path.join(out, "train_result.json")))
    assert result["num_processes"] == 2 and result["global_step"] == 4
    assert 0 < result["partner_micro_steps_this_run"] < 4
    assert len(set(result["rank_lora_sha256"])) == 1
