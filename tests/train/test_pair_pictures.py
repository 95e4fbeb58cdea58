"""train/pair_pictures.py: the picture a pastel pair should decode to, composed from its single styles'."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch


def _model_space(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def _render(attrs, style, color=None, seed=3):
    from shapesworld.world import render

    attrs = dataclasses.replace(attrs, style=style, color=color or attrs.color)
    return _model_space(render(attrs, np.random.default_rng(seed)))


@pytest.mark.parametrize("pair", ["night+pastel", "outline+pastel"])
@pytest.mark.parametrize("index", range(6))
def test_composition_redraws_a_wrongly_colored_pair_as_the_renderer_draws_it(pair, index):
    """The renderer draws a pair with the same geometry and random draws as the single styles of one seed, so
    a pair picture in the wrong hue (what the shipped decoder drew) composed with the seed's pastel and night
    pictures must come out as the renderer's own pair picture, and read the right color."""
    from shapesworld import score_image
    from shapesworld.world import COLOR_NAMES, sample
    from train.pair_pictures import compose

    attrs = sample(1000 + index, empty_prob=0.0).attributes
    wrong = COLOR_NAMES[(COLOR_NAMES.index(attrs.color) + 1) % len(COLOR_NAMES)]
    # right geometry and background, wrong hue at full saturation
    drawn = _render(attrs, pair.replace("+pastel", ""), color=wrong)
    truth = _render(attrs, pair)
    out = compose(drawn, _render(attrs, "pastel"), _render(attrs, "night") if "night" in pair else None)
    to8 = lambda p: ((p[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()  # noqa: E731
    assert score_image(to8(drawn)).color == wrong
    assert score_image(to8(out)).color == attrs.color
    # mean error under 4 levels of 255; the edges' anti-aliasing and the thin ring are where it differs
    assert (out - truth).abs().mean() < 0.03, float((out - truth).abs().mean())


def test_background_and_coverage_of_a_plain_picture():
    from shapesworld.world import sample
    from train.pair_pictures import background, coverage

    s = sample(7, empty_prob=0.0)
    p = _model_space(s.image)
    assert torch.allclose(background(p)[0], p[0, :, 0, 0], atol=0.02)
    cov = coverage(p)[0, 0]
    assert cov.max() == 1.0 and cov[0, 0] == 0.0
    assert 0.02 < float((cov > 0.5).float().mean()) < 0.3  # one shape of 5-8 px half-extent on 32 x 32
    empty = torch.full((1, 3, 32, 32), 0.8)
    assert coverage(empty).max() == 0.0


def test_compose_pairs_uses_the_same_case_and_leaves_incomplete_cases():
    from train.pair_pictures import compose_pairs

    pics = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = [("pastel", 0), ("night", 0), ("night+pastel", 0), ("night+pastel", 1), ("pastel", 1), ("base", 0)]
    out, done = compose_pairs(pics, labels, ("night+pastel",))
    assert done == [2]  # case 1 has no night picture
    assert torch.equal(out[3], pics[3]) and not torch.equal(out[2], pics[2])
    assert torch.equal(out[[0, 1, 4, 5]], pics[[0, 1, 4, 5]])
    with pytest.raises(ValueError, match="'outline\\+night'.*with pastel"):
        compose_pairs(pics, labels, ("outline+night",))
    with pytest.raises(ValueError, match="style='pastel\\+night' is invalid"):
        compose_pairs(pics, labels, ("pastel+night",))


def test_compose_pairs_partial_weights_use_the_singles_at_the_same_weight():
    from train.pair_pictures import compose, compose_pairs

    pics = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = [("pastel@0.7", 0), ("night@0.7", 0), ("night+pastel@0.7", 0), ("pastel", 0), ("night", 0),
              ("night+pastel@0.6", 0), ("night@0.6", 0), ("outline+pastel@0.7", 0)]
    out, done = compose_pairs(pics, labels, ("night+pastel", "outline+pastel"))
    assert done == [] and torch.equal(out, pics)  # partial weights only when asked
    out, done = compose_pairs(pics, labels, ("night+pastel", "outline+pastel"), partial=True)
    assert done == [2, 7]  # night+pastel@0.6 has no pastel@0.6 beside it: kept
    assert torch.equal(out[2], compose(pics[2:3], pics[0:1], pics[1:2])[0])  # the 0.7 singles, not the full ones
    assert torch.equal(out[7], compose(pics[7:8], pics[0:1], None)[0])
    assert torch.equal(out[5], pics[5])


def test_finetune_vae_refuses_compose_pairs_by_name(tmp_path):
    from testkit.tiny import make_tiny_components
    from train import finetune_vae

    vae = make_tiny_components()["vae"]
    vae.save_pretrained(tmp_path / "m" / "vae")
    keep_file = tmp_path / "keep.pt"
    torch.save({"latents": torch.zeros(2, 4, 8, 8), "settings": ["base", "pastel"]}, keep_file)
    for extra, message in ((["--compose_pairs", "night+pastel"], "give --keep_latents too"),
                           (["--keep_latents", str(keep_file), "--compose_pairs", "outline+night"],
                            "--compose_pairs='outline\\+night'"),
                           (["--keep_latents", str(keep_file), "--compose_pairs", "night+pastel"],
                            "no latent of those pairs")):
        with pytest.raises(SystemExit, match=message):
            finetune_vae.main(["--model", str(tmp_path / "m"), "--work_dir", str(tmp_path / "w"), "--per_kind", "8",
                               "--eval_per_kind", "2", "--batch_size", "4", "--steps", "1", *extra])


def test_finetune_vae_trains_on_composed_pair_pictures_and_records_them(tmp_path, capsys):
    from testkit.tiny import make_tiny_components
    from train import finetune_vae

    vae = make_tiny_components()["vae"]
    vae.save_pretrained(tmp_path / "m" / "vae")
    z = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    keep_file = tmp_path / "keep.pt"
    labels = ["base", "pastel", "night", "night+pastel"] * 2
    torch.save({"latents": z, "settings": labels, "cases": [0, 0, 0, 0, 1, 1, 1, 1]}, keep_file)
    finetune_vae.main(["--model", str(tmp_path / "m"), "--work_dir", str(tmp_path / "w"), "--per_kind", "8",
                       "--eval_per_kind", "2", "--batch_size", "4", "--steps", "2", "--keep_latents", str(keep_file),
                       "--compose_pairs", "night+pastel", "--line_weight", "1"])
    assert "compose pairs: 2 pictures of night+pastel" in capsys.readouterr().out
    rec = json.loads((tmp_path / "m" / "training.json").read_text())["vae"]["decoder_styles_extra"]
    assert (rec["compose_pairs"], rec["composed"], rec["lines"]) == ("night+pastel", 2, 6)


def test_finetune_vae_composes_partial_pairs_and_keeps_them_off_the_lines(tmp_path, capsys):
    from testkit.tiny import make_tiny_components
    from train import finetune_vae

    vae = make_tiny_components()["vae"]
    vae.save_pretrained(tmp_path / "m" / "vae")
    labels = ["base", "pastel", "night", "night+pastel", "pastel@0.5", "night@0.5", "night+pastel@0.5"] * 2
    z = torch.randn(len(labels), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    keep_file = tmp_path / "keep.pt"
    torch.save({"latents": z, "settings": labels, "cases": [0] * 7 + [1] * 7}, keep_file)
    common = ["--model", str(tmp_path / "m"), "--work_dir", str(tmp_path / "w"), "--per_kind", "8", "--eval_per_kind",
              "2", "--batch_size", "4", "--steps", "2", "--keep_latents", str(keep_file), "--line_weight", "1"]
    with pytest.raises(SystemExit, match="give --compose_pairs too"):
        finetune_vae.main([*common, "--compose_partial"])
    finetune_vae.main([*common, "--compose_pairs", "night+pastel", "--compose_partial"])
    assert "compose pairs: 4 pictures of night+pastel" in capsys.readouterr().out
    rec = json.loads((tmp_path / "m" / "training.json").read_text())["vae"]["decoder_styles_extra"]
    assert (rec["composed"], rec["composed_partial"]) == (4, 2)
    # lines: pastel, night and night + pastel per case; on them pastel@0.5 and night@0.5, not the composed pair
    assert (rec["lines"], rec["partial_weight_latents"]) == (6, 4)
