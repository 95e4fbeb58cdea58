"""Settings read back into Generate's form (issue 23, labapp/settings_file.py): this app's PNG, an
AUTOMATIC1111 PNG, a settings JSON; a batch image's own seed; another model's size and LoRA adapted
with a note; refusals name the field. The round trip runs through the real server and gradio_client."""
from __future__ import annotations

import io
import json

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import torch

from labapp import engine as eng
from labapp import settings_file
from labapp.metadata import with_settings
from pipelines.request import GenerationRequest
from testkit.app_server import launch, tiny_engine

A1111 = ("a red circle, <lora:x:1>\nsecond line\nNegative prompt: blue, blurry\n"
         "Steps: 7, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 32x32, "
         'Model hash: abc, Model: some-sd15, Lora hashes: "x: 1, y: 2", Version: v1.10.1')


def data_url_of(content: bytes, mime: str) -> str:
    import base64

    return f"data:{mime};base64," + base64.b64encode(content).decode()


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    return eng.install(tiny_engine())


def png(info: dict, size=(16, 16)) -> dict:
    meta = PngInfo()
    for key, value in info.items():
        meta.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG", pnginfo=meta)
    return {"url": data_url_of(buffer.getvalue(), "image/png")}


def json_file(doc) -> dict:
    return {"url": data_url_of(json.dumps(doc).encode(), "application/json")}


def request(engine, **changes) -> GenerationRequest:
    form = dict(prompt="a blue square", negative_prompt="red", scheduler="Euler a", steps=5, guidance_scale=4.5,
                seed=77, num_images=3, guidance_method="apg", apg_momentum=-0.25, guidance_interval_start=0.0,
                guidance_interval_end=0.6, timestep_spacing="trailing")
    return GenerationRequest.from_form(engine.limits(), **(form | changes))


def test_a_settings_json_fills_every_field_of_the_form(engine):
    settings = request(engine)
    doc = settings_file.read_settings(json_file(settings.to_dict()))
    assert doc["notes"] == [] and {k: v for k, v in doc.items() if k != "notes"} == settings.to_dict()
    values = dict(zip(settings_file.FORM_FIELDS, settings_file.fill_form(doc)))
    assert values["guidance_interval_start"] == 0.0 and values["guidance_interval_end"] == 0.6
    assert (values["scheduler"], values["steps"], values["seed"], values["num_images"]) == ("Euler a", 5, 77, 3)
    assert values["guidance_method"] == "apg" and values["apg_momentum"] == -0.25
    assert values["timestep_spacing"] == "trailing" and values["lora"] == ""
    # the form's values make the same request again
    form = {k: v for k, v in values.items() if k in settings_file.FORM_FIELDS}
    assert GenerationRequest.from_form(engine.limits(), **form).to_dict() == settings.to_dict()


def test_a_batch_images_png_gives_its_own_seed_alone(engine):
    image = with_settings(Image.new("RGB", (16, 16)), request(engine), 2)
    doc = settings_file.read_settings(png({k: image.info[k] for k in ("diffusion_lab", "parameters")}))
    assert (doc["seed"], doc["num_images"]) == (79, 1) and "its own seed 79" in doc["notes"][0]


def test_an_automatic1111_png_gives_what_it_shares(engine):
    doc = settings_file.read_settings(png({"parameters": A1111}))
    assert doc["prompt"] == "a red circle, <lora:x:1>\nsecond line" and doc["negative_prompt"] == "blue, blurry"
    assert (doc["steps"], doc["scheduler"], doc["guidance_scale"], doc["seed"]) == (7, "DPM++ 2M Karras", 6.5, 1234)
    assert (doc["width"], doc["height"]) == (32, 32) and doc["notes"][0].startswith("made with some-sd15")


def test_another_models_size_and_lora_are_adapted_with_a_note(engine):
    doc = request(engine).to_dict() | {"model": "sd15", "width": 512, "height": 768,
                                       "lora": [{"name": "outline", "weight": 1.0}]}
    out = settings_file.read_settings(json_file(doc))
    assert (out["width"], out["height"], out["lora"]) == (engine.native_size, engine.native_size, [])
    assert any("width 512" in n for n in out["notes"]) and any("outline" in n for n in out["notes"])


@pytest.mark.parametrize("payload, field", [
    (png({}), "file"),  # a PNG without settings
    ({"url": "data:application/json;base64,bm90IGpzb24="}, "file"),  # "not json"
    (json_file([1, 2]), "file"),
    ({"url": "data:application/json;base64," + "A" * 200_000}, "file"),  # over the JSON limit
    (json_file({"prompt": "x", "steps": 10_000}), "steps"),
    (json_file({"prompt": "x", "seed": "many"}), "seed"),
    (json_file({"prompt": "x", "scheduler": "Nope"}), "scheduler"),
    (json_file({"prompt": "x", "guidance_interval": "all"}), "guidance_interval"),
    (json_file({"prompt": "x", "lora": [{"name": "no-such"}]}), "lora"),
    ({"path": "/etc/passwd"}, "file"),  # a forged path: never read
    ("https://example.com/x.png", "file"),
])
def test_refusals_name_the_field(engine, payload, field):
    with pytest.raises(gr.Error, match=f"`?{field}`?"):
        settings_file.read_settings(payload)


def test_nan_in_a_document_is_refused(engine):
    with pytest.raises(gr.Error, match="file"):
        settings_file.read_settings({"url": data_url_of(b'{"prompt": "x", "guidance_scale": NaN}', "application/json")})
    with pytest.raises(gr.Error, match="settings"):
        settings_file.fill_form(["forged"])


def test_a_generated_png_round_trips_through_the_server():
    from gradio_client import Client, handle_file

    torch.set_num_threads(1)
    demo, url = launch(tiny_engine(), concurrency_limit=1)
    try:
        client = Client(url, verbose=False)
        out = client.predict(prompt="a green triangle", negative_prompt="", scheduler="DDIM", steps=3,
                             guidance_scale=4.0, seed=11, num_images=2, api_name="/generate")
        gallery = out[3]["value"]  # an update: the gallery shows only for a batch
        assert [g["caption"] for g in gallery] == ["#0 seed 11", "#1 seed 12"]
        second = gallery[1]["image"]
        doc = client.predict(file=handle_file(second), api_name="/read_settings")
        assert (doc["prompt"], doc["seed"], doc["num_images"], doc["steps"]) == ("a green triangle", 12, 1, 3)
        again = client.predict(**{k: v for k, v in doc.items() if k in ("prompt", "negative_prompt", "scheduler",
                                                                         "steps", "guidance_scale", "seed")},
                               api_name="/generate")
        a = np.asarray(Image.open(again[2]).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(second).convert("RGB"), dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # the batch's second image, made again alone
    finally:
        demo.close()
