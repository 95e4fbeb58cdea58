"""Word weights: A1111 emphasis syntax parsed here, weighted by compel (pipelines/prompt_weights.py)."""
from __future__ import annotations

import pytest
import torch

from pipelines import TracingStableDiffusionPipeline
from pipelines.inputs import encode_prompt
from pipelines.prompt_weights import parse_emphasis
from testkit.tiny import make_tiny_components

CALL = dict(num_inference_steps=3, guidance_scale=5.0, output_type="np", height=32, width=32)


@pytest.fixture(scope="module")
def pipe():
    p = TracingStableDiffusionPipeline(**make_tiny_components())
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("text, fragments", [
    ("a red circle", [("a red circle", 1.0)]),
    ("a (red:1.4) circle", [("a ", 1.0), ("red", 1.4), (" circle", 1.0)]),
    ("a (red) circle", [("a ", 1.0), ("red", 1.1), (" circle", 1.0)]),
    ("a ((red)) circle", [("a ", 1.0), ("red", pytest.approx(1.21)), (" circle", 1.0)]),
    ("a [circle]", [("a ", 1.0), ("circle", pytest.approx(1 / 1.1))]),
    ("(a (red:1.5) circle:0.5)", [("a ", 0.5), ("red", 0.75), (" circle", 0.5)]),
    ("( red : 1.2 )", [(" red ", 1.2)]),
    (r"a \(red\) circle: big", [("a (red) circle: big", 1.0)]),
    ("(red:1.0) circle", [("red circle", 1.0)]),
])
def test_parse_like_a1111(text, fragments):
    assert list(parse_emphasis(text).fragments) == fragments


@pytest.mark.parametrize("text, message", [
    ("a (red circle", r"prompt: '\(' at character 2 is never closed"),
    ("a red) circle", r"prompt: '\)' at character 5 has no matching '\('"),
    ("a [red circle", r"prompt: '\[' at character 2 is never closed"),
    ("a red] circle", r"prompt: '\]' at character 5 has no matching '\['"),
    ("a red:1.4) circle", r"closes no '\('"),
    ("(red:abc)", "the weight 'abc' at character 4 is not a number"),
    ("(red:1.2.3)", "not a number"),
    ("(red:1e400)", "not a number"),
    ("(red:11)", "outside 0 to 10"),
    ("(red:-1)", "outside 0 to 10"),
    ("(" * 30 + "red" + ")" * 30, "comes to weight 17.4"),
])
def test_malformed_syntax_names_the_field(text, message):
    with pytest.raises(ValueError, match=message):
        parse_emphasis(text)
    with pytest.raises(ValueError, match="^negative_prompt"):
        parse_emphasis(text, "negative_prompt")


def test_weight_one_equals_the_plain_prompt_exactly(pipe):
    plain = encode_prompt(pipe, "a red circle", "cpu", 1, True, "blue square")
    for text in ("a (red:1.0) circle", "(a red circle:1)", "a ( red:1.00 ) circle".replace("( red", "(red").replace("00 )", "00)")):
        weighted = encode_prompt(pipe, text, "cpu", 1, True, "(blue:1.0) square", weighting="a1111")
        assert torch.equal(weighted[0], plain[0]) and torch.equal(weighted[1], plain[1]), text
    images = [pipe(prompt=p, generator=torch.Generator().manual_seed(0), prompt_weighting=w, **CALL).images
              for p, w in (("a red circle", None), ("a (red:1.0) circle", "a1111"))]
    assert (images[0] == images[1]).all()


def test_weights_move_the_word_and_only_the_word(pipe):
    plain = encode_prompt(pipe, "a red circle", "cpu", 1, False)[0][0]  # (L, D)
    up = encode_prompt(pipe, "a (red:1.5) circle", "cpu", 1, False, weighting="a1111")[0][0]
    empty = encode_prompt(pipe, "", "cpu", 1, False)[0][0]
    ids = pipe.tokenizer("a red circle").input_ids  # [bos, a, red, circle, eos]
    red = ids.index(pipe.tokenizer.convert_tokens_to_ids("red</w>"))
    changed = (up - plain).abs().amax(-1) > 0
    assert changed.nonzero().flatten().tolist() == [red]  # compel: z_w = z_empty + w (z - z_empty) at red's token
    torch.testing.assert_close(up[red], empty[red] + 1.5 * (plain[red] - empty[red]))
    down = encode_prompt(pipe, "a [red] circle", "cpu", 1, False, weighting="a1111")[0][0]
    assert (down - plain).abs().max() > 1e-4
    images = {w: pipe(prompt=f"a (red:{w}) circle", generator=torch.Generator().manual_seed(0),
                      prompt_weighting="a1111", **CALL).images for w in (0.5, 1.0, 1.5)}
    assert (images[0.5] != images[1.0]).any() and (images[1.5] != images[1.0]).any()


def test_pipeline_refuses_malformed_prompts_by_field(pipe):
    with pytest.raises(ValueError, match="^prompt: '\\(' at character 2"):
        pipe(prompt="a (red circle", prompt_weighting="a1111", **CALL)
    with pytest.raises(ValueError, match="^negative_prompt: '\\]'"):
        pipe(prompt="a red circle", negative_prompt="blue]", prompt_weighting="a1111", **CALL)
    with pytest.raises(ValueError, match="prompt_weighting='compel'"):
        pipe(prompt="a red circle", prompt_weighting="compel", **CALL)
    # without prompt_weighting brackets are plain text, as in diffusers
    pipe(prompt="a (red circle", generator=torch.Generator().manual_seed(0), **CALL)


def test_weighted_prompt_round_trips_through_png_and_read_settings():
    import base64
    import io

    import gradio as gr
    from PIL import Image

    from labapp import engine as eng
    from labapp import settings_file
    from labapp.metadata import with_settings
    from pipelines.request import GenerationRequest
    from testkit.app_server import tiny_engine

    engine = eng.install(tiny_engine())
    settings = GenerationRequest.from_form(engine.limits(), prompt="a (red:1.4) [circle]", negative_prompt="(blue)",
                                           scheduler="DDIM", steps=3, guidance_scale=4.0, seed=5)
    buffer = io.BytesIO()
    from PIL.PngImagePlugin import PngInfo

    tagged, meta = with_settings(Image.new("RGB", (16, 16)), settings, 0), PngInfo()
    for key, value in tagged.info.items():  # what Gradio writes into the PNG it serves
        meta.add_text(key, value)
    tagged.save(buffer, format="PNG", pnginfo=meta)
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    doc = settings_file.read_settings({"url": url})
    assert (doc["prompt"], doc["negative_prompt"], doc["prompt_weighting"]) == ("a (red:1.4) [circle]", "(blue)", "a1111")
    bad = settings.to_dict() | {"prompt": "a (red:1.4 circle"}
    url = "data:application/json;base64," + base64.b64encode(__import__("json").dumps(bad).encode()).decode()
    with pytest.raises(gr.Error, match=r"prompt=.*'\(' at character 2 is never closed"):
        settings_file.read_settings({"url": url})
