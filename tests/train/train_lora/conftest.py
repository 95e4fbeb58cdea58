"""Fixtures shared by the train/train_lora.py tests (package scope: the tiny model, the image folder
and the reference run are made once for all of them)."""
from __future__ import annotations

import os
import time

import pytest
import torch

from testkit.tiny import save_tiny_model, train_env, write_noise_imagefolder
from testkit.train_lora import TOKEN, TRAIN_ARGS, run_train, HubStandIn


@pytest.fixture(scope="package")
def tiny_model(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="package")
def image_folder(tmp_path_factory):
    # non-square and larger than 16 px, so resize + random crop both do something
    captions = ["red circle", "blue square", "green triangle", "a photo of a cat", "a dog"]
    return write_noise_imagefolder(tmp_path_factory.mktemp("images"), 10, (20, 18), captions, seed=0)


@pytest.fixture(scope="package")
def reference_run(tiny_model, image_folder, tmp_path_factory):
    """One uninterrupted run that also pushes to the Hub stand-in (shared by several tests)."""
    tmp = tmp_path_factory.mktemp("reference")
    out = str(tmp / "out")
    hub = HubStandIn()
    try:
        args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
                *TRAIN_ARGS, "--export_kohya", "--trigger_word", "sks style", "--push_to_hub",
                "--hub_model_id", "me/tiny-lora", "--hub_token", TOKEN]
        started = time.perf_counter()
        proc = run_train(args, train_env(tmp, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint))
        seconds = time.perf_counter() - started
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"out": out, "proc": proc, "hub": hub, "seconds": seconds}


def make_lora_file(tiny_model: str, folder: str, seed: int) -> str:
    """A UNet-only LoRA file for the tiny model with nonzero weights drawn from ``seed``."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from train.lora_export import save_adapter

    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    unet.add_adapter(LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"]))
    torch.manual_seed(seed)
    for name, param in unet.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    save_adapter(folder, unet)
    return os.path.join(folder, "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="package")
def tiny_partner(tiny_model, tmp_path_factory):
    """A stand-in for a trained style."""
    return make_lora_file(tiny_model, str(tmp_path_factory.mktemp("partner")), 3)


@pytest.fixture(scope="package")
def tiny_other(tiny_model, tmp_path_factory):
    """A second stand-in, with other weights."""
    return make_lora_file(tiny_model, str(tmp_path_factory.mktemp("other")), 4)
