"""The attention measurement's helpers (shapesworld/attention_eval.py) and the word -> token mapping."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.attention import word_map, word_tokens
from shapesworld.attention_eval import iou, mass_in, position_region, shape_mask, threshold_map
from shapesworld.world import sample
from testkit.tiny import make_tiny_tokenizer


def test_shape_mask_finds_the_drawn_shape():
    s = sample(3, empty_prob=0.0)
    mask = shape_mask(np.asarray(s.image))
    ys, xs = np.nonzero(mask)
    assert 20 < mask.sum() < 600
    # the mask's centre lies in the cell the world drew the shape in
    assert position_region(s.attributes.h, mask.shape)[int(ys.mean()), int(xs.mean())]
    assert position_region(s.attributes.v, mask.shape)[int(ys.mean()), int(xs.mean())]


def test_threshold_iou_and_regions():
    heat = np.zeros((8, 8), np.float32)
    heat[2:4, 2:4] = 1.0
    mask = threshold_map(heat, (32, 32))
    assert mask[9:15, 9:15].all() and not mask[20:, 20:].any()  # bilinear edges: the corners fall below tau
    assert not threshold_map(np.ones((8, 8)), (32, 32)).any()  # a flat map marks nothing
    assert iou(mask, mask) == 1.0 and iou(mask, ~mask) == 0.0
    left, top = position_region("left", (32, 32)), position_region("top", (32, 32))
    assert left[:, :10].all() and not left[:, 12:].any() and top[:10].all() and not top[12:].any()
    assert mass_in(np.ones((8, 8)), left) == pytest.approx(left.mean(), abs=1e-6)


def test_word_tokens_follow_the_tokenizer():
    tok = make_tiny_tokenizer(max_length=16)
    words = word_tokens(tok, "a red  circle photo")
    assert [w for w, _ in words] == ["a", "red", "circle", "photo"]
    flat = [p for _, ps in words for p in ps]
    assert flat == list(range(1, 1 + len(flat)))
    assert tok("a red circle photo").input_ids[1:-1] == tok("a red circle photo", add_special_tokens=False).input_ids
    assert len(word_tokens(tok, " ".join(["red"] * 40))) == 14  # 16 positions less start and end
    maps = torch.rand(1, 16, 4, 4)
    torch.testing.assert_close(word_map(maps, [2, 3]), maps[:, 2] + maps[:, 3])
