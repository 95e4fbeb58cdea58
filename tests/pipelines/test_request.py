"""pipelines/request.py, pipelines/fields.py and Blend.parse: the one request type from the form to the
pipeline call, checked once, each refusal naming its field (no model needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.fields import FieldError
from pipelines.forward import snr
from pipelines.lora.settings import Blend
from pipelines.request import GenerationRequest, RequestLimits, schedule_options

LIMITS = RequestLimits(model="tiny-test", native_size=32, size_multiple=4, presets=("outline", "night"))
FORM = dict(prompt="a red circle", negative_prompt="blue", scheduler="Euler", steps=6, guidance_scale=5.0, seed=7)
# the settings document's keys, in order, as the app wrote them before the request had a type
DOCUMENT_KEYS = ["prompt", "negative_prompt", "model", "scheduler", "timestep_spacing", "sigmas", "steps",
                 "guidance_method", "guidance_scale", "guidance_rescale", "guidance_schedule", "guidance_interval",
                 "apg_momentum", "apg_norm_threshold", "apg_eta", "cfg_zero_init_steps", "perp_neg_scale", "seed",
                 "width", "height", "num_images", "lora", "classifier_scale", "prompt_weighting"]


def test_the_form_becomes_a_nested_request_and_the_pipeline_call():
    r = GenerationRequest.from_form(LIMITS, **FORM, guidance_method="apg", apg_momentum=-0.25, guidance_rescale=0.5,
                                    guidance_interval_start=0.0, guidance_interval_end=0.6, timestep_spacing="trailing",
                                    lora="outline:0.8")
    assert (r.width, r.height, r.model) == (32, 32, "tiny-test")  # width 0: the model's native size
    assert r.guidance.method == "apg" and r.guidance.apg.momentum == -0.25 and r.guidance.rescale == 0.5
    assert r.guidance.interval == (-1.0, 0.6) and r.guidance.interval_space == "fraction"  # step 0 included
    assert r.timestep_spacing == "trailing" and r.sigmas is None  # the model's own sigmas: None, not "default"
    assert r.blend.names == ["outline"] and r.blend.adapters[0].weight == 0.8
    kwargs = r.call_kwargs("cpu")
    assert kwargs["scheduler_options"] == {"timestep_spacing": "trailing"} and kwargs["guidance"] is r.guidance
    assert (kwargs["num_inference_steps"], kwargs["negative_prompt"], kwargs["num_images_per_prompt"]) == (6, "blue", 1)
    assert kwargs["generator"].initial_seed() == 7
    doc = r.to_dict()
    assert list(doc) == DOCUMENT_KEYS
    assert doc["timestep_spacing"] == "trailing" and doc["sigmas"] == "default" and doc["lora"] == [
        {"name": "outline", "weight": 0.8}]
    assert json.loads(r.to_json())["guidance_interval"] == [-1.0, 0.6]


def test_the_forms_model_default_words_are_decoded_once():
    assert schedule_options("model default", "default") == {}
    assert schedule_options("leading", "karras") == {"timestep_spacing": "leading", "sigmas": "karras"}
    with pytest.raises(FieldError, match=r"sigmas='none' is not allowed: one of \['default', 'karras', 'exponential'\]"):
        schedule_options("model default", "none")


def test_refusals_name_the_field_the_value_and_what_is_allowed():
    cases = [
        (dict(steps=151), r"steps=151 is not allowed: an integer in \[1, 150\]"),
        (dict(seed=1.5), r"seed=1\.5 is not allowed: an integer in \[0, 4294967295\]"),
        (dict(width=30), r"width=30 is not allowed: a multiple of 4 in \[16, 64\]"),
        (dict(guidance_method="perp-neg", negative_prompt=""), r"negative_prompt='' is not allowed: a non-empty"),
        (dict(guidance_interval_start=0.7, guidance_interval_end=0.2), r"guidance_interval_start=0\.7 .*less than"),
        (dict(lora="pastel:0.5"), r"lora name='pastel' is not allowed: one of \['outline', 'night'\]"),
        (dict(lora="outline:3"), r"lora\[outline\]\.weight=3\.0 is not allowed: a finite number in \[-2, 2\]"),
    ]
    for change, message in cases:
        with pytest.raises(FieldError, match=message):
            GenerationRequest.from_form(LIMITS, **(FORM | change))


def test_a_request_built_directly_is_checked_by_its_own_types():
    with pytest.raises(FieldError, match="scheduler='Nope'"):
        GenerationRequest("a", scheduler="Nope")
    with pytest.raises(FieldError, match="steps=0"):
        GenerationRequest("a", steps=0)
    with pytest.raises(FieldError, match="blend="):
        GenerationRequest("a", blend=[{"name": "outline"}])
    batch = GenerationRequest("a").replace(prompt=["a", "b", "c"])
    assert batch.num_prompts == 3


def test_per_block_lists_reach_the_request_and_round_trip():
    spec = json.dumps([{"name": "night", "weight": -0.5, "text_encoder_weight": 0.2, "step_range": [0.2, 0.8],
                        "block_weights": {"down": 0.0, "mid": 1.0, "up": {"block_1": [0.5, 1.0, 0.8]}}}])
    r = GenerationRequest.from_form(LIMITS, **FORM, lora=spec)
    (setting,) = r.blend.adapters
    assert setting.blocks == {"down": {"*": 0.0}, "mid": 1.0, "up": {1: (0.5, 1.0, 0.8)}}
    assert setting.step_range == (0.2, 0.8) and setting.te_weight == 0.2
    again = Blend.parse(json.dumps(r.blend.to_list()), LIMITS.presets)
    assert again == r.blend
    with pytest.raises(FieldError, match=r"lora\[night\]\.block_weights=.*block_weights\['up'\]\['block_1'\]\[1\]"):
        Blend.parse('[{"name": "night", "block_weights": {"up": {"block_1": [0.5, 2.5]}}}]', LIMITS.presets)


def test_gradio_errors_turns_refusals_into_the_clients_message():
    import gradio as gr

    from labapp.validation import gradio_errors

    @gradio_errors
    def handler(steps):
        return GenerationRequest.from_form(LIMITS, **(FORM | dict(steps=steps)))

    @gradio_errors
    def stream():
        yield 1
        raise ValueError("guidance_scale=nan must be a finite number")

    with pytest.raises(gr.Error, match=r"steps=0 is not allowed") as refused:
        handler(0)
    assert refused.value.title == "Invalid input"
    with pytest.raises(gr.Error, match="guidance_scale=nan") as failed:
        list(stream())
    assert failed.value.title == "Invalid settings"


def test_snr_is_one_function_for_numpy_and_torch():
    alpha_bar = [1.0, 0.75, 0.5, 0.0047, 0.0]
    expected = np.array([np.inf, 3.0, 1.0, 0.0047 / 0.9953, 0.0])
    np.testing.assert_allclose(snr(alpha_bar), expected, rtol=1e-12)
    t = snr(torch.tensor(alpha_bar, dtype=torch.float64))
    assert t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-12)


def test_emphasis_syntax_is_checked_and_carried_to_the_pipeline():
    r = GenerationRequest.from_form(LIMITS, **{**FORM, "prompt": "a (red:1.4) [circle]"})
    assert r.call_kwargs("cpu")["prompt_weighting"] == "a1111" and r.to_dict()["prompt_weighting"] == "a1111"
    assert r.to_dict()["prompt"] == "a (red:1.4) [circle]"  # the settings document keeps what was typed
    for field, text, message in (("prompt", "a (red circle", r"'\(' at character 2 is never closed"),
                                 ("prompt", "a red) circle", r"'\)' at character 5 has no matching"),
                                 ("negative_prompt", "(blue:x)", "the weight 'x' at character 5 is not a number")):
        with pytest.raises(FieldError, match=rf"^{field}=.* is not allowed: {message}"):
            GenerationRequest.from_form(LIMITS, **{**FORM, field: text})
    assert GenerationRequest(prompt="a (red circle", prompt_weighting=None).prompt == "a (red circle"  # plain text
    with pytest.raises(FieldError, match="prompt_weighting='compel'"):
        GenerationRequest(prompt="a red circle", prompt_weighting="compel")
