"""train_lora.py --init_lora and --cfg_loss_scale."""
from __future__ import annotations

import os
import re

import pytest
import torch

from testkit.tiny import train_env
from testkit.train_lora import run_train, load_tensors


def test_init_lora_copies_every_tensor_and_refuses_a_different_adapter(tiny_model, tiny_partner):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from train.lora_init import load_initial_lora

    def unet_with(rank, alpha, targets):
        unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets))
        return unet

    same = ["to_q", "to_k", "to_v", "to_out.0", "conv1"]  # what tiny_partner was saved with (r=2, alpha 4)
    unet = unet_with(2, 4, same)
    assert load_initial_lora(unet, tiny_partner, rank=2, alpha=4.0) > 0
    loaded = get_peft_model_state_dict(unet)
    saved = {k[len("unet."):]: v for k, v in load_tensors(tiny_partner).items()}
    assert loaded.keys() == saved.keys()
    for key in saved:
        torch.testing.assert_close(loaded[key], saved[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match=re.escape("has rank 2, alpha 4")):
        load_initial_lora(unet_with(4, 4, same), tiny_partner, rank=4, alpha=4.0)
    with pytest.raises(ValueError, match=re.escape("does not match --target_modules: 0 LoRA tensor(s) of this run are "
                                                   "not in the file and")):
        load_initial_lora(unet_with(2, 4, ["to_q", "to_k"]), tiny_partner, rank=2, alpha=4.0)


def test_cfg_loss_adds_the_guided_prediction_term(image_folder):
    from diffusers import DDPMScheduler

    from train.lora_args import parse_args
    from train.lora_data import build_dataset, collate, keyed_generator
    from train.train_lora import setup_lora_models, training_loss
    from testkit.tiny import make_tiny_components

    c = make_tiny_components(prediction_type="v_prediction")
    args = parse_args(["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder, "--snr_gamma", "5"])
    setup_lora_models(c["unet"], c["vae"], c["text_encoder"], args, torch.device("cpu"), torch.float32)
    scheduler = DDPMScheduler.from_config(c["scheduler"].config)
    batch = collate([build_dataset(args, c["tokenizer"], 16, seed=0)[(0, i)] for i in range(3)])
    empty = c["tokenizer"]("", max_length=c["tokenizer"].model_max_length, padding="max_length",
                           return_tensors="pt").input_ids

    def loss(scale, weight, b=batch):
        args.cfg_loss_scale, args.cfg_loss_weight = scale, weight
        with torch.no_grad():
            return training_loss(b, c["unet"], c["text_encoder"], c["vae"], scheduler, args, keyed_generator(0, 0, 0),
                                 torch.float32, empty).item()

    plain = loss(None, 1.0)
    one, two = loss(3.0, 1.0), loss(3.0, 2.0)
    assert one - plain > 1e-4  # the guided prediction misses the target more than the conditional one
    assert two - plain == pytest.approx(2 * (one - plain), rel=1e-5)  # the term is scaled by --cfg_loss_weight
    # With every caption empty the conditional and unconditional predictions are the same, so the guided
    # prediction is the conditional one at any scale and the term equals the plain loss.
    blank = {**batch, "input_ids": empty.expand_as(batch["input_ids"]).clone()}
    assert loss(3.0, 1.0, blank) == pytest.approx(2 * loss(None, 1.0, blank), rel=1e-5)


@pytest.mark.training
def test_run_from_init_lora_with_cfg_loss(tiny_model, tiny_partner, image_folder, tmp_path):
    out = str(tmp_path / "out")
    args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
            "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "3", "--seed", "5",
            "--learning_rate", "1e-3", "--rank", "2", "--lora_alpha", "4", "--caption_dropout_prob", "0.2",
            "--target_modules", "to_q,to_k,to_v,to_out.0,conv1", "--init_lora", os.path.dirname(tiny_partner),
            "--cfg_loss_scale", "3", "--report_to", "none"]
    proc = run_train(args, train_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = load_tensors(os.path.join(out, "pytorch_lora_weights.safetensors"))
    start = load_tensors(tiny_partner)
    assert final.keys() == start.keys()
    moved = max((final[k] - start[k]).abs().max().item() for k in final)
    size = max(start[k].abs().max().item() for k in start)
    assert 0 < moved < 0.1 * size  # trained on from the file's weights, not from a fresh init
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "`init_lora`" in card and "`cfg_loss_scale` | `3.0`" in card


def test_init_lora_and_cfg_loss_flags_are_checked(image_folder, tmp_path):
    from train.lora_args import parse_args

    base = ["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder]
    for extra, message in [
        (["--init_lora", str(tmp_path / "missing.safetensors")], "--init_lora="),
        (["--cfg_loss_scale", "1"], "--cfg_loss_scale=1.0 is invalid: must be > 1"),
        (["--cfg_loss_scale", "3", "--cfg_loss_weight", "0"], "--cfg_loss_weight=0.0"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_args([*base, *extra])
