"""img2img (SDEdit) on iter_steps' one loop: parity with diffusers' StableDiffusionImg2ImgPipeline
(tiny seeded components, CPU float32, <= 1e-5) for every registry scheduler, the trace, the cost,
bad input; the forward-process helpers; the /img2img endpoint through gradio_client."""
import copy

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline

from pipelines import TracingStableDiffusionPipeline, make_scheduler, scheduler_names
from pipelines.forward import encode_image, q_sample, snr
from pipelines.img2img import check_strength, img2img
from tests.tiny import make_tiny_components

TOL = 1e-5


@pytest.fixture(scope="module")
def components():
    return make_tiny_components("epsilon")


@pytest.fixture(scope="module")
def image():
    return PIL.Image.fromarray((np.random.RandomState(0).rand(16, 16, 3) * 255).astype("uint8"))


_TEMPLATES = {}


def _pipes(components, name):
    if name not in _TEMPLATES:
        _TEMPLATES[name] = make_scheduler(name, components["scheduler"].config)
    ref = StableDiffusionImg2ImgPipeline(**{**components, "scheduler": copy.deepcopy(_TEMPLATES[name])},
                                         requires_safety_checker=False)
    ours = TracingStableDiffusionPipeline(**{**components, "scheduler": copy.deepcopy(_TEMPLATES[name])})
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    return ours, ref


@pytest.mark.parametrize("name", scheduler_names())
def test_img2img_matches_diffusers(components, image, name):
    ours, ref = _pipes(components, name)
    kw = dict(prompt="a red circle", negative_prompt="blue", num_inference_steps=4, guidance_scale=5.0,
              output_type="np")
    a = ref(image=image, strength=0.6, generator=torch.Generator().manual_seed(0), **kw).images
    out = img2img(ours, image, 0.6, generator=torch.Generator().manual_seed(0), record="light", **kw)
    assert np.abs(a - out.images).max() <= TOL
    # the trace covers the grid's tail only: int(0.6 * 4) = 2 steps, at the scheduler's timesteps
    assert len(out.trace) == 2 and [r.step for r in out.trace] == [0, 1]
    assert all(r.num_steps == 2 for r in out.trace)
    tail = [float(t) for t in ref.scheduler.timesteps[2 * ref.scheduler.order:]]
    assert out.trace[0].timestep == pytest.approx(tail[0])  # starts at t ~ strength * T, not at T
    if name != "PNDM":  # PLMS' first step spans two grid points (its correction call is at the next t)
        assert [r.timestep for r in out.trace] == pytest.approx(tail[:: ref.scheduler.order])


def test_img2img_batch_and_generator_list(components, image):
    ours, ref = _pipes(components, "Euler a")
    kw = dict(prompt=["a red circle", "a blue dog"], num_images_per_prompt=2, num_inference_steps=3,
              guidance_scale=3.0, output_type="np")
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    a = ref(image=image, strength=0.9, generator=gens(), **kw).images
    b = img2img(ours, image, 0.9, generator=gens(), **kw).images
    assert a.shape == b.shape == (4, 16, 16, 3)
    assert np.abs(a - b).max() <= TOL


def test_strength_one_is_a_full_run_and_cost_follows_strength(components, image):
    ours, _ = _pipes(components, "DDIM")
    calls = {}
    for s in (0.25, 0.5, 1.0):
        out = img2img(ours, image, s, prompt="a red circle", num_inference_steps=8, guidance_scale=1.0,
                      generator=torch.Generator().manual_seed(0), record="light", output_type="np")
        calls[s] = out.trace[-1].model_calls
    assert calls == {0.25: 2, 0.5: 4, 1.0: 8}


def test_low_strength_keeps_the_image_high_strength_departs(components, image):
    """In latent space (the tiny VAE is untrained): the result's distance to E(image) grows with strength."""
    ours, _ = _pipes(components, "DDIM")
    z0 = encode_image(ours, ours.image_processor.preprocess(image), sample=False)
    err = {}
    for s in (0.1, 1.0):
        out = img2img(ours, image, s, prompt="a red circle", num_inference_steps=20, guidance_scale=1.0,
                      generator=torch.Generator().manual_seed(0), output_type="latent")
        err[s] = float((out.images - z0).abs().mean())
    assert err[0.1] < 0.5 * err[1.0]


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, float("nan"), "0.5", True])
def test_bad_strength_is_named(components, image, strength):
    ours, _ = _pipes(components, "DDIM")
    with pytest.raises(ValueError, match="strength"):
        img2img(ours, image, strength, prompt="a", num_inference_steps=4)


def test_strength_too_small_for_the_steps(components, image):
    ours, _ = _pipes(components, "DDIM")
    with pytest.raises(ValueError, match=r"strength 0.1 x 4 steps leaves no step"):
        img2img(ours, image, 0.1, prompt="a", num_inference_steps=4)
    assert check_strength(0.25, 4) == 0.25


def test_tiny_image_is_refused(components):
    ours, _ = _pipes(components, "DDIM")
    with pytest.raises(ValueError, match="image size 1x1 is too small"):
        img2img(ours, PIL.Image.new("RGB", (1, 1)), 0.5, prompt="a")
    with pytest.raises(ValueError, match="image is required"):
        img2img(ours, None, 0.5, prompt="a")


def test_q_sample_is_the_ddpm_marginal(components):
    sched = make_scheduler("DDIM", components["scheduler"].config)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ab = sched.alphas_cumprod[500]
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    assert torch.allclose(q_sample(sched, x0, eps, 500), expected, atol=1e-6)
    s = snr([0.0, 0.5, 1.0])
    assert s[0] == 0 and s[1] == pytest.approx(1.0) and np.isinf(s[2])
