"""labapp handlers called directly (no server): validation, settings, metadata, streaming, labs."""
from __future__ import annotations

import io
import json
import math

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import torch

from labapp import engine as eng
from labapp import generate as gen
from labapp import labs, trace_views
from labapp import validation as check
from labapp.metadata import read_settings, with_settings


def no_progress(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def engine():
    from testkit.app_server import tiny_engine

    torch.set_num_threads(1)
    return eng.install(tiny_engine())


def run(engine, **overrides):
    kwargs = dict(prompt="a red circle", negative_prompt="", scheduler="DDIM", steps=4, guidance_scale=5.0, seed=7,
                  preview_every=1, progress=no_progress) | overrides
    return list(gen.generate(**kwargs))


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5, 31, "abc", None])
def test_number_errors_name_the_field_and_range(value):
    with pytest.raises(gr.Error, match=r"guidance_scale=.* is not allowed: a (finite )?number in \[0, 30\]"):
        check.number("guidance_scale", value, 0, 30)


def test_integer_and_text_and_lists():
    assert check.integer("steps", 4.0, 1, 10) == 4
    with pytest.raises(gr.Error, match="steps=2.5 .*an integer"):
        check.integer("steps", 2.5, 1, 10)
    with pytest.raises(gr.Error, match=r"width=18 .*a multiple of 4"):
        check.integer("width", 18, 8, 64, multiple_of=4)
    with pytest.raises(gr.Error, match=r"prompt=.*\(20000 characters\).*at most 2000 characters"):
        check.text("prompt", "x" * 20_000)
    assert check.number_list("scales", "1, 2.5;7", 0, 30) == [1.0, 2.5, 7.0]
    with pytest.raises(gr.Error, match="scales"):
        check.number_list("scales", "1, two", 0, 30)
    with pytest.raises(gr.Error, match="schedulers"):
        check.choices("schedulers", ["DDIM", "Nope"], ["DDIM", "Heun"])
    with pytest.raises(gr.Error, match="lora"):
        check.json_value("lora", "[" * 100_000 + "]" * 100_000, "JSON")


def parse_lora(field, spec, presets):
    """The Generate tab's blend field as the request reads it (Blend.parse), errors as the app shows them."""
    from pipelines.lora.settings import Blend

    return check.gradio_errors(Blend.parse)(spec, presets, field=field).to_list()


def test_parse_lora_shorthand_json_and_errors():
    presets = ["outline", "night"]
    assert parse_lora("lora", "outline:0.8, night", presets) == [
        {"name": "outline", "weight": 0.8}, {"name": "night", "weight": 1.0}]
    spec = json.dumps([{"name": "night", "weight": -0.5, "text_encoder_weight": 0.2,
                        "block_weights": {"down": 0.0, "up": 1.5}, "step_range": [0.2, 0.8]}])
    (entry,) = parse_lora("lora", spec, presets)
    assert entry["block_weights"] == {"down": 0.0, "up": 1.5} and entry["step_range"] == (0.2, 0.8)
    with pytest.raises(gr.Error, match=r"lora\[outline\].weight=9.0 is not allowed: a finite number in \[-2, 2\]"):
        parse_lora("lora", "outline:9", presets)
    with pytest.raises(gr.Error, match=r"lora\[night\].step_range"):
        parse_lora("lora", '[{"name": "night", "step_range": [0.9, 0.1]}]', presets)
    with pytest.raises(gr.Error, match=r"lora name='pastel' .*one of \['outline', 'night'\]"):
        parse_lora("lora", "pastel:0.5", presets)


def test_build_request_checks_size_and_combinations(engine):
    base = dict(prompt="a", negative_prompt="", scheduler="DDIM", steps=4, guidance_scale=5, seed=0)
    with pytest.raises(gr.Error, match=r"width=15 .*multiple of 2 in \[8, 32\]"):
        gen.build_request(engine, **base, width=15, height=16)
    with pytest.raises(gr.Error, match="negative_prompt.*perp-neg"):
        gen.build_request(engine, **base, width=16, height=16, guidance_method="perp-neg")
    with pytest.raises(gr.Error, match="guidance_interval_start"):
        gen.build_request(engine, **base, width=16, height=16, guidance_interval_start=0.6, guidance_interval_end=0.4)
    s = gen.build_request(engine, **base, width=16, height=16, guidance_interval_start=0.5)
    assert s.guidance.interval == (0.5, 1.0) and s.model == "tiny-test"


def test_png_metadata_round_trip(engine):
    s = gen.build_request(engine, prompt="blue square", negative_prompt="red", scheduler="Euler a", steps=3,
                          guidance_scale=4, seed=11, width=16, height=16)
    tagged = with_settings(Image.new("RGB", (16, 16)), s)
    buffer = io.BytesIO()
    from gradio.processing_utils import get_pil_metadata

    tagged.save(buffer, "png", pnginfo=get_pil_metadata(tagged))  # what gr.Image(format="png") does
    loaded = read_settings(Image.open(io.BytesIO(buffer.getvalue())))
    assert loaded["scheduler"] == "Euler a" and loaded["seed"] == 11 and loaded["negative_prompt"] == "red"


# ------------------------------------------------------------------------------ handlers


def test_generate_streams_previews_and_keeps_the_trace(engine):
    outputs = run(engine)
    previews, final = outputs[:-1], outputs[-1]
    # previews at the decoder's size (the tiny model's VAE: 16 px; the page scales them up)
    assert len(previews) == 4 and all(p[2] is None and p[1].size == (16, 16) for p in previews)
    assert [p[5] for p in previews][-1].startswith("step 4/4, t=")
    image, settings, status, seed, trace = final[2], final[4], final[5], final[6], final[7]
    assert image.size == (16, 16) and json.loads(image.info["diffusion_lab"])["seed"] == 7
    assert json.loads(settings)["steps"] == 4 and status.startswith("Done") and seed == 7
    assert len(trace.records) == 4 and trace.records[-1].eps_uncond is not None


def test_the_generate_button_labels_every_image(engine):
    """generate_live (the page's button) = generate's values, each image labeled with what, step and t."""
    starting, *previews, final = list(gen.generate_live(prompt="a red circle", negative_prompt="", scheduler="DDIM",
                                                        steps=4, guidance_scale=5.0, seed=7, preview_every=1,
                                                        progress=no_progress))
    assert starting[5].startswith("Starting")  # the status line says so at once (the page's one progress line)
    assert [p[5] for p in previews][-1].startswith("Denoising: step 4/4, t=") and previews[-1][5].endswith(" s")
    assert len(previews) == 4 and all(p[1]["value"].size == (16, 16) for p in previews)
    assert previews[1][0]["label"] == "x_t - step 2/4, t=" + trace_t(final, 1)
    assert previews[1][1]["label"] == "pred x0 - step 2/4, t=" + trace_t(final, 1)
    assert final[2]["label"] == "image - seed 7 (PNG + settings)" and final[2]["value"].size == (16, 16)


def trace_t(final, index: int) -> str:
    return f"{final[7].records[index].timestep:.0f}"


def test_same_seed_same_image_and_randomize_changes_the_seed(engine):
    a, b = run(engine, preview_every=0)[-1], run(engine, preview_every=0)[-1]
    np.testing.assert_array_equal(np.asarray(a[2]), np.asarray(b[2]))
    c = run(engine, preview_every=0, randomize_seed=True)[-1]
    assert c[6] != 7 and json.loads(c[4])["seed"] == c[6]


def test_trace_views(engine):
    trace = run(engine, preview_every=0)[-1][7]
    x_t, x0, eps_fig, info = trace_views.explore_step(trace, 2, "vae")  # steps are 1-based, as the page shows them
    assert x_t["value"].size == x0["value"].size and eps_fig is not None and "step 2 / 4" in info
    assert x0["label"] == f"pred x0 - step 2/4, t={trace.records[1].timestep:.0f}"
    uncond, cond, guided, heat, over_steps, note = trace_views.cfg_step(trace, 4, "linear")
    assert uncond["value"] is not None and heat is not None and "applied scale 5.00" in note
    assert uncond["label"].startswith("x0 uncond - step 4/4")
    with pytest.raises(gr.Error, match="Generate an image first"):
        trace_views.explore_step(None, 1)
    with pytest.raises(gr.Error, match=r"step=9 .*\[1, 4\]"):
        trace_views.cfg_step(trace, 9)
    with pytest.raises(gr.Error, match=r"step=0 .*\[1, 4\]"):
        trace_views.cfg_step(trace, 0)
    with pytest.raises(gr.Error, match=r"decoder='taesd' .*one of \['linear', 'vae'\]"):
        trace_views.cfg_step(trace, 1, "taesd")  # no TAESD loaded: not offered, refused by name


def test_stop_ends_the_run_and_keeps_the_recorded_steps(engine):
    class Request:  # what Gradio passes as gr.Request: only the session hash is read
        session_hash = "session-a"

    outputs = []
    for out in gen.generate(prompt="a red circle", negative_prompt="", scheduler="DDIM", steps=40, guidance_scale=5.0,
                            seed=7, preview_every=1, progress=no_progress, request=Request()):
        outputs.append(out)
        if len(outputs) == 3:
            gen.request_stop(Request())
    *previews, final = outputs
    trace, status = final[7], final[5]
    assert final[2] is None and trace.stopped and status.startswith("Stopped at step 4 / 40")
    assert [r.step for r in trace.records] == [0, 1, 2, 3] and len(previews) == 3
    assert "session-a" not in gen._stops  # consumed: the next run is not stopped


def test_step_sliders_get_their_own_values(engine):
    """The explorer opens at the last step, the CFG lab where the x0 pair and the eps pair both differ."""
    trace = run(engine, preview_every=0)[-1][7]
    gaps = [float((r.x0_cond - r.x0_uncond).abs().mean()) * r.guidance_norm for r in trace.records]
    explore, cfg = trace_views.step_slider_updates(trace)
    assert explore is not cfg and explore["value"] == 4 and explore["maximum"] == 4 and explore["minimum"] == 1
    assert cfg["value"] == int(np.argmax(gaps)) + 1 and gaps[cfg["value"] - 1] == max(gaps) > 0
    assert len(set(gaps)) > 1  # the choice is not forced by equal gaps


def test_schedule_and_forward_noise(engine):
    _fig, data = labs.schedule(["DDIM", "Heun"], 5)
    assert data["DDIM"]["num_model_calls"] == 5 and data["Heun"]["num_model_calls"] == 9
    pixels, latent, info, _plot = labs.forward_noise(labs.shapes_sample(3), 999, 0)
    assert "t = 999" in info and pixels.size == latent.size
    with pytest.raises(gr.Error, match=r"timestep=1000 .*\[0, 999\]"):
        labs.forward_noise(labs.shapes_sample(3), 1000, 0)


def test_the_forward_tools_center_crop_is_shown(engine):
    wide = Image.new("RGB", (60, 30), (0, 200, 0))
    wide.paste((250, 0, 0), (15, 0, 45, 30))  # the center square is red, the sides green
    view, note = labs.forward_crop(wide)
    assert note == f"The model sees the center 30x30 px of 60x30, resized to {engine.native_size}x{engine.native_size} px."
    array = np.asarray(view, dtype=np.int16)
    assert array.shape[:2] == (96, 192)  # shown at 192 px on the long side, pixels kept crisp
    assert tuple(array[48, 96]) == (250, 0, 0)  # inside the square: as it is
    assert array[48, 10, 1] < 100  # outside: dimmed (the green was 200)
    assert tuple(array[0, 70]) == (255, 210, 0)  # the outline along the square's top edge (x 48..144)
    assert "whole image" in labs.forward_crop(Image.new("RGB", (20, 20)))[1]
    assert labs.forward_crop(None) == (None, "")


def test_model_choice_and_gpu_durations():
    assert eng.choose_model(None, cuda=False)[0] == "tiny-shapes"
    assert eng.choose_model(None, cuda=True)[0] == "sd15"
    assert eng.choose_model("sd21", cuda=False) == ("sd21", "--model sd21 was requested")
    from pipelines.request import GenerationRequest

    small, big = GenerationRequest("a", steps=10), GenerationRequest("a", steps=50, num_images=4)
    assert eng._generation_duration(big, 5) > eng._generation_duration(small, 5) > 0
    assert eng._batch_duration([small, big]) > eng._batch_duration([small])
