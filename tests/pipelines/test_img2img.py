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
from testkit.tiny import make_tiny_components

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
    def gens():
        return [torch.Generator().manual_seed(i) for i in range(4)]

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
    z0 = encode_image(ours, ours.image_processor.preprocess(image), sample=False).detach()
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


# ------------------------------------------------------------------------------ the endpoint

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    from testkit.app_server import launch, tiny_engine

    torch.set_num_threads(1)
    demo, url = launch(tiny_engine(), concurrency_limit=1)
    yield Client(url, verbose=False)
    demo.close()


def test_img2img_endpoint_runs_and_reports_its_steps(client, tmp_path, image):
    from gradio_client import handle_file

    path = tmp_path / "in.png"
    image.save(path)
    out, status = client.predict(image=handle_file(str(path)), prompt="a red circle", strength=0.5, steps=6,
                           seed=1, api_name="/img2img")
    assert PIL.Image.open(out).size[0] >= 16
    assert "strength 0.5: 3 of 6 steps" in status and "3 model calls" in status


@pytest.mark.parametrize("override, expected", [
    (dict(strength=0), "strength=0"),
    (dict(strength=1.5), "strength=1.5"),  # our check, naming the field (raw inputs since issue 13)
    (dict(strength=0.05, steps=10), "strength=0.05"),
])
def test_img2img_endpoint_names_bad_input(client, tmp_path, image, override, expected):
    from gradio_client import handle_file

    path = tmp_path / "in.png"
    image.save(path)
    kwargs = dict(image=handle_file(str(path)), prompt="a", strength=0.5, steps=4) | override
    with pytest.raises(Exception, match=expected):
        client.predict(**kwargs, api_name="/img2img")
    assert "3 of 6 steps" in client.predict(image=handle_file(str(path)), strength=0.5, steps=6,
                                            api_name="/img2img")[1]  # still serving


@pytest.mark.parametrize("strength, steps", [(0, 10), (1.5, 10), (float("nan"), 10), (0.05, 10)])
def test_handler_strength_check_names_the_field(strength, steps):
    import gradio as gr

    from labapp.img2img import check_image, check_strength

    with pytest.raises(gr.Error, match="strength="):
        check_strength(strength, steps)
    assert check_strength(0.1, 10) == 0.1
    with pytest.raises(gr.Error, match=r"image='2x2' is not allowed: an image at least 8x8 px"):
        check_image("image", PIL.Image.new("RGB", (2, 2)), 8)


# ------------------------------------------------------------------------------ the schedule flaw


def test_terminal_alpha_bars_and_the_leak():
    from pipelines.forward import terminal_alpha_bars, terminal_snr_report

    ab = terminal_alpha_bars()
    assert ab["default"] ** 0.5 == pytest.approx(0.0683, abs=1e-4)  # SD 1.5: sqrt(alpha_bar_T)
    assert ab["zero_snr"] == 0.0
    x0 = torch.full((1, 3, 32, 32), -0.9)
    x0[..., :16, :16] = 0.9  # a bright top-left quarter on a dark ground: strong layout
    r = terminal_snr_report(x0, seeds=256, block=8)
    sd, zero = r["default"], r["zero_snr"]
    assert sd["corr_low_mean"] > 0.3 and abs(zero["corr_low_mean"]) < 0.05
    assert torch.equal(zero["residual"], torch.zeros_like(zero["residual"]))
    with pytest.raises(ValueError, match="block 5 must divide"):
        terminal_snr_report(x0, block=5)


def test_terminal_snr_endpoint(client, tmp_path, image):
    from gradio_client import handle_file

    path = tmp_path / "in.png"
    image.resize((64, 64)).save(path)
    gallery, text = client.predict(image=handle_file(str(path)), seeds=64, block="8", api_name="/terminal_snr")
    assert len(gallery) == 6 and "alpha_bar_T = 0.00466" in text and "over 64 noise seeds" in text
    with pytest.raises(Exception, match="seeds=5"):  # our check names the field (raw inputs since issue 13)
        client.predict(image=handle_file(str(path)), seeds=5, api_name="/terminal_snr")


def test_terminal_snr_handler_names_bad_fields(image):
    import gradio as gr

    from labapp.img2img import terminal_snr

    with pytest.raises(gr.Error, match="seeds=5"):
        terminal_snr(image, seeds=5)
    with pytest.raises(gr.Error, match="block='3'"):
        terminal_snr(image, block=3)
    with pytest.raises(gr.Error, match="image=None"):
        terminal_snr(None)


def test_img2img_trace_loads_into_the_explorer(image):
    """The handler's trace drives the explorer like a Generate run's: slider range, x_t / x0 views."""
    from labapp import engine as eng
    from labapp import trace_views
    from labapp.img2img import img2img as img2img_handler
    from testkit.app_server import tiny_engine

    eng.install(tiny_engine())
    out, status, trace = img2img_handler(image, "a blue circle", "", 0.5, "Euler a", 8, 5.0, 3)
    assert "4 of 8 steps" in status and len(trace.records) == 4 and trace.settings["strength"] == 0.5
    slider, _cfg = trace_views.step_slider_updates(trace)
    assert slider["maximum"] == 4  # 1-based steps (issue 14)
    x_t, x0, _plot, info = trace_views.explore_step(trace, 4, "vae")
    assert x_t is not None and x0 is not None and "step 4 / 4" in info
