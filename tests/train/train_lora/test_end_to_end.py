"""train_lora.py end to end: outputs, the Hub push, logs, validation images."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from testkit.tiny import train_env
from testkit.train_lora import TOKEN, run_train, load_tensors, closed_port, assert_token_absent


@pytest.mark.training
def test_end_to_end_adapter_loads_with_stock_pipeline(reference_run, tiny_model):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model

    from train.lora_checkpoints import load_lora_state

    out = reference_run["out"]
    for name in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors", "README.md",
                 "train_result.json", "validation/final-0.png", "validation/step-4-0.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    result = json.load(open(os.path.join(out, "train_result.json")))
    assert result["global_step"] == 16 and np.isfinite(result["final_loss"])
    # --checkpoints_total_limit 3 keeps the newest three complete checkpoints.
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == [
        "checkpoint-12", "checkpoint-14", "checkpoint-16"]

    def images(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("red circle", num_inference_steps=2, height=16, width=16, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    base = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    base_images = images(base)
    base.load_lora_weights(out)  # stock loader, default weight name
    lora_images = images(base)
    # Deterministic: the exported metadata has lora_dropout 0 (diffusers leaves loaded LoRA layers in train mode).
    np.testing.assert_array_equal(images(base), lora_images)
    assert np.abs(lora_images - base_images).max() > 1e-3

    # The same adapter applied by hand from the last checkpoint (peft keys, alpha 8 / rank 4):
    # equality shows the file carries both modules and the alpha/rank scale.
    manual = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    for module, targets, name in ((manual.unet, ["to_q", "to_k", "to_v", "to_out.0"], "unet"),
                                  (manual.text_encoder, ["q_proj", "k_proj", "v_proj", "out_proj"], "text_encoder")):
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=targets), module, adapter_name="default")
        load_lora_state(module, os.path.join(out, "checkpoint-16", f"{name}_lora.safetensors"))
    np.testing.assert_allclose(images(manual), lora_images, atol=1e-5)


@pytest.mark.training
def test_kohya_export_and_model_card(reference_run):
    from huggingface_hub import ModelCard

    out = reference_run["out"]
    kohya = load_tensors(os.path.join(out, "pytorch_lora_weights_kohya.safetensors"))
    assert any(k.startswith("lora_unet_") for k in kohya) and any(k.startswith("lora_te1_") for k in kohya)
    alphas = {float(v) for k, v in kohya.items() if k.endswith(".alpha")}
    assert alphas == {8.0}  # --lora_alpha, not the converter's default (= rank)

    card = ModelCard.load(os.path.join(out, "README.md"))
    data = card.data.to_dict()
    assert data["base_model"] and data["library_name"] == "diffusers" and data["license"] == "creativeml-openrail-m"
    assert set(data["tags"]) >= {"stable-diffusion", "text-to-image", "lora", "diffusers-training"}
    assert data["instance_prompt"] == "sks style"
    assert "validation/final-0.png" in card.text and "| `rank` | `4` |" in card.text


@pytest.mark.training
def test_push_to_hub_stand_in_receives_outputs_without_token_leak(reference_run):
    hub, proc, out = reference_run["hub"], reference_run["proc"], reference_run["out"]
    assert ("POST", "/api/repos/create") in hub.requests
    uploaded = set(hub.files)
    assert {"pytorch_lora_weights.safetensors", "README.md", "validation/final-0.png"} <= uploaded
    assert not [p for p in uploaded if p.startswith(("checkpoint-", ".tmp-"))]
    with open(os.path.join(out, "pytorch_lora_weights.safetensors"), "rb") as f:
        assert hub.files["pytorch_lora_weights.safetensors"] == f.read()
    assert hub.auth_headers == {f"Bearer {TOKEN}"}  # the token was used...
    assert_token_absent(out, proc.stdout, proc.stderr)  # ...and written nowhere


@pytest.mark.training
def test_push_failure_keeps_local_files_and_exits_nonzero(tiny_model, image_folder, tmp_path):
    out = str(tmp_path / "out")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
            "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "1", "--seed", "0",
            "--push_to_hub", "--hub_model_id", "me/unreachable", "--hub_token", TOKEN]
    proc = run_train(args, train_env(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint))
    assert proc.returncode != 0
    assert "--push_to_hub failed" in proc.stderr and endpoint in proc.stderr and "Nothing local was removed" in proc.stderr
    for name in ("pytorch_lora_weights.safetensors", "README.md", "checkpoint-1/checkpoint_complete.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert_token_absent(out, proc.stdout, proc.stderr)
