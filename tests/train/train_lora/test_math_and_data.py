"""train_lora.py's math (schedules, Min-SNR, losses) and data pipeline."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from testkit.train_lora import ROOT


def test_warmup_cosine_schedule_shape():
    from train.lora_optim import warmup_cosine_schedule

    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": params, "lr": 1e-3}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-4}])
    sched = warmup_cosine_schedule(opt, warmup_steps=4, total_steps=14, start_factor=0.1, lr_min=1e-5)
    lrs = []
    for _ in range(15):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    lrs = np.array(lrs)
    np.testing.assert_allclose(lrs[:5, 0], [1e-4, 3.25e-4, 5.5e-4, 7.75e-4, 1e-3], rtol=1e-6)  # linear from 0.1x
    np.testing.assert_allclose(lrs[9, 0], 1e-5 + (1e-3 - 1e-5) / 2, rtol=1e-6)  # cosine midpoint
    np.testing.assert_allclose(lrs[14], [1e-5, 1e-5], rtol=1e-6)  # the floor, for both groups
    np.testing.assert_allclose(lrs[4, 1], 1e-4, rtol=1e-6)  # per-group peak


def test_min_snr_weights_epsilon_and_v():
    from train.lora_optim import min_snr_loss_weights

    snr = torch.tensor([0.0, 0.5, 5.0, 20.0])
    eps = min_snr_loss_weights(snr, 5.0, "epsilon")
    torch.testing.assert_close(eps, torch.tensor([1.0, 1.0, 1.0, 0.25]))  # min(snr, g) / snr, 1 at snr 0
    v = min_snr_loss_weights(snr, 5.0, "v_prediction")
    torch.testing.assert_close(v, torch.tensor([0.0, 0.5 / 1.5, 5.0 / 6.0, 5.0 / 21.0]))  # min(snr, g) / (snr + 1)
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_loss_weights(snr, 5.0, "sample")


def test_data_is_a_function_of_seed_epoch_index(image_folder):
    from train.lora_data import EpochShuffleSampler, build_dataset
    from train.lora_args import parse_args
    from testkit.tiny import make_tiny_tokenizer

    args = parse_args(["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder, "--random_flip",
                       "--caption_dropout_prob", "0.5"])
    data = build_dataset(args, make_tiny_tokenizer(), 16, seed=3)
    a, b = data[(2, 5)], data[(2, 5)]
    assert a["pixel_values"].shape == (3, 16, 16) and a["pixel_values"].abs().max() <= 1.0
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert any(not torch.equal(data[(e, 5)]["pixel_values"], a["pixel_values"]) for e in range(3, 8))
    sampler = EpochShuffleSampler(10, seed=3)
    first = list(sampler)
    assert sorted(i for _, i in first) == list(range(10)) and first == list(sampler)
    sampler.set_epoch(1)
    assert [i for _, i in list(sampler)] != [i for _, i in first]


def test_mixed_precision_casts_keep_lora_in_fp32():
    from train.lora_args import parse_args
    from train.train_lora import setup_lora_models
    from testkit.tiny import make_tiny_components

    c = make_tiny_components()
    args = parse_args(["--pretrained_model_name_or_path", "m", "--shapes_style", "night", "--train_text_encoder"])
    setup_lora_models(c["unet"], c["vae"], c["text_encoder"], args, torch.device("cpu"), torch.float16)
    for module in (c["unet"], c["text_encoder"]):
        trainable = {p.dtype for p in module.parameters() if p.requires_grad}
        frozen = {p.dtype for p in module.parameters() if not p.requires_grad}
        assert trainable == {torch.float32} and frozen == {torch.float16}
    assert {p.dtype for p in c["vae"].parameters()} == {torch.float16}
    assert not any(p.requires_grad for p in c["vae"].parameters())


def test_gradient_checkpointing_still_trains_both_adapters(image_folder):
    from diffusers import DDPMScheduler

    from train.lora_args import parse_args
    from train.lora_data import build_dataset, collate, keyed_generator
    from train.train_lora import setup_lora_models, training_loss
    from testkit.tiny import make_tiny_components

    c = make_tiny_components(prediction_type="v_prediction")
    args = parse_args(["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder, "--train_text_encoder",
                       "--snr_gamma", "5", "--init_lora_weights", "default"])
    setup_lora_models(c["unet"], c["vae"], c["text_encoder"], args, torch.device("cpu"), torch.float32)
    c["unet"].enable_gradient_checkpointing()
    c["text_encoder"].activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    c["unet"].train()
    c["text_encoder"].train()
    data = build_dataset(args, c["tokenizer"], 16, seed=0)
    batch = collate([data[(0, i)] for i in range(2)])
    scheduler = DDPMScheduler.from_config(c["scheduler"].config)
    loss = training_loss(batch, c["unet"], c["text_encoder"], c["vae"], scheduler, args, keyed_generator(0, 0, 0),
                         torch.float32)
    loss.backward()
    for module in (c["unet"], c["text_encoder"]):
        grads = [p.grad for n, p in module.named_parameters() if "lora_B" in n]  # B starts at 0: only its grad is nonzero
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_shapes_style_renders_an_imagefolder(tmp_path):
    from train.lora_data import read_imagefolder, render_shapes_dataset

    folder = render_shapes_dataset(str(tmp_path / "data"), "outline", 3, seed=0, trigger="outline style")
    rows = read_imagefolder(folder)
    assert len(rows) == 3 and all(caption.startswith("outline style") for _, caption in rows)


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = os.path.join(ROOT, "train", "accelerate_configs")
    multi = load_config_from_file(os.path.join(folder, "multi_gpu.yaml"))
    assert str(multi.distributed_type).endswith("MULTI_GPU") and multi.mixed_precision == "fp16"
    zero2 = load_config_from_file(os.path.join(folder, "deepspeed_zero2.yaml"))
    assert str(zero2.distributed_type).endswith("DEEPSPEED") and zero2.deepspeed_config["zero_stage"] == 2


def test_mixed_target_adapter_keeps_every_layer_through_the_stock_loader(tmp_path):
    """Attention + resnet + proj + ff + time-embedding LoRA layers in one file all load with stock
    `load_lora_weights`, and give the images of the adapter applied by hand (peft)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from testkit.tiny import make_tiny_components
    from train.lora_export import save_adapter

    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "time_emb_proj"]

    def pipe():
        p = StableDiffusionPipeline(**make_tiny_components(), requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        return p

    def images(p):
        return p("red circle", num_inference_steps=2, height=16, width=16, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images

    manual = pipe()
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian", target_modules=targets),
                            manual.unet, adapter_name="default")
    torch.manual_seed(1)
    for name, param in manual.unet.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)  # B starts at zero: give it weights so the adapter does something
    expected_layers = {n for n, m in manual.unet.named_modules() if isinstance(m, LoraLayer)}
    assert {"to_q", "conv1", "proj_in", "time_emb_proj"} <= {n.rsplit(".", 1)[-1] for n in expected_layers}
    save_adapter(str(tmp_path), manual.unet)

    stock = pipe()
    base = images(stock)
    stock.load_lora_weights(str(tmp_path))
    loaded = {n for n, m in stock.unet.named_modules() if isinstance(m, LoraLayer)}
    assert loaded == expected_layers, sorted(expected_layers - loaded)[:5]
    manual.unet.eval()
    out = images(stock)
    assert np.abs(out - base).max() > 1e-3
    np.testing.assert_allclose(out, images(manual), atol=1e-5)
