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


def test_keep_latents_settings_are_parsed_and_refused_by_name():
    from train.keep_latents import main, parse_setting, setting_label

    assert parse_setting("base") == {}
    assert parse_setting("outline+night") == {"outline": 1.0, "night": 1.0}
    assert parse_setting("pastel@0.45") == {"pastel": 0.45}
    assert [setting_label(parse_setting(s)) for s in ("base", "outline+night", "pastel@0.450", "night@1")] == \
        ["base", "outline+night", "pastel@0.45", "night"]
    for bad, message in (("sepia", "'sepia' is invalid"), ("night@1.5", "in \\(0, 1\\], got 1.5"),
                         ("night@x", "must be a number"), ("night+night", "'night\\+night' is invalid"),
                         ("night+outline", "in that order")):
        with pytest.raises(ValueError, match=message):
            parse_setting(bad)
    with pytest.raises(SystemExit, match="--settings='base,night@0'"):
        main(["--out", "unused.pt", "--settings", "base,night@0"])


def test_line_pairs_place_each_partial_latent_on_its_line():
    """Latents of one prompt line up by (label, case); a partial latent's t is its projection on the
    base -> full style line; a partial latent without both ends is left out."""
    from train.finetune_vae import line_pairs

    g = torch.Generator().manual_seed(0)
    base, full = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    off = torch.randn(2, 4, 4, 4, generator=g)
    d = (full - base).flatten(1)
    off = off - ((off.flatten(1) * d).sum(1) / (d * d).sum(1))[:, None, None, None] * (full - base)  # orthogonal
    mid = base + 0.3 * (full - base) + 0.2 * off
    labels = [("base", 0), ("base", 1), ("outline+night", 0), ("outline+night", 1),
              ("outline+night@0.3", 0), ("outline+night@0.3", 1), ("night+pastel@0.5", 0)]
    z = torch.cat([base, full, mid, torch.zeros(1, 4, 4, 4)])
    lines = line_pairs(z, labels)
    assert lines["ends"].tolist() == [[0, 2], [1, 3]]
    assert lines["mids"].tolist() == [[4, 0, 2], [5, 1, 3]]  # night+pastel@0.5 has no ends: left out
    assert torch.allclose(lines["t"], torch.tensor([0.3, 0.3]), atol=1e-5)


def test_read_keep_latents_labels_and_case_indices(tmp_path):
    from train.finetune_vae import read_keep_latents

    z = torch.zeros(4, 4, 2, 2)
    torch.save({"latents": z, "settings": ["base", "base", "outline+night", "outline+night"]}, tmp_path / "old.pt")
    torch.save({"latents": z[:2], "settings": ["outline+night@0.6"] * 2, "cases": [5, 7]}, tmp_path / "new.pt")
    latents, labels = read_keep_latents([str(tmp_path / "old.pt"), str(tmp_path / "new.pt")])
    assert latents.shape[0] == 6
    assert labels == [("base", 0), ("base", 1), ("outline+night", 0), ("outline+night", 1),
                      ("outline+night@0.6", 5), ("outline+night@0.6", 7)]


@pytest.mark.training
def test_line_term_draws_the_latent_line_as_the_blend_of_its_pictures(tmp_path):
    """A run with the line term at a high weight: the decoder's pictures of latents between a 'base' and a
    'pastel' latent move towards the blend of the teacher's two pictures (the run without it does not), and the
    partial-weight latents are not held to their own old pictures."""
    from diffusers import AutoencoderKL

    from testkit.tiny import make_tiny_components
    from train import finetune_vae

    vae = make_tiny_components()["vae"]
    with torch.no_grad():
        shape = vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean.shape[1:]
    g = torch.Generator().manual_seed(0)
    n = 6
    base, full = torch.randn((n, *shape), generator=g), torch.randn((n, *shape), generator=g)
    sf = vae.config.scaling_factor
    mids = base + 0.5 * (full - base)
    keep_file, mid_file = tmp_path / "keep.pt", tmp_path / "mid.pt"
    torch.save({"latents": torch.cat([base, full]) * sf, "settings": ["base"] * n + ["pastel"] * n,
                "cases": list(range(n)) * 2}, keep_file)
    torch.save({"latents": mids * sf, "settings": ["pastel@0.5"] * n, "cases": list(range(n))}, mid_file)
    ts = torch.tensor([0.25, 0.5, 0.75])[:, None, None, None, None]
    probe = ((1 - ts) * base + ts * full).flatten(0, 1)

    def line_error(vae_dir):
        with torch.no_grad():
            v = AutoencoderKL.from_pretrained(vae_dir)
            goal = ((1 - ts) * v0.decode(base).sample + ts * v0.decode(full).sample).flatten(0, 1)
            return float((v.decode(probe).sample - goal).pow(2).mean())

    v0 = vae
    errors = {}
    for name, extra in (("without", []), ("with", ["--line_weight", "20", "--line_batch", "8"])):
        model = tmp_path / name
        vae.save_pretrained(model / "vae")
        if not errors:
            errors["before"] = line_error(model / "vae")
        finetune_vae.main(["--model", str(model), "--work_dir", str(tmp_path / f"work-{name}"), "--per_kind", "8",
                           "--eval_per_kind", "2", "--batch_size", "4", "--lr", "2e-2", "--steps", "8",
                           "--keep_latents", f"{keep_file},{mid_file}", *extra])
        errors[name] = line_error(model / "vae")
    # 8 steps, still in the learning rate's warm-up: the line error falls to about 0.56 of what it was, the run
    # without the term leaves it where it was
    assert errors["with"] < 0.7 * errors["before"] and errors["with"] < 0.7 * errors["without"], errors
    rec = json.loads((tmp_path / "with" / "training.json").read_text())["vae"]["decoder_styles_extra"]
    assert (rec["line_weight"], rec["lines"], rec["partial_weight_latents"]) == (20, n, n)

    for extra, message in ((["--line_weight", "1"], "give --keep_latents too"),
                           (["--keep_latents", str(mid_file), "--line_weight", "1"], "no prompt in"),
                           (["--keep_latents", str(keep_file), "--line_weight", "-1"], "--line_weight=-1.0"),
                           (["--keep_latents", str(keep_file), "--chroma_weight", "-1"], "--chroma_weight=-1.0")):
        with pytest.raises(SystemExit, match=message):
            finetune_vae.main(["--model", str(tmp_path / "with"), "--work_dir", str(tmp_path / "w-bad"), *extra])


def test_chroma_weight_weighs_a_hue_shift_of_a_pale_color():
    """--chroma_weight: a pale red drawn pale orange differs little in RGB; the chroma term counts it more,
    and a pure brightness change (same offset on every channel) not at all."""
    from train.finetune_vae import picture_loss

    goal = torch.tensor([0.9, 0.5, 0.5]).view(1, 3, 1, 1).expand(1, 3, 4, 4)  # pale red, model space
    hue = torch.tensor([0.9, 0.62, 0.42]).view(1, 3, 1, 1).expand(1, 3, 4, 4)  # pale orange
    brighter = goal + 0.05
    assert picture_loss(hue, goal, 5.0) > 1.5 * picture_loss(hue, goal)  # 0.074 against 0.040
    assert torch.isclose(picture_loss(brighter, goal, 5.0), picture_loss(brighter, goal))
