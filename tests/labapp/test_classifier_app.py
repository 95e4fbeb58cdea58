"""Classifier guidance through the app's HTTP API (real gradio_client), on the embedded model and
its shipped classifier (CPU): /generate with guidance_method="classifier" and classifier_scale,
/compare_guidance_kinds, and clear refusals."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import torch
from gradio_client import Client

from testkit.app_server import launch, tiny_engine

BASE = dict(negative_prompt="", scheduler="DDIM", steps=6, seed=11, preview_every=0)


@pytest.fixture(scope="module")
def client():
    from labapp import engine as eng

    torch.set_num_threads(1)
    demo, url = launch(eng.load_engine("tiny-shapes", "test: the embedded model", device="cpu"), concurrency_limit=1)
    yield Client(url, verbose=False)
    demo.close()


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_generate_classifier_scale_zero_is_the_unconditional_image(client):
    uncond = client.predict(prompt="", guidance_scale=1.0, **BASE, api_name="/generate")
    zero = client.predict(prompt="a blue square", guidance_scale=1.0, guidance_method="classifier",
                          classifier_scale=0.0, **BASE, api_name="/generate")
    guided = client.predict(prompt="a blue square", guidance_scale=1.0, guidance_method="classifier",
                            classifier_scale=8.0, **BASE, api_name="/generate")
    assert np.array_equal(pixels(uncond[2]), pixels(zero[2]))
    assert not np.array_equal(pixels(uncond[2]), pixels(guided[2]))
    assert '"classifier_scale": 8.0' in guided[4] and '"guidance_method": "classifier"' in guided[4]
    both = client.predict(prompt="a blue square", guidance_scale=3.0, guidance_method="classifier+cfg",
                          classifier_scale=4.0, **BASE, api_name="/generate")
    assert both[5].startswith("Done")


def test_compare_guidance_kinds_endpoint(client):
    grid, adherence, table, probs, grad, eps, note = client.predict(
        prompt="a red circle", seed=0, steps=4, scheduler="DDIM", guidance_scale=3.0, cfg_scales="1, 3",
        classifier_scales="0, 8", classifier_scale=8.0, adherence_prompts=2, heat_step=0.5,
        api_name="/compare_guidance_kinds")
    assert [g["caption"] for g in grid] == ["CG s = 0", "CG s = 8", "CFG w = 1", "CFG w = 3"]
    assert adherence is not None and probs is not None and grad is not None and eps is not None
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| kind")]
    assert len(rows) == 1 + 2 + 2 + 2  # uncond, CG x 2, CFG x 2, CG+CFG x 2
    by_kind = {line.split("|")[1].strip(): line for line in rows}
    # counted calls per image, 4 steps: CG = 4 UNet rows + 4 classifier passes; CFG = 8 UNet rows
    assert by_kind["classifier"].split("|")[7].strip() == "4" and by_kind["classifier"].split("|")[8].strip() == "4"
    assert by_kind["cfg"].split("|")[7].strip() == "8" and by_kind["cfg"].split("|")[8].strip() == "0"
    assert "heat maps at step" in note


@pytest.mark.parametrize("override, expected", [
    (dict(guidance_method="classifier", classifier_scale=-1), r"classifier_scale=-1 is not allowed"),  # our check
    (dict(guidance_method="classifier", classifier_scale=1000), r"classifier_scale=1000 is not allowed"),
    (dict(guidance_method="classifier", prompt="a photo"), "names no attribute"),
])
def test_generate_refusals_name_the_problem(client, override, expected):
    kwargs = dict(BASE, prompt="a red circle", guidance_scale=1.0) | override
    with pytest.raises(Exception, match=expected):
        client.predict(**kwargs, api_name="/generate")
    assert client.predict(prompt="a red circle", guidance_scale=1.0, **BASE, api_name="/generate")[5].startswith("Done")


def test_compare_guidance_kinds_refused_without_a_classifier():
    from gradio_client.exceptions import AppError

    demo, url = launch(tiny_engine(), concurrency_limit=1)
    try:
        with pytest.raises(AppError, match="no noise-aware classifier"):
            Client(url, verbose=False).predict(prompt="a red circle", steps=2, api_name="/compare_guidance_kinds")
    finally:
        demo.close()
