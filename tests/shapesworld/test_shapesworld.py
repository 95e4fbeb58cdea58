"""The shapes world: deterministic generator, captions, tokenizer, imagefolder writer, scorer."""
import json
import os
import re

import numpy as np
import pytest

from shapesworld import (COLOR_NAMES, SHAPES, STYLES, VOCABULARY, Attributes, adherence, caption_for, sample,
                         join_styles, score_image, style_parts, write_imagefolder)
from shapesworld.tokenizer import build_clip_tokenizer_files, learn_merges


def test_sample_is_a_pure_function_of_its_seed():
    a, b = sample(123), sample(123)
    assert a.caption == b.caption and a.attributes == b.attributes
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(sample(124).image), np.asarray(a.image))


def test_captions_name_exactly_the_mentioned_attributes():
    attrs = Attributes("triangle", "orange", "small", "right", "top")
    assert caption_for(attrs, ("shape", "color", "size", "h", "v")) == "a small orange triangle in the top right"
    assert caption_for(attrs, ("color",)) == "an orange shape"
    assert caption_for(attrs, ("shape", "h")) == "a triangle on the right"
    assert caption_for(Attributes("circle", "red", "large", "center", "middle"), ("shape", "h", "v")) == "a circle in the center"
    assert caption_for(attrs, ()) == ""
    empty = sum(sample(i).caption == "" for i in range(500)) / 500
    assert 0.05 < empty < 0.16  # about 10% unconditional captions for CFG training


def test_every_caption_word_is_one_token():
    caption_words = {w for i in range(300) for w in sample(i).caption.split()}
    assert caption_words <= set(VOCABULARY)
    from transformers import CLIPTokenizer
    import tempfile
    folder = tempfile.mkdtemp()
    tok = CLIPTokenizer(*build_clip_tokenizer_files(VOCABULARY, folder), model_max_length=32)
    ids = tok("a large purple triangle in the bottom left").input_ids
    assert tok.convert_ids_to_tokens(ids)[1:-1] == [w + "</w>" for w in "a large purple triangle in the bottom left".split()]
    # unknown words still tokenize (byte-level characters), never fail
    assert len(tok("a zebra").input_ids) > 3


def test_bpe_merges_end_with_whole_words():
    merges = learn_merges(["red", "green"])
    assert ("r", "ed</w>") in merges or ("re", "d</w>") in merges
    assert "".join(merges[-1]) in {"red</w>", "green</w>"}


@pytest.mark.parametrize("style", [None, *STYLES, "outline+night"])
def test_scorer_reads_the_generator_ground_truth(style):
    n = 150
    samples = [sample(i, style=style) for i in range(n)]
    readings = [score_image(s.image) for s in samples]
    acc = adherence(readings, [s.attributes for s in samples])
    for key in ("shape", "color", "size", "position"):
        assert acc[key] >= 0.97, (style, key, acc)
    parts = style_parts(style)
    assert np.mean([r.hollow for r in readings]) == pytest.approx(1.0 if "outline" in parts else 0.0, abs=0.03)
    assert np.mean([r.dark_background for r in readings]) == (1.0 if "night" in parts else 0.0)


def test_combined_styles_have_one_spelling_and_keep_the_single_style_images():
    assert style_parts("outline+night") == ("outline", "night") == style_parts(join_styles("night", "outline"))
    for bad in ("night+outline", "outline+outline", "outline+", "sepia", "outline+sepia"):
        with pytest.raises(ValueError, match=re.escape(f"style={bad!r} is invalid")):
            sample(0, style=bad)
    # a combination only changes the drawing: same attributes, caption and shape geometry per seed
    one, both = sample(5, style="outline"), sample(5, style="outline+night")
    assert one.caption == both.caption and one.attributes.shape == both.attributes.shape

    def stroke(image, background):  # pixels well away from the background color
        return np.abs(np.asarray(image).astype(int) - background).sum(-1) > 60

    light, dark = stroke(one.image, (240, 238, 232)), stroke(both.image, (18, 20, 38))
    assert light.sum() > 20 and (light & dark).sum() / (light | dark).sum() > 0.8


def test_pastel_lowers_saturation_and_scorer_sees_it():
    base = np.mean([score_image(sample(i).image).saturation for i in range(80)])
    pastel = np.mean([score_image(sample(i, style="pastel").image).saturation for i in range(80)])
    assert pastel < 0.6 * base


def test_scorer_on_blank_image_finds_nothing():
    blank = np.full((32, 32, 3), 240, np.uint8)
    reading = score_image(blank)
    assert not reading.found and reading.shape is None
    assert adherence([reading], [Attributes("circle", "red", "small", "left", "top")])["shape"] == 0.0


def test_unknown_style_is_refused_with_the_allowed_names():
    with pytest.raises(ValueError, match="style='sepia'.*outline"):
        sample(0, style="sepia")


def test_write_imagefolder(tmp_path):
    folder = write_imagefolder(str(tmp_path / "night"), 5, style="night", trigger="night style")
    rows = [json.loads(l) for l in open(os.path.join(folder, "metadata.jsonl"))]
    assert len(rows) == 5 and all(r["text"].startswith("night style") for r in rows)
    assert all(os.path.exists(os.path.join(folder, r["file_name"])) for r in rows)
    assert {r["attr_shape"] for r in rows} <= set(SHAPES) and {r["attr_color"] for r in rows} <= set(COLOR_NAMES)
    assert not os.path.exists(os.path.join(folder, "metadata.jsonl.tmp"))
