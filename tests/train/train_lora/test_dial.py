"""train_lora.py --dial: the adapter trained at drawn weights on images drawn at that strength."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from testkit.tiny import train_env
from testkit.train_lora import load_tensors, run_train

DIAL_ARGS = ["--shapes_style", "night", "--shapes_num_samples", "6", "--resolution", "16", "--train_batch_size", "2",
             "--max_train_steps", "6", "--checkpointing_steps", "3", "--seed", "5", "--learning_rate", "5e-3",
             "--rank", "2", "--lora_alpha", "4", "--target_modules", "to_q,to_k,to_v,to_out.0,conv1",
             "--caption_dropout_prob", "0.2", "--report_to", "none", "--dial", "--dial_full_prob", "0.25"]


def test_render_strengths_draw_a_style_part_way():
    from shapesworld.world import Attributes, render, sample

    attrs = Attributes("circle", "red", "large", "center", "middle", "outline+night")
    full = np.asarray(render(attrs, np.random.default_rng(1)), np.float32)
    same = np.asarray(render(attrs, np.random.default_rng(1), strengths={"outline": 1.0, "night": 1.0}), np.float32)
    assert (full == same).all()  # strength 1 is the style as it was
    lum = [np.asarray(sample(3, style="night", strengths={"night": s}).image, np.float32)[0, 0].mean()
           for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a > b + 20 for a, b in zip(lum, lum[1:]))  # the background darkens step by step
    plain = np.asarray(sample(3).image)
    assert (np.asarray(sample(3, style="night", strengths={"night": 0.0}).image) == plain).all()
    sat = []
    for s in (0.0, 0.5, 1.0):
        px = np.asarray(sample(3, style="pastel", strengths={"pastel": s}).image, np.float32).reshape(-1, 3)
        sat.append(((px.max(1) - px.min(1)) / px.max(1)).max())  # the shape's saturation
    assert sat[0] > sat[1] > sat[2]
    with pytest.raises(ValueError, match=re.escape("strengths['night']=1.5 is out of range")):
        sample(3, style="night", strengths={"night": 1.5})
    with pytest.raises(ValueError, match=re.escape("strengths names 'pastel', which is not a part of style='night'")):
        sample(3, style="night", strengths={"pastel": 0.5})


def test_adapter_scales_and_draws(tiny_model):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from train.lora_dial import AdapterScales, dial_partner, dial_weight

    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").eval()
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 16, 16, generator=g)
    with torch.no_grad():
        base = unet(latents, torch.tensor([300]), text).sample
    unet.add_adapter(LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "conv1"]))
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3, generator=g)
    scales = AdapterScales(unet, ["default"])
    outs = {}
    for w in (0.0, 0.5, 1.0):
        scales.set({"default": w})
        with torch.no_grad():
            outs[w] = unet(latents, torch.tensor([300]), text).sample
    torch.testing.assert_close(outs[0.0], base, rtol=0, atol=0)  # weight 0 adds exactly nothing
    assert (outs[0.5] - base).abs().max() > 1e-4 and (outs[1.0] - outs[0.5]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="adapter 'other' is in no LoRA layer"):
        AdapterScales(unet, ["other"])

    draws = [dial_weight(0, step, 0.05, 0.2) for step in range(400)]
    assert draws == [dial_weight(0, step, 0.05, 0.2) for step in range(400)]  # keyed by (seed, step): resumable
    assert min(draws) >= 0.05 and 0.1 < np.mean([d == 1.0 for d in draws]) < 0.3
    assert 0.3 < np.mean([0.05 <= d < 0.5 for d in draws]) < 0.5  # the rest uniform in [0.05, 1]
    pairs = [dial_partner(0, step, 0.3, 2, 0.05, 0.5) for step in range(400)]
    assert {w for _, w in pairs} > {0.3} and 0.35 < np.mean([w == 0.3 for _, w in pairs]) < 0.65
    assert {i for i, _ in pairs} == {0, 1}


def test_several_partners_stay_frozen(tiny_model, tiny_partner):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from train.lora_partner import PartnerLoRA

    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "conv1"]))
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    partners = [PartnerLoRA(unet, tiny_partner, name=name) for name in ("partner", "partner_1")]
    # loading the second partner re-activates the first one; neither may become trainable
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == trainable
    partners[0].set_weight(0.4)
    assert partners[0].on and not partners[1].on


def _predict(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 16, generator=g)
    with torch.no_grad():
        return unet(latents, torch.tensor([300, 700]), text).sample


def _stock_unet(tiny_model, files: dict[str, str]):
    """diffusers' own way to run LoRA files at weight 1 together: the reference for the anchor."""
    from diffusers import UNet2DConditionModel

    from train.lora_init import read_unet_lora

    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").eval()
    for name, path in files.items():
        state_dict, alphas, metadata = read_unet_lora(path, "test")
        unet.load_lora_adapter(state_dict, prefix="unet", network_alphas=alphas, adapter_name=name, metadata=metadata)
    unet.set_adapters(list(files), weights=[1.0] * len(files))
    return unet


def _trained_unet(tiny_model):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").eval()
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "conv1"]))
    g = torch.Generator().manual_seed(9)
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3, generator=g)
    return unet


def test_the_anchor_predicts_in_the_adapters_place(tiny_model, tiny_partner):
    from train.lora_dial import AdapterScales, DialAnchor

    unet = _trained_unet(tiny_model)
    scales = AdapterScales(unet, ["default"])
    anchor = DialAnchor(unet, tiny_partner)
    before = _predict(unet)
    with anchor.in_place(scales, []):
        inside = _predict(unet)
    torch.testing.assert_close(inside, _predict(_stock_unet(tiny_model, {"a": tiny_partner})), rtol=0, atol=1e-5)
    assert (inside - before).abs().max() > 1e-3  # the anchor is another adapter than the trained one
    torch.testing.assert_close(_predict(unet), before, rtol=0, atol=0)  # everything put back
    assert scales.weights["default"] == 1.0 and not anchor.own.on


def test_the_anchor_partner_replaces_the_partner_on_pair_steps(tiny_model, tiny_partner, tiny_other):
    from train.lora_dial import AdapterScales, DialAnchor
    from train.lora_partner import PartnerLoRA

    unet = _trained_unet(tiny_model)
    scales = AdapterScales(unet, ["default"])
    partner = PartnerLoRA(unet, tiny_other, name="partner")  # the partner being retrained elsewhere
    anchor = DialAnchor(unet, tiny_partner, {0: tiny_partner})  # the pair the anchor is made of: partner's own copy
    partner.set_weight(1.0)
    before = _predict(unet)
    with anchor.in_place(scales, [partner]):
        inside = _predict(unet)
    stock = _predict(_stock_unet(tiny_model, {"a": tiny_partner, "b": tiny_partner}))
    torch.testing.assert_close(inside, stock, rtol=0, atol=1e-5)
    torch.testing.assert_close(_predict(unet), before, rtol=0, atol=0)
    assert partner.current == 1.0 and not anchor.partners[0].on
    partner.set_weight(0.0)  # a partner that is off stays off inside, and its anchor copy too
    with anchor.in_place(scales, [partner]):
        alone = _predict(unet)
    torch.testing.assert_close(alone, _predict(_stock_unet(tiny_model, {"a": tiny_partner})), rtol=0, atol=1e-5)


def test_anchored_steps_are_weight_one_alone_or_in_a_named_pair():
    from train.lora_dial import anchored_step

    styles = ["outline", "pastel"]
    assert anchored_step(1.0, [0.0, 0.0], styles, [])
    assert not anchored_step(0.7, [0.0, 0.0], styles, ["outline"])
    assert anchored_step(1.0, [1.0, 0.0], styles, ["outline"])
    assert not anchored_step(1.0, [1.0, 0.0], styles, [])  # the pair is not named
    assert not anchored_step(1.0, [0.0, 1.0], styles, ["outline"])
    assert not anchored_step(1.0, [0.6, 0.0], styles, ["outline"])  # the partner part-way


@pytest.mark.training
def test_dial_anchor_holds_weight_one(tiny_model, tiny_partner, tmp_path):
    """Two dial runs from the same adapter at a high learning rate, weight 1 on every step, one anchored to
    where it started: the anchored one's weight-1 prediction drifts less from the start's (0.47 x here)."""
    env = train_env(tmp_path)
    common = ["--pretrained_model_name_or_path", tiny_model, *DIAL_ARGS, "--max_train_steps", "16",
              "--learning_rate", "2e-2", "--dial_full_prob", "1.0", "--init_lora", tiny_partner]
    drift = {}
    for name, extra in (("free", []), ("anchored", ["--dial_anchor_lora", tiny_partner, "--dial_anchor_weight", "20"])):
        out = str(tmp_path / name)
        proc = run_train([*common, "--output_dir", out, *extra], env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        result = json.load(open(os.path.join(out, "train_result.json")))
        if name == "anchored":
            assert result["anchored_micro_steps_this_run"] == 16  # weight 1 on every step, no partner: all anchored
        trained = _stock_unet(tiny_model, {"t": os.path.join(out, "pytorch_lora_weights.safetensors")})
        start = _stock_unet(tiny_model, {"s": tiny_partner})
        drift[name] = float((_predict(trained) - _predict(start)).pow(2).mean())
    assert drift["free"] > 0 and drift["anchored"] < 0.75 * drift["free"], drift


@pytest.mark.training
def test_dial_run_draws_weights_with_partners_and_resumes_exactly(tiny_model, tiny_partner, tmp_path):
    out = str(tmp_path / "out")
    args = ["--pretrained_model_name_or_path", tiny_model, "--output_dir", out, *DIAL_ARGS,
            "--partner_lora", f"{tiny_partner},{tiny_partner}", "--partner_shapes_style", "outline,pastel",
            "--partner_prob", "0.5"]
    env = train_env(tmp_path)
    proc = run_train(args, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.load(open(os.path.join(out, "train_result.json")))
    assert result["global_step"] == 6 and 0 < result["partner_micro_steps_this_run"] < 6
    assert not os.path.exists(os.path.join(out, "partner_data"))  # --dial renders its batches per step
    final = load_tensors(os.path.join(out, "pytorch_lora_weights.safetensors"))
    assert final and not any("partner" in k for k in final)
    resumed_out = str(tmp_path / "resumed")
    resumed = run_train([*[resumed_out if a == out else a for a in args], "--resume_from_checkpoint",
                         os.path.join(out, "checkpoint-3")], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    again = load_tensors(os.path.join(resumed_out, "pytorch_lora_weights.safetensors"))
    for key in final:
        torch.testing.assert_close(again[key], final[key], rtol=0, atol=1e-6)


def test_dial_flags_are_checked(tmp_path):
    from train.lora_args import parse_args

    fake = tmp_path / "partner.safetensors"
    fake.write_bytes(b"")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a red circle"}\n')
    night = ["--pretrained_model_name_or_path", "m", "--shapes_style", "night"]
    cases = [
        (["--pretrained_model_name_or_path", "m", "--train_data_dir", str(tmp_path), "--dial"],
         "--dial needs --shapes_style"),
        ([*night, "--dial", "--dial_min_weight", "0"], "--dial_min_weight=0.0"),
        ([*night, "--dial", "--dial_full_prob", "1.5"], "--dial_full_prob=1.5"),
        ([*night, "--partner_lora", f"{fake},{fake}", "--partner_shapes_style", "outline,pastel"],
         "--partner_lora="),  # several partners only with --dial
        ([*night, "--dial", "--partner_lora", f"{fake},{fake}", "--partner_shapes_style", "outline"],
         "--partner_shapes_style='outline' is invalid: one style per --partner_lora file (2 given)"),
        ([*night, "--dial", "--partner_lora", str(fake), "--partner_shapes_style", "sepia"],
         "--partner_shapes_style='sepia' is invalid"),
    ]
    anchor = ["--dial_anchor_lora", str(fake)]
    cases += [
        ([*night, *anchor], "--dial_anchor_lora needs --dial"),
        ([*night, "--dial_anchor_pairs", "outline"], "--dial_anchor_pairs needs --dial_anchor_lora"),
        ([*night, "--dial", *anchor, "--dial_anchor_weight", "0"], "--dial_anchor_weight=0.0"),
        ([*night, "--dial", *anchor, "--dial_anchor_pairs", "outline"],
         "--dial_anchor_pairs='outline' is invalid: partner styles from --partner_shapes_style (none given)"),
        ([*night, "--dial", *anchor, "--partner_lora", str(fake), "--partner_shapes_style", "outline",
          "--dial_anchor_pairs", "outline", "--dial_anchor_partner_loras", f"{fake},{fake}"],
         "--dial_anchor_partner_loras="),
        ([*night, "--dial", "--dial_anchor_lora", str(tmp_path / "missing.safetensors")], "--dial_anchor_lora="),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_args(extra)
    args = parse_args([*night, "--dial", *anchor, "--partner_lora", str(fake), "--partner_shapes_style", "outline",
                       "--dial_anchor_pairs", "outline", "--dial_anchor_partner_loras", str(fake)])
    assert args.dial_anchor_pair_styles == ["outline"] and args.dial_anchor_partner_files == [str(fake)]
    args = parse_args([*night, "--dial", "--partner_lora", f"{fake},{fake}", "--partner_shapes_style", "outline,pastel"])
    assert args.partner_loras == [str(fake), str(fake)] and args.partner_shapes_styles == ["outline", "pastel"]
