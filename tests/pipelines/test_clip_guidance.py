"""CLIP guidance on the predicted x0 (issue 15, point 3), with a tiny random CLIP built in code
(testkit/tiny.py) on tiny seeded SD components: preprocessing parity with CLIPImageProcessor, the
gradient's sign, s = 0 bit for bit, the guide chosen per model, refusals, loading from a folder."""
import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import TracingStableDiffusionPipeline
from pipelines.classifier import NoiseAwareClassifier
from pipelines.guidance import GuidanceConfig
from pipelines.guidance_gradient import ClipGuide, clip_gradient, vae_decoder
from pipelines.prediction import predicted_x0
from pipelines.schedulers import SCHEDULERS, EvalPoint
from testkit.tiny import make_tiny_clip_guide, make_tiny_components



def _pipe(prediction_type="v_prediction", zero_snr=True, clip=True):
    pipe = TracingStableDiffusionPipeline(**make_tiny_components(prediction_type=prediction_type, zero_snr=zero_snr))
    pipe.set_progress_bar_config(disable=True)
    if clip:
        pipe.clip_guide = make_tiny_clip_guide()
    return pipe


@pytest.fixture(scope="module")
def clip_pipe():
    return _pipe()


def _run(pipe, prompt, scheduler=None, steps=4, **kw):
    return pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(7), output_type="latent",
                scheduler=scheduler, **kw).images


def _cg(scale):
    return GuidanceConfig(method="classifier", classifier_scale=scale)


# --------------------------------------------------------------------------- the guide itself


@pytest.mark.parametrize("height,width", [(16, 16), (24, 20), (20, 31)])
def test_preprocess_matches_clip_image_processor(height, width):
    """The torch preprocessing (resize shortest side, centre crop, normalize) equals transformers'
    CLIPImageProcessor up to its uint8 rounding (1/255/std ~ 0.015)."""
    from transformers import CLIPImageProcessor

    guide = make_tiny_clip_guide(image_size=8)
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8))
    image = small.resize((width, height), Image.BILINEAR)  # smooth, so resampling filters agree
    processor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8},
                                   image_mean=guide.mean.flatten().tolist(), image_std=guide.std.flatten().tolist())
    expected = torch.as_tensor(processor(images=image, return_tensors="pt").pixel_values)
    pixels = torch.tensor(np.asarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    got = guide.preprocess(pixels)
    assert got.shape == expected.shape == (1, 3, 8, 8)
    assert (got - expected).abs().max() < 0.02


def test_text_and_image_embeddings_are_unit_vectors_in_one_space():
    guide = make_tiny_clip_guide()
    text = guide.text_embeds(["a red circle", "a blue square"])
    image = guide.image_embeds(torch.rand(3, 3, 16, 16) * 2 - 1)
    assert text.shape == (2, 8) and image.shape == (3, 8)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2)) and torch.allclose(image.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(text[0], text[1])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("alpha_bar", [0.2, 0.7])
def test_gradient_step_raises_clip_similarity(prediction_type, alpha_bar):
    """Sign check through UNet, VAE and CLIP: a small step of x_t along g raises
    cos(E_img(decode(x0_hat(x_t))), E_txt)."""
    pipe = _pipe(prediction_type=prediction_type, zero_snr=False)
    guide = pipe.clip_guide
    text = guide.text_embeds(["a red circle"] * 2)
    embeds = pipe.encode_prompt("", "cpu", 2, False)[0]
    point = EvalPoint(timestep=500.0, alpha_bar=alpha_bar, sigma=None, sigma_space=False)

    def x0_of(x):
        return predicted_x0(pipe.unet(x, 500, encoder_hidden_states=embeds, return_dict=False)[0], x, point,
                            prediction_type)

    decode = vae_decoder(pipe.vae)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    grad, before = clip_gradient(guide, decode, x0_of, x, text)
    assert grad.shape == x.shape and grad.abs().sum() > 0
    with torch.no_grad():
        after = guide.similarity(decode(x0_of(x + 1e-2 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1))), text)
    assert (after > before).all()


# --------------------------------------------------------------------------- in the pipeline


@pytest.mark.parametrize("scheduler", [None] + list(SCHEDULERS))
def test_scale_zero_equals_unconditional_bit_for_bit(clip_pipe, scheduler):
    """CLIP-guided CG at s = 0 is the empty-prompt run exactly; s > 0 changes it and stays finite
    (every registered scheduler, v-prediction at zero terminal SNR: the sigma-space and VP paths)."""
    uncond = _run(clip_pipe, "", scheduler, guidance_scale=1.0)
    zero = _run(clip_pipe, "a red circle", scheduler, guidance=_cg(0.0))
    assert torch.equal(uncond, zero)
    guided = _run(clip_pipe, "a red circle", scheduler, guidance=_cg(200.0))
    assert torch.isfinite(guided).all()
    assert not torch.equal(guided, uncond)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("scheduler", ["DDIM", "Euler", "DPM++ 2M"])
def test_guidance_raises_the_final_images_clip_similarity(prediction_type, scheduler):
    """End to end: the decoded images' cosine with the prompt rises with s (4 seeds, 8 steps).
    v-prediction at zero terminal SNR with Euler / DPM++ also checks CLIP_MIN_ALPHA_BAR: without it
    the first step's 1 / sqrt(alpha_bar) = 4096 saturates the image and s stops mattering."""
    zero_snr = prediction_type == "v_prediction"
    pipe = _pipe(prediction_type=prediction_type, zero_snr=zero_snr)
    text = pipe.clip_guide.text_embeds(["a red circle"]).expand(4, -1)
    decode = vae_decoder(pipe.vae)
    means = []
    for s in (0.0, 20.0, 100.0):
        latents = pipe(["a red circle"] * 4, num_inference_steps=8, output_type="latent", scheduler=scheduler,
                       guidance=_cg(s), generator=[torch.Generator().manual_seed(i) for i in range(4)]).images
        with torch.no_grad():
            means.append(pipe.clip_guide.similarity(decode(latents), text).mean().item())
    assert means[1] > means[0] + 0.1 and means[2] > means[1] + 0.01, means


def test_epsilon_model_too():
    pipe = _pipe(prediction_type="epsilon", zero_snr=False)
    for scheduler in ("DDIM", "Euler", "DPM++ 2M"):
        uncond = _run(pipe, "", scheduler, guidance_scale=1.0)
        assert torch.equal(uncond, _run(pipe, "a red circle", scheduler, guidance=_cg(0.0)))
        assert not torch.equal(uncond, _run(pipe, "a red circle", scheduler, guidance=_cg(200.0)))


def test_classifier_plus_cfg_at_zero_equals_cfg(clip_pipe):
    cfg = _run(clip_pipe, "a red circle", guidance_scale=4.0)
    both = _run(clip_pipe, "a red circle", guidance_scale=4.0, guidance=GuidanceConfig(method="classifier+cfg",
                                                                                         classifier_scale=0.0))
    assert torch.equal(cfg, both)
    assert not torch.equal(cfg, _run(clip_pipe, "a red circle", guidance_scale=4.0,
                                     guidance=GuidanceConfig(method="classifier+cfg", classifier_scale=200.0)))


def test_guided_prediction_moves_eps_by_minus_s_b_g(clip_pipe):
    """The step's guided prediction is CFG plus the score term: its epsilon moved by exactly
    -s b g from the CFG one (v-prediction converted by output_shift_from_eps), g the recorded
    CLIP gradient."""
    s, w = 50.0, 3.0
    out = clip_pipe("a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(7),
                    output_type="latent", record="full", guidance_scale=w, scheduler="DDIM",
                    guidance=GuidanceConfig(method="classifier+cfg", classifier_scale=s))
    for r in out.trace[1:]:
        assert 0 < r.alpha_bar < 1 and r.guidance_method == "classifier+cfg"
        cfg_eps = r.eps_uncond + w * (r.eps_cond - r.eps_uncond)
        grad = r.classifier["grad"]
        assert grad.abs().sum() > 0
        expected = -s * (1 - r.alpha_bar) ** 0.5 * grad
        assert torch.allclose(r.eps_guided - cfg_eps, expected, atol=1e-4 * (1 + expected.abs().max()))


def test_records_carry_the_clip_readout(clip_pipe):
    out = clip_pipe(["a red circle", "a blue square"], num_inference_steps=3, output_type="latent", record="light",
                    guidance=_cg(5.0), generator=[torch.Generator().manual_seed(i) for i in range(2)])
    readout = out.trace[1].classifier
    assert readout["clip_model"] == "tiny-random-clip"
    assert len(readout["clip_similarity"]) == 2 and all(-1 <= c <= 1 for c in readout["clip_similarity"])
    assert readout["grad"].shape == (2, 4, 8, 8) and readout["grad"].abs().sum() > 0


def test_trained_classifier_is_preferred_over_clip():
    pipe = _pipe()
    torch.manual_seed(0)
    pipe.classifier = NoiseAwareClassifier(sample_size=8).eval().requires_grad_(False)
    out = pipe("a red circle", num_inference_steps=2, output_type="latent", record="light", guidance=_cg(1.0))
    assert "log_prob" in out.trace[1].classifier and "clip_similarity" not in out.trace[1].classifier


def test_clip_guides_prompts_the_classifier_cannot_read(clip_pipe):
    """The shapes-world parser is the classifier's; CLIP takes any non-empty prompt."""
    assert torch.isfinite(_run(clip_pipe, "a photo of a cat", guidance=_cg(10.0))).all()


def test_refusals_name_what_is_missing(clip_pipe):
    bare = _pipe(clip=False)
    with pytest.raises(ValueError) as info:
        _run(bare, "a red circle", guidance=_cg(1.0))
    message = str(info.value)
    for part in ("'classifier'", "pipe.classifier is None", "pipe.clip_guide is None", "--clip-guidance-model",
                 "DIFFUSION_LAB_CLIP_GUIDANCE_MODEL", "openai/clip-vit-base-patch32", "method 'cfg'"):
        assert part in message
    with pytest.raises(ValueError, match="needs a noise-aware classifier or a CLIP guide"):
        _run(bare, "a red circle", guidance=GuidanceConfig(method="classifier+cfg"), guidance_scale=3.0)
    with pytest.raises(ValueError, match=r"prompt='  ' is empty.*tiny-random-clip"):
        _run(clip_pipe, "  ", guidance=_cg(1.0))
    with pytest.raises(ValueError, match="prompt_embeds alone"):
        clip_pipe(prompt_embeds=torch.zeros(1, 16, 16), num_inference_steps=2, output_type="latent", guidance=_cg(1.0))


def test_from_pretrained_reads_a_local_folder(tmp_path):
    """ClipGuide.from_pretrained on a saved checkpoint folder (no network): same embeddings."""
    from transformers import CLIPImageProcessor

    from transformers import CLIPConfig, CLIPModel

    guide = make_tiny_clip_guide(image_size=8)
    # a published CLIP checkpoint is a CLIPModel folder: build one from both towers' weights
    config = CLIPConfig(text_config=guide.text.config.to_dict(), vision_config=guide.vision.config.to_dict(),
                        projection_dim=8)
    model = CLIPModel(config)
    model.vision_model.load_state_dict(guide.vision.vision_model.state_dict())
    model.visual_projection.load_state_dict(guide.vision.visual_projection.state_dict())
    model.text_model.load_state_dict(guide.text.text_model.state_dict())
    model.text_projection.load_state_dict(guide.text.text_projection.state_dict())
    folder = tmp_path / "clip"
    model.save_pretrained(folder)
    guide.tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}).save_pretrained(folder)
    loaded = ClipGuide.from_pretrained(str(folder))
    assert loaded.image_size == 8 and loaded.model_id == str(folder)
    tensors = [*loaded.vision.parameters(), *loaded.vision.buffers(), *loaded.text.parameters(), *loaded.text.buffers()]
    assert all(t.device.type == "cpu" for t in tensors)  # nothing left on the meta device
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(loaded.text_embeds(["a red circle"]), guide.text_embeds(["a red circle"]), atol=1e-5)
    assert torch.allclose(loaded.image_embeds(images), guide.image_embeds(images), atol=1e-5)


# --------------------------------------------------------------------------- the app: flag, engine, API


def test_app_flag_and_its_env_var(monkeypatch):
    import app
    from pipelines.guidance_gradient import CLIP_GUIDANCE_ENV

    assert app.CLIP_GUIDANCE_ENV == CLIP_GUIDANCE_ENV
    monkeypatch.delenv(CLIP_GUIDANCE_ENV, raising=False)
    assert app.parse_args([]).clip_guidance_model is None
    assert app.parse_args(["--clip-guidance-model", "some/clip"]).clip_guidance_model == "some/clip"
    monkeypatch.setenv(CLIP_GUIDANCE_ENV, "env/clip")
    assert app.parse_args([]).clip_guidance_model == "env/clip"
    assert app.parse_args(["--clip-guidance-model", "none"]).clip_guidance_model == "none"


@pytest.mark.parametrize("requested, model_id, device, expected", [
    (None, "sd15", "cuda", "openai/clip-vit-base-patch32"),  # the Space: a Hub model on CUDA
    (None, "sd15", "cpu", None),
    (None, "tiny-shapes", "cuda", None),  # ships a trained classifier
    ("none", "sd15", "cuda", None),
    ("off", "sd15", "cuda", None),
    ("my/clip", "tiny-shapes", "cpu", "my/clip"),
])
def test_choose_clip_guide(requested, model_id, device, expected):
    from labapp.engine import choose_clip_guide

    assert choose_clip_guide(requested, model_id, device) == expected


def test_a_clip_model_that_cannot_load_leaves_the_app_without_it(caplog):
    from labapp.engine import _load_clip_guide

    with caplog.at_level("WARNING", logger="diffusion_lab"):
        assert _load_clip_guide("/no/such/clip-folder", "cpu", torch.float32) is None
    assert "clip_guidance_model='/no/such/clip-folder' could not be loaded" in caplog.text
    assert _load_clip_guide(None, "cpu", torch.float32) is None


@pytest.fixture(scope="module")
def clip_client():
    from gradio_client import Client

    from labapp import engine_from_pipe
    from testkit.app_server import launch

    torch.set_num_threads(1)
    engine = engine_from_pipe(_pipe(prediction_type="epsilon", zero_snr=False), "tiny-clip", "test components")
    demo, url = launch(engine, concurrency_limit=1)
    yield engine, Client(url, verbose=False)
    demo.close()


API_BASE = dict(negative_prompt="", scheduler="DDIM", steps=4, seed=11, preview_every=0)


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_generate_with_clip_guidance_through_the_api(clip_client):
    from labapp.engine import job_branches
    from pipelines.guidance import GuidanceConfig
    from pipelines.request import GenerationRequest

    engine, client = clip_client
    uncond = client.predict(prompt="", guidance_scale=1.0, **API_BASE, api_name="/generate")
    zero = client.predict(prompt="a red circle", guidance_scale=1.0, guidance_method="classifier",
                          classifier_scale=0.0, **API_BASE, api_name="/generate")
    guided = client.predict(prompt="a red circle", guidance_scale=1.0, guidance_method="classifier",
                            classifier_scale=100.0, **API_BASE, api_name="/generate")
    assert np.array_equal(_pixels(uncond[2]), _pixels(zero[2]))
    assert not np.array_equal(_pixels(uncond[2]), _pixels(guided[2]))
    assert guided[5].startswith("Done")
    settings = GenerationRequest(prompt="a red circle", guidance_scale=1.0,
                                 guidance=GuidanceConfig(method="classifier", interval_space="fraction"))
    assert job_branches(settings) == 2  # the empty-prompt call + CLIP's own UNet call for x0


def test_generate_refused_without_classifier_or_clip(clip_client):
    engine, client = clip_client
    guide, engine.pipe.clip_guide = engine.pipe.clip_guide, None
    try:
        with pytest.raises(Exception, match="--clip-guidance-model"):
            client.predict(prompt="a red circle", guidance_scale=1.0, guidance_method="classifier",
                           classifier_scale=1.0, **API_BASE, api_name="/generate")
    finally:
        engine.pipe.clip_guide = guide
    assert client.predict(prompt="a red circle", guidance_scale=1.0, **API_BASE, api_name="/generate")[5].startswith("Done")
