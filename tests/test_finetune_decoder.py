"""train/finetune_decoder.py: the decoder learns, the encoder (the UNet's latent space) stays bit-identical,
the model folder is replaced whole, and a second run resumes from the checkpoint."""
from __future__ import annotations

import json
import os

import torch


def test_decoder_moves_encoder_stays_and_run_resumes(tmp_path, capsys):
    from diffusers import AutoencoderKL

    from tests.tiny import make_tiny_components
    from train import finetune_decoder

    model = tmp_path / "model"
    make_tiny_components()["vae"].save_pretrained(model / "vae")
    (model / "training.json").write_text(json.dumps({"seed": 1}))
    before = AutoencoderKL.from_pretrained(model / "vae")
    common = ["--model", str(model), "--work_dir", str(tmp_path / "work"), "--per_kind", "16", "--eval_per_kind", "4",
              "--batch_size", "8", "--checkpointing_steps", "2", "--lr", "1e-2"]

    finetune_decoder.main(common + ["--steps", "2"])
    after = AutoencoderKL.from_pretrained(model / "vae")
    enc_a, enc_b = before.encoder.state_dict(), after.encoder.state_dict()
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    assert all(torch.equal(a, b) for a, b in zip(before.quant_conv.parameters(), after.quant_conv.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before.decoder.parameters(), after.decoder.parameters()))
    extra = json.loads((model / "training.json").read_text())["vae"]["decoder_styles_extra"]
    assert extra["steps"] == 2 and set(extra["round_trip_after"]) == {"plain", "outline", "night", "pastel"}
    assert sorted(os.listdir(model)) == ["training.json", "vae"]  # no .tmp-new / .tmp-old left behind

    capsys.readouterr()
    finetune_decoder.main(common + ["--steps", "3"])
    assert "resumed at step 2" in capsys.readouterr().out
    assert json.loads((model / "training.json").read_text())["vae"]["decoder_styles_extra"]["steps"] == 3
