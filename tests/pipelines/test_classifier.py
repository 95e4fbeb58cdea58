"""Classifier guidance: the formulas on hand-made tensors, the caption parser, the pipeline hook on
tiny seeded components (parity at s = 0 with every registered scheduler, clear refusals)."""
import pytest
import torch

from pipelines import TracingStableDiffusionPipeline
from pipelines.classifier import (HEADS, NoiseAwareClassifier, load_classifier, parse_prompt, save_classifier,
                                  target_indices, target_log_prob)
from pipelines.guidance import (GuidanceConfig, classifier_gradient, classifier_guided_eps, output_shift_from_eps)
from pipelines.prediction import predicted_eps
from pipelines.schedulers import SCHEDULERS, EvalPoint
from testkit.tiny import make_tiny_components


# --------------------------------------------------------------------------- formulas


def test_classifier_guided_eps_is_eps_minus_s_b_g():
    eps = torch.tensor([[[[0.5]]]])
    grad = torch.tensor([[[[2.0]]]])
    out = classifier_guided_eps(eps, grad, scale=3.0, alpha_bar=0.64)  # b = 0.6
    assert torch.allclose(out, torch.tensor([[[[0.5 - 3.0 * 0.6 * 2.0]]]]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sigma_space", [False, True])
def test_output_shift_moves_implied_eps_by_delta(prediction_type, sigma_space):
    """The shift in the model's own output space changes the epsilon that prediction.py reads
    from it by exactly delta, for VP and sigma-space latents alike."""
    g = torch.Generator().manual_seed(0)
    alpha_bar = 0.3
    sigma = ((1 - alpha_bar) / alpha_bar) ** 0.5
    point = EvalPoint(timestep=500.0, alpha_bar=alpha_bar, sigma=sigma if sigma_space else None, sigma_space=sigma_space)
    sample = torch.randn(2, 4, 3, 3, generator=g) * (1 / point.input_scale)
    out = torch.randn(2, 4, 3, 3, generator=g)
    delta = torch.randn(2, 4, 3, 3, generator=g)
    shifted = out + output_shift_from_eps(delta, alpha_bar, prediction_type)
    moved = predicted_eps(shifted, sample, point, prediction_type) - predicted_eps(out, sample, point, prediction_type)
    assert torch.allclose(moved, delta, atol=1e-5)


def test_gradient_ascent_raises_log_prob():
    """Sign check on a random network: a small step along g raises log p(y | x_t)."""
    torch.manual_seed(0)
    clf = NoiseAwareClassifier().eval().requires_grad_(False)
    x = torch.randn(3, 4, 8, 8)
    targets = torch.tensor([target_indices({"color": "red", "shape": "circle"})] * 3)
    grad, logp, _ = classifier_gradient(clf, x, 400.0, targets)
    with torch.no_grad():
        after = target_log_prob(clf(x + 1e-2 * grad, torch.full((3,), 400.0)), targets)
    assert (after > logp).all()


def test_target_log_prob_sums_only_named_attributes():
    logits = {name: torch.zeros(1, len(classes)) for name, classes in HEADS.items()}
    only_color = torch.tensor([target_indices({"color": "blue"})])
    assert torch.allclose(target_log_prob(logits, only_color), torch.log(torch.tensor([1 / 6])))
    color_and_size = torch.tensor([target_indices({"color": "blue", "size": "small"})])
    assert torch.allclose(target_log_prob(logits, color_and_size), torch.log(torch.tensor([1 / 12])))


def test_save_load_roundtrip_fp16(tmp_path):
    torch.manual_seed(1)
    clf = NoiseAwareClassifier()
    save_classifier(clf, str(tmp_path))
    back = load_classifier(str(tmp_path))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0])
    for name in HEADS:
        assert torch.allclose(clf(x, t)[name], back(x, t)[name], atol=2e-2)
    with pytest.raises(ValueError, match="no config.json"):
        load_classifier(str(tmp_path / "missing"))


# --------------------------------------------------------------------------- caption parser


@pytest.mark.parametrize("prompt,expected", [
    ("a large red circle in the top left", {"size": "large", "color": "red", "shape": "circle", "v": "top", "h": "left"}),
    ("blue square", {"color": "blue", "shape": "square"}),
    ("a shape on the right", {"h": "right"}),
    ("a green shape in the center", {"color": "green", "h": "center", "v": "middle"}),
    ("a triangle in the middle", {"shape": "triangle", "v": "middle"}),
    ("outline style, a purple triangle", {"color": "purple", "shape": "triangle"}),
    ("", {}),
])
def test_parse_prompt(prompt, expected):
    assert parse_prompt(prompt) == expected


def test_parse_prompt_refuses_two_values():
    with pytest.raises(ValueError, match="names two colors"):
        parse_prompt("a red and blue circle")


# --------------------------------------------------------------------------- the pipeline hook


@pytest.fixture(scope="module")
def tiny_pipe():
    pipe = TracingStableDiffusionPipeline(**make_tiny_components(prediction_type="v_prediction", zero_snr=True))
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    pipe.classifier = NoiseAwareClassifier(sample_size=8).eval().requires_grad_(False)
    return pipe


def _run(pipe, prompt, scheduler=None, **kw):
    return pipe(prompt, num_inference_steps=4, generator=torch.Generator().manual_seed(7), output_type="latent",
                scheduler=scheduler, **kw).images


@pytest.mark.parametrize("scheduler", [None] + list(SCHEDULERS))
def test_scale_zero_equals_unconditional_bit_for_bit(tiny_pipe, scheduler):
    """CG at s = 0 is the empty-prompt run exactly; a positive s changes it (every registered scheduler)."""
    uncond = _run(tiny_pipe, "", scheduler, guidance_scale=1.0)
    zero = _run(tiny_pipe, "a red circle", scheduler, guidance=GuidanceConfig(method="classifier", classifier_scale=0.0))
    assert torch.equal(uncond, zero)
    guided = _run(tiny_pipe, "a red circle", scheduler, guidance=GuidanceConfig(method="classifier", classifier_scale=50.0))
    assert torch.isfinite(guided).all()
    assert not torch.equal(guided, uncond)


def test_classifier_plus_cfg_at_zero_equals_cfg(tiny_pipe):
    cfg = _run(tiny_pipe, "a red circle", guidance_scale=4.0)
    both = _run(tiny_pipe, "a red circle", guidance_scale=4.0,
                guidance=GuidanceConfig(method="classifier+cfg", classifier_scale=0.0))
    assert torch.equal(cfg, both)


def test_records_carry_the_classifier_readout(tiny_pipe):
    out = tiny_pipe(["a red circle", "a small shape"], num_inference_steps=3, output_type="latent", record="light",
                    guidance=GuidanceConfig(method="classifier", classifier_scale=2.0),
                    generator=[torch.Generator().manual_seed(i) for i in range(2)])
    readout = out.trace[1].classifier
    assert len(readout["log_prob"]) == 2 and readout["grad"].shape == (2, 4, 8, 8)
    assert set(readout["probs"]) == {"shape", "color", "size"}
    assert all(0.0 <= p <= 1.0 for p in readout["probs"].values())
    assert out.trace[0].guidance_method == "classifier"


def test_refusals_are_clear(tiny_pipe):
    cg = GuidanceConfig(method="classifier", classifier_scale=1.0)
    with pytest.raises(ValueError, match="names no attribute"):
        _run(tiny_pipe, "a photo of a cat", guidance=cg)
    with pytest.raises(ValueError, match="prompt_embeds alone"):
        tiny_pipe(prompt_embeds=torch.zeros(1, 16, 16), num_inference_steps=2, output_type="latent", guidance=cg)
    with pytest.raises(ValueError, match="classifier_scale=-1"):
        GuidanceConfig(method="classifier", classifier_scale=-1.0)
    with pytest.raises(ValueError, match="classifier_scale=nan"):
        GuidanceConfig(method="classifier", classifier_scale=float("nan"))
    bare = TracingStableDiffusionPipeline(**make_tiny_components())
    bare.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="needs a noise-aware classifier"):
        _run(bare, "a red circle", guidance=cg)
