"""The attention view (labapp/attention_view.py, labapp/tabs/attention.py): handlers on tiny components,
the /attention_maps endpoint through gradio_client, and the trust line's words."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
import torch

from labapp import attention_view as view
from labapp import engine as eng
from pipelines.attention import word_map
from testkit.app_server import launch, tiny_engine

ARGS = dict(negative_prompt="", scheduler="DDIM", steps=4, guidance_scale=5.0, seed=1)


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    return eng.install(tiny_engine())


@pytest.fixture(scope="module")
def recorded(engine):
    return view.record(prompt="a (red:1.3) [circle]", word_index=1, step=-1, **ARGS)


def test_record_shows_the_words_with_their_weights(engine, recorded):
    chips, over_image, over_x0, curve, trust, numbers, run, slider = recorded
    assert chips["choices"] == [("a", 0), ("red ×1.3", 1), ("circle ×0.91", 2)] and chips["value"] == 1
    assert [(w["word"], w["weight"]) for w in numbers["words"]] == [("a", 1.0), ("red", 1.3), ("circle", pytest.approx(1 / 1.1))]
    assert over_image.size == over_x0.size == (view.DISPLAY, view.DISPLAY)
    assert numbers["num_steps"] == 4 and len(numbers["mass_per_step"]) == 4 and slider["maximum"] == 3
    # the numbers are the recorded run's: the word's map averaged over the steps, at latent resolution
    mean_map = run.maps[:, 1].float().mean(0)
    side = engine.native_size // engine.vae_scale_factor  # the latent resolution
    assert numbers["map_shape"] == list(mean_map.shape) == [side, side]
    np.testing.assert_allclose(np.array(numbers["map"]), mean_map.numpy(), atol=1e-4)
    # each step's shares over the prompt's words stay below 1 (the rest goes to the start, end and padding tokens)
    assert all(0 < m < 1 for m in numbers["mass_per_step"])
    assert "nothing is measured" in trust  # not the embedded model


def test_view_scrubs_steps_and_words_without_a_model_call(engine, recorded, monkeypatch):
    run = recorded[6]
    monkeypatch.setattr(eng, "attention_run", lambda *a, **k: pytest.fail("view must not run the model"))
    step0, step3 = view.view(run, 2, 0), view.view(run, 2, 3)
    assert step0[4]["step"] == 0 and step0[4]["word"] == "circle"
    assert np.asarray(step0[1]).tolist() != np.asarray(step3[1]).tolist()  # the x0 preview follows the slider
    with pytest.raises(gr.Error, match=r"word_index=3 is not allowed: an integer in \[0, 2\]"):
        view.view(run, 3, 0)
    with pytest.raises(gr.Error, match=r"step=4 is not allowed: an integer in \[-1, 3\]"):
        view.view(run, 0, 4)
    with pytest.raises(gr.Error, match="run=.* press Record first"):
        view.view(None, 0, 0)


def test_weights_change_the_image_and_the_prompt_keeps_the_others(engine, recorded):
    run = recorded[6]
    assert view.weighted_prompt(run, 1, 0.5) == "a (red:0.5) (circle:0.9091)"
    items = view.compare_weights(run, 1)
    assert [label for _, label in items[::2]] == ["'red' at 0.5", "'red' at 1", "'red' at 1.5"]
    images = [np.asarray(im) for im, _ in items[::2]]
    assert (images[0] != images[1]).any() and (images[2] != images[1]).any()


def test_word_tokens_match_the_recorded_maps(engine):
    """The word -> token mapping points at the tokens the text encoder saw: a word's map taken from the
    full 77-token maps equals the view's."""
    settings = view.GenerationRequest(prompt="a red circle", steps=2, guidance_scale=4.0, scheduler="DDIM", model="tiny-test")
    out = eng.attention_run(settings)
    words = view.prompt_words(engine.pipe.tokenizer, "a red circle")
    ids = engine.pipe.tokenizer("a red circle").input_ids
    assert [ids[p] for _, _, t in words for p in t] == ids[1:-1]
    run = view._run(settings)
    torch.testing.assert_close(run.maps[1, 2].float(), word_map(out.trace[1].attention.maps[0], words[2][2]),
                               atol=2e-3, rtol=2e-3)  # float16 storage


def test_trust_line_on_the_embedded_model(recorded):
    import dataclasses

    run = dataclasses.replace(recorded[6], embedded=True, words=[("circle", 1.0), ("red", 1.0), ("left", 1.0), ("a", 1.0)])
    assert "shape word's map overlaps the drawn shape by" in view.trust_line(run, 0)
    assert "color word's map overlaps" in view.trust_line(run, 1)
    assert "Position words' maps" in view.trust_line(run, 2)
    assert "other words' maps are not checked" in view.trust_line(run, 3)


def test_attention_maps_endpoint(engine):
    from gradio_client import Client

    demo, url = launch(engine, concurrency_limit=1)
    try:
        client = Client(url, verbose=False)
        assert "/attention_maps" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        chips, over_image, over_x0, curve, trust, numbers, step = client.predict(
            prompt="a (red:1.3) circle", word_index=2, step=-1, api_name="/attention_maps", **ARGS)
        assert numbers["word"] == "circle" and len(numbers["mass_per_step"]) == 4
        assert over_image.endswith((".png", ".webp"))
        with pytest.raises(Exception, match=r"word_index=99 is not allowed: an integer in \[0, 2\]"):
            client.predict(prompt="a red circle", word_index=99, step=-1, api_name="/attention_maps", **ARGS)
    finally:
        demo.close()
