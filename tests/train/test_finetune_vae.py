"""train/finetune_vae.py: with --part decoder the decoder learns, the encoder (the UNet's latent space) stays bit-identical,
the model folder is replaced whole, and a second run resumes from the checkpoint."""
from __future__ import annotations

import json
import os

import pytest
import torch


def test_decoder_moves_encoder_stays_and_run_resumes(tmp_path, capsys):
    from diffusers import AutoencoderKL

    from testkit.tiny import make_tiny_components
    from train import finetune_vae

    model = tmp_path / "model"
    make_tiny_components()["vae"].save_pretrained(model / "vae")
    (model / "training.json").write_text(json.dumps({"seed": 1}))
    before = AutoencoderKL.from_pretrained(model / "vae")
    common = ["--model", str(model), "--work_dir", str(tmp_path / "work"), "--per_kind", "16", "--eval_per_kind", "4",
              "--batch_size", "8", "--checkpointing_steps", "2", "--lr", "1e-2"]

    finetune_vae.main(common + ["--steps", "2"])
    after = AutoencoderKL.from_pretrained(model / "vae")
    enc_a, enc_b = before.encoder.state_dict(), after.encoder.state_dict()
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    assert all(torch.equal(a, b) for a, b in zip(before.quant_conv.parameters(), after.quant_conv.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before.decoder.parameters(), after.decoder.parameters()))
    extra = json.loads((model / "training.json").read_text())["vae"]["decoder_styles_extra"]
    assert extra["steps"] == 2 and set(extra["round_trip_after"]) == {"plain", "outline", "night", "pastel"}
    assert sorted(os.listdir(model)) == ["training.json", "vae"]  # no .tmp-new / .tmp-old left behind

    capsys.readouterr()
    finetune_vae.main(common + ["--steps", "3"])
    assert "resumed at step 2" in capsys.readouterr().out
    assert json.loads((model / "training.json").read_text())["vae"]["decoder_styles_extra"]["steps"] == 3


def test_encoder_part_keeps_decoder_and_anchors_plain_latents(tmp_path, capsys):
    from diffusers import AutoencoderKL

    from shapesworld.world import images_array
    from testkit.tiny import make_tiny_components
    from train import finetune_vae
    from train.train_base import to_model_space

    model = tmp_path / "model"
    make_tiny_components()["vae"].save_pretrained(model / "vae")
    before = AutoencoderKL.from_pretrained(model / "vae")
    common = ["--model", str(model), "--work_dir", str(tmp_path / "work"), "--per_kind", "16", "--eval_per_kind", "4",
              "--batch_size", "8", "--checkpointing_steps", "2", "--lr", "1e-3", "--part", "encoder",
              "--encoder_styles", "night"]
    finetune_vae.main(common + ["--steps", "4"])
    after = AutoencoderKL.from_pretrained(model / "vae")
    # what the base model generates goes through the decoder only: it must not move at all
    assert all(torch.equal(a, b) for a, b in zip(before.decoder.parameters(), after.decoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before.post_quant_conv.parameters(), after.post_quant_conv.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before.encoder.parameters(), after.encoder.parameters()))
    # night latents move more than the anchored plain ones
    moved = {}
    for style in (None, "night"):
        x = to_model_space(torch.from_numpy(images_array(range(8), style=style, empty_prob=0.0)[0]))
        with torch.no_grad():
            moved[style] = (after.encode(x).latent_dist.mean - before.encode(x).latent_dist.mean).pow(2).mean().item()
    assert moved["night"] > moved[None]
    rec = json.loads((model / "training.json").read_text())["vae"]["encoder_styles"]
    assert rec["styles"] == ["night"] and set(rec["latent_drift"]) == {"plain", "outline", "night", "pastel"}

    # a decoder checkpoint in the same work_dir is refused, a bad style is named
    capsys.readouterr()
    with pytest.raises(SystemExit, match="part encoder checkpoint"):
        finetune_vae.main([a if a != "encoder" else "decoder" for a in common] + ["--steps", "6"])
    with pytest.raises(SystemExit, match="--encoder_styles='dusk'"):
        finetune_vae.main(common[:-1] + ["dusk", "--steps", "6"])


def test_combinations_are_kinds_of_their_own_and_keep_earlier_records(tmp_path):
    from testkit.tiny import make_tiny_components
    from train import finetune_vae

    model = tmp_path / "model"
    make_tiny_components()["vae"].save_pretrained(model / "vae")
    (model / "training.json").write_text(json.dumps({"vae": {"decoder_styles_extra": {"steps": 3000}}}))
    common = ["--model", str(model), "--work_dir", str(tmp_path / "work"), "--per_kind", "8", "--eval_per_kind", "4",
              "--batch_size", "10", "--lr", "1e-3", "--steps", "2"]
    finetune_vae.main(common + ["--combinations", "outline+night,night+pastel"])
    vae = json.loads((model / "training.json").read_text())["vae"]
    assert vae["decoder_styles_extra"] == {"steps": 3000}  # the earlier stage's record stays
    rec = vae["decoder_combinations"]
    assert rec["combinations"] == ["outline+night", "night+pastel"]
    assert set(rec["round_trip_after"]) == {"plain", "outline", "night", "pastel", "outline+night", "night+pastel"}
    assert set(rec["round_trip_before"]) == set(rec["round_trip_after"])

    for combos, message in [("night+outline", "--combinations='night+outline': style='night+outline' is invalid"),
                            ("night", "'night' is a single style"),
                            ("outline+night,outline+pastel,night+pastel,outline+night+pastel", "--batch_size=6 is below")]:
        with pytest.raises(SystemExit, match=message.replace("+", r"\+").replace("(", r"\(")):
            finetune_vae.main(common + ["--combinations", combos, "--work_dir", str(tmp_path / combos), "--batch_size", "6"])


def test_checkpoint_of_other_kinds_is_refused(tmp_path):
    from testkit.tiny import make_tiny_components
    from train import finetune_vae

    model = tmp_path / "model"
    make_tiny_components()["vae"].save_pretrained(model / "vae")
    common = ["--model", str(model), "--work_dir", str(tmp_path / "work"), "--per_kind", "8", "--eval_per_kind", "2",
              "--batch_size", "8", "--lr", "1e-3", "--checkpointing_steps", "1"]
    finetune_vae.main(common + ["--steps", "1"])
    with pytest.raises(SystemExit, match=r"was trained on the kinds \['plain', 'outline', 'night', 'pastel'\]"):
        finetune_vae.main(common + ["--steps", "2", "--combinations", "outline+night"])


def test_partial_styles_are_trained_and_read_at_half_strength(tmp_path):
    """--partial: half of every style kind's pool is drawn part-way, and the round trip is also read at 0.5."""
    from testkit.tiny import make_tiny_components
    from train import finetune_vae

    full, _ = finetune_vae.render("night", 6, 1000)
    mixed, _ = finetune_vae.render("night", 6, 1000, "random")
    assert (mixed[0::2] == full[0::2]).all()  # every other image at full strength, the same images
    corner = lambda x: x[:, 0, 0].float().mean(-1)  # noqa: E731  the background's brightness
    assert (corner(mixed[1::2]) > corner(full[1::2]) + 5).all()  # the others lighter: part-way to night
    half, _ = finetune_vae.render("outline+night", 2, 1000, 0.5)
    assert 60 < float(corner(half).mean()) < 190

    model = tmp_path / "model"
    make_tiny_components()["vae"].save_pretrained(model / "vae")
    finetune_vae.main(["--model", str(model), "--work_dir", str(tmp_path / "work"), "--per_kind", "8", "--eval_per_kind",
                       "2", "--batch_size", "5", "--lr", "1e-3", "--steps", "2", "--combinations", "outline+night",
                       "--partial"])
    rec = json.loads((model / "training.json").read_text())["vae"]["decoder_partial"]
    assert rec["partial"] and "night@0.5" in rec["round_trip_after"] and "outline+night@0.5" in rec["round_trip_after"]
    assert "plain@0.5" not in rec["round_trip_after"]


def test_partial_share_spreads_the_part_way_images():
    from train import finetune_vae

    full, _ = finetune_vae.render("night", 8, 1000)
    corner = lambda x: x[:, 0, 0].float().mean(-1)  # noqa: E731  the background's brightness
    for share, drawn in ((0.25, [3, 7]), (0.5, [1, 3, 5, 7]), (1.0, list(range(8)))):
        mixed, _ = finetune_vae.render("night", 8, 1000, "random", share)
        kept = [i for i in range(8) if i not in drawn]
        assert (mixed[kept] == full[kept]).all(), share  # the rest at full strength, the same images
        assert not any((mixed[i] == full[i]).all() for i in drawn), share
        assert float(corner(mixed[drawn]).mean()) > float(corner(full[drawn]).mean()) + 5


def _decoded(vae_dir, z):
    from diffusers import AutoencoderKL

    with torch.no_grad():
        return AutoencoderKL.from_pretrained(vae_dir).decode(z).sample


def test_keep_latents_hold_the_decoder_to_its_teacher(tmp_path):
    """Two equal runs at a high learning rate, one with the preservation term: its pictures of the kept
    latents stay nearer the VAE's pictures from before the run."""
    from testkit.tiny import make_tiny_components
    from train import finetune_vae

    vae = make_tiny_components()["vae"]
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    latents = torch.randn((24, *z.shape[1:]), generator=torch.Generator().manual_seed(0)) * vae.config.scaling_factor
    keep_file = tmp_path / "keep.pt"
    torch.save({"latents": latents, "settings": ["base"] * 24}, keep_file)
    before = None
    drift = {}
    for name, extra in (("free", []), ("kept", ["--keep_latents", str(keep_file), "--keep_weight", "20",
                                               "--keep_batch", "8"])):
        model = tmp_path / name
        vae.save_pretrained(model / "vae")
        if before is None:
            before = _decoded(model / "vae", latents / vae.config.scaling_factor)
        finetune_vae.main(["--model", str(model), "--work_dir", str(tmp_path / f"work-{name}"), "--per_kind", "8",
                           "--eval_per_kind", "2", "--batch_size", "4", "--lr", "2e-2", "--steps", "6", *extra])
        drift[name] = float((_decoded(model / "vae", latents / vae.config.scaling_factor) - before).pow(2).mean())
    assert drift["free"] > 0 and drift["kept"] < 0.5 * drift["free"], drift
    rec = json.loads((tmp_path / "kept" / "training.json").read_text())["vae"]["decoder_styles_extra"]
    assert rec["keep_weight"] == 20 and rec["keep_latents"] == str(keep_file)

    for extra, message in ((["--keep_latents", str(tmp_path / "none.pt")], "no such file"),
                           (["--keep_latents", str(keep_file), "--part", "encoder"], "goes with --part decoder"),
                           (["--partial", "--partial_share", "0"], "--partial_share=0.0")):
        with pytest.raises(SystemExit, match=message):
            finetune_vae.main(["--model", str(tmp_path / "kept"), *extra])
