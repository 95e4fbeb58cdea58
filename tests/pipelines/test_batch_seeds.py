"""Per-image seeds (issue 23): a batch of N images seeded S is the N one-image runs seeded S, S+1, ...,
so one image of a batch can be made again alone, with a deterministic and a stochastic sampler."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from labapp.metadata import PNG_A1111_KEY, read_settings, with_settings
from pipelines import TracingStableDiffusionPipeline
from pipelines.fields import MAX_SEED
from pipelines.request import GenerationRequest, RequestLimits
from testkit.tiny import make_tiny_components

LIMITS = RequestLimits(model="tiny-test", native_size=32, size_multiple=4, presets=())


@pytest.fixture(scope="module")
def pipe():
    return TracingStableDiffusionPipeline(**make_tiny_components())


def request(**changes) -> GenerationRequest:
    form = dict(prompt="a red circle", negative_prompt="", scheduler="DDIM", steps=4, guidance_scale=3.0, seed=41)
    return GenerationRequest.from_form(LIMITS, **(form | changes))


def run(pipe, settings: GenerationRequest) -> np.ndarray:
    return pipe(**settings.call_kwargs("cpu"), output_type="np").images


def test_image_seeds_count_up_from_the_seed_and_wrap():
    assert request(num_images=3).image_seeds == [41, 42, 43]
    assert request(seed=MAX_SEED, num_images=2).image_seeds == [MAX_SEED, 0]
    two_prompts = request(num_images=2).replace(prompt=["a", "b"])
    assert two_prompts.image_seeds == [41, 42, 43, 44]  # prompts x images, diffusers' order
    generators = two_prompts.call_kwargs("cpu")["generator"]
    assert [g.initial_seed() for g in generators] == [41, 42, 43, 44]
    assert request().call_kwargs("cpu")["generator"].initial_seed() == 41  # one image: one generator


@pytest.mark.parametrize("scheduler", ["DDIM", "Euler a"])  # Euler a adds fresh noise at every step
def test_each_image_of_a_batch_is_made_again_alone_from_its_own_seed(pipe, scheduler):
    batch = run(pipe, request(scheduler=scheduler, num_images=3))
    for i, seed in enumerate(request(num_images=3).image_seeds):
        alone = run(pipe, request(scheduler=scheduler, seed=seed))[0]
        np.testing.assert_allclose(alone, batch[i], atol=1e-5)
    # and the images differ from each other (a shared generator would not make this test fail, this does)
    assert np.abs(batch[0] - batch[1]).mean() > 1e-3


def test_each_png_carries_its_own_seed():
    settings = request(num_images=3)
    image = with_settings(Image.new("RGB", (8, 8)), settings, 2)
    doc = read_settings(image)
    assert (doc["seed"], doc["image_index"], doc["image_seed"]) == (41, 2, 43)
    assert "Seed: 43," in image.info[PNG_A1111_KEY]
