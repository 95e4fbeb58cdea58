"""The app through its HTTP API with the real gradio_client, on tiny components (CPU)."""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

import torch
from gradio_client import Client, handle_file

from testkit.app_server import launch, tiny_engine

STEPS = 4
BASE = dict(prompt="a red circle", negative_prompt="", scheduler="DDIM", steps=STEPS, guidance_scale=5.0, seed=3)


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    demo, url = launch(tiny_engine(), concurrency_limit=2)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_generate_streams_previews_then_the_final_image(client):
    job = client.submit(**BASE, preview_every=1, api_name="/generate")
    final = job.result(timeout=120)
    outputs = job.outputs()
    intermediate = outputs[:-1]
    assert len(intermediate) >= 3, f"expected >= 3 preview updates before the final output, got {len(intermediate)}"
    assert all(o[0] is not None and o[1] is not None and o[2] is None for o in intermediate)
    x_t, x0, image, _gallery, settings, status, seed = final
    assert image.endswith(".png") and status.startswith("Done")
    info = Image.open(image).info
    assert '"scheduler": "DDIM"' in info["diffusion_lab"] and "Steps: 4" in info["parameters"]
    assert '"seed": 3' in settings and seed == 3


def test_every_endpoint_answers(client, tmp_path):
    grid, _plot, note = client.predict(prompt="a red circle", negative_prompt="", scales="1, 4", seed=0, steps=2,
                                       scheduler="DDIM", adherence_prompts=2, api_name="/cfg_sweep")
    assert len(grid) == 2 and "skipped" in note
    methods = client.predict(prompt="a red circle", negative_prompt="blue", methods=["cfg", "apg", "perp-neg"],
                             guidance_scale=5, seed=0, steps=2, scheduler="DDIM", api_name="/compare_guidance")
    assert [m["caption"] for m in methods] == ["cfg", "apg", "perp-neg"]
    _plot, data = client.predict(schedulers=["DDIM", "Heun"], steps=5, timestep_spacing="trailing", sigmas="default",
                                 api_name="/schedule")
    assert data["Heun"]["num_model_calls"] == 9 and len(data["DDIM"]["timesteps"]) == 5
    finals, trajectories, _calls = client.predict(prompt="a red circle", negative_prompt="",
                                                  schedulers=["DDIM", "Heun"], steps=2, guidance_scale=5, seed=0,
                                                  api_name="/compare_schedulers")
    # the registry's note rides beside the name (issue 27)
    assert finals[1]["caption"] == "Heun - 3 model calls (2 model calls per step: compare it with others at half the steps)"
    assert finals[0]["caption"] == "DDIM - 2 model calls" and len(trajectories) == 2 * 6  # a row of 6 per sampler
    assert trajectories[6]["caption"].startswith("Heun - step 1/2, t = ")
    sample = client.predict(index=5, api_name="/shapes_sample")
    noised, latent, info, _plot = client.predict(image=handle_file(sample), timestep=500, seed=0, api_name="/forward_noise")
    assert "alpha_bar" in info and pixels(noised).shape[2] == 3 and os.path.exists(latent)


@pytest.mark.parametrize(
    "override, expected",
    [
        (dict(steps=0), "steps"),
        (dict(steps=10000), "steps"),
        (dict(guidance_scale="nan"), "nan"),
        (dict(prompt="x" * 20_000), "prompt"),
        (dict(scheduler="Nope 3M"), "Nope 3M"),
        (dict(lora="outline:9"), "lora[outline].weight"),
        (dict(lora="[not json"), "lora"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_inputs_get_clear_errors_and_the_server_stays_up(client, override, expected):
    with pytest.raises(Exception) as excinfo:
        client.predict(**(BASE | override), preview_every=0, api_name="/generate")
    message = str(excinfo.value)
    assert expected in message or ("minimum" in message or "maximum" in message or "not in" in message), message
    if expected in ("prompt", "lora[outline].weight"):  # our own checks: field and range named
        assert expected in message and ("at most" in message or "in [" in message), message
    image = client.predict(**BASE, preview_every=0, api_name="/generate")[2]
    assert pixels(image).shape == (16, 16, 3)


def test_nan_guidance_gets_a_clear_error(client, server):
    """gradio_client cannot encode NaN (JSON has none), but a raw HTTP client can send the literal."""
    names = [p["parameter_name"] for p in client.view_api(print_info=False, return_format="dict")
             ["named_endpoints"]["/generate"]["parameters"]]
    values = BASE | dict(guidance_scale=float("nan"), randomize_seed=False, width=16, height=16, num_images=1,
                         guidance_method="cfg", guidance_rescale=0.0, guidance_schedule="constant",
                         guidance_interval_start=0.0, guidance_interval_end=1.0, apg_momentum=-0.5,
                         apg_norm_threshold=15.0, apg_eta=0.0, cfg_zero_init_steps=1, perp_neg_scale=1.0,
                         timestep_spacing="model default", sigmas="default", preview_every=0,
                         preview_decoder="linear", lora="", classifier_scale=8.0)
    body = json.dumps({"data": [values[n] for n in names]})  # json.dumps writes NaN
    event = httpx.post(server + "gradio_api/call/generate", content=body,
                       headers={"content-type": "application/json"}).json()["event_id"]
    stream = httpx.get(server + f"gradio_api/call/generate/{event}", timeout=60).text
    assert "event: error" in stream and "guidance_scale=nan is not allowed: a finite number in [0, 30]" in stream
    assert client.predict(**BASE, preview_every=0, api_name="/generate")[5].startswith("Done")


def test_concurrent_clients_get_the_image_they_would_get_alone(server):
    settings = [
        dict(BASE, seed=1),
        dict(BASE, seed=2, scheduler="Euler a"),
        dict(BASE, seed=3, guidance_scale=1.0),
        dict(BASE, seed=4, scheduler="DPM++ 2M Karras", guidance_scale=9.0),
    ]

    def run(kwargs):
        return pixels(Client(server, verbose=False).predict(**kwargs, preview_every=1, api_name="/generate")[2])

    alone = [run(s) for s in settings]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, settings))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(alone[0], alone[1]), "different settings should give different images"
