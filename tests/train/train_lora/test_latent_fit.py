"""train_lora.py --latent_fit_steps: training latents fitted to the images through the frozen decoder."""
from __future__ import annotations

import json
import os

import pytest
import torch

from testkit.tiny import train_env
from testkit.train_lora import run_train

from .test_dial import DIAL_ARGS


def test_fitted_latents_decode_nearer_the_image_and_the_vae_stays_frozen():
    from testkit.tiny import make_tiny_components
    from train.lora_latent_fit import fit_latents

    vae = make_tiny_components()["vae"].eval().requires_grad_(False)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    x = torch.rand((3, 3, 16, 16), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        start = vae.encode(x).latent_dist.mean

    def error(z):
        with torch.no_grad():
            return float((vae.decode(z).sample - x).pow(2).mean())

    errors = [error(fit_latents(vae, x, start, steps, 0.1)) for steps in (0, 5, 20)]
    assert errors[0] == pytest.approx(error(start)) and errors[2] < errors[1] < errors[0], errors
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert all(p.grad is None for p in vae.parameters())


def test_dial_run_fits_the_part_way_and_pair_steps(tiny_model, tiny_partner, tmp_path):
    """The fitted steps are the dial's steps off full strength alone; the run's record and card name the flag."""
    out = str(tmp_path / "out")
    args = ["--pretrained_model_name_or_path", tiny_model, "--output_dir", out, *DIAL_ARGS, "--dial_full_prob", "0.5",
            "--partner_lora", tiny_partner, "--partner_shapes_style", "pastel", "--partner_prob", "0.3",
            "--latent_fit_steps", "2"]
    proc = run_train(args, train_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.load(open(os.path.join(out, "train_result.json")))
    from train.lora_dial import dial_weight
    from train.lora_partner import partner_step

    alone_full = sum(dial_weight(5, s, 0.05, 0.5) == 1.0 and not partner_step(5, s, 0.3) for s in range(6))
    assert 0 < alone_full < 6  # the seed draws both kinds of step
    assert result["latent_fitted_micro_steps_this_run"] == 6 - alone_full
    assert "latent_fit_steps" in open(os.path.join(out, "README.md")).read()


def test_latent_fit_flags_are_checked():
    from train.lora_args import parse_args

    base = ["--pretrained_model_name_or_path", "m", "--shapes_style", "night"]
    for extra, message in ((["--latent_fit_steps", "-1"], "--latent_fit_steps=-1"),
                           (["--latent_fit_steps", "3", "--latent_fit_lr", "0"], "--latent_fit_lr=0.0")):
        with pytest.raises(ValueError, match=message):
            parse_args(base + extra)
