"""Drop-in parity with diffusers' StableDiffusionPipeline, and the step-record contract.

Tiny seeded components, CPU float32, 2-3 steps. Images must match diffusers to 1e-5.
clip_skip: stock diffusers 0.42.1 crashes on transformers 5 (no ``.text_model``), so its
reference is computed by hand (hidden_states[-(clip_skip + 1)] through final_layer_norm) and
handed to the stock pipeline as ``prompt_embeds``.
"""
import copy
from collections import Counter

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from pipelines import GuidanceConfig, StepRecord, TracingStableDiffusionPipeline, make_scheduler, scheduler_names
from pipelines.schedulers import SCHEDULERS
from testkit.tiny import make_tiny_components

TOL = 1e-5
HEIGHT = WIDTH = 16


@pytest.fixture(scope="module")
def eps_components():
    return make_tiny_components("epsilon")


@pytest.fixture(scope="module")
def v_components():
    return make_tiny_components("v_prediction", zero_snr=True)


_TEMPLATES = {}


def _scheduler(name, components):
    """Registry scheduler for these components; cached (DPM2's __init__ alone takes seconds)."""
    config = components["scheduler"].config
    key = (name, config.prediction_type, config.rescale_betas_zero_snr)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = make_scheduler(name, config)
    return copy.deepcopy(_TEMPLATES[key])


def _pipes(components, scheduler_name=None):
    comps = dict(components)
    if scheduler_name is not None:
        comps["scheduler"] = _scheduler(scheduler_name, components)
    ours = TracingStableDiffusionPipeline(**comps)
    ref = StableDiffusionPipeline(**comps, requires_safety_checker=False)
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    return ours, ref


def _run_both(ours, ref, ours_kwargs=None, ref_kwargs=None, **common):
    common.setdefault("num_inference_steps", 3)
    common.setdefault("height", HEIGHT)
    common.setdefault("width", WIDTH)
    common.setdefault("output_type", "np")
    a = ref(generator=torch.Generator().manual_seed(0), **common, **(ref_kwargs or {})).images
    out = ours(generator=torch.Generator().manual_seed(0), **common, **(ours_kwargs or {}))
    return a, out


SCHEDULER_CASES = {
    # CFG with a negative prompt per prompt, rescale, 2 prompts x 2 images
    "cfg": dict(prompt=["a red circle", "a blue dog"], negative_prompt=["green", "cat"], guidance_scale=5.0,
                guidance_rescale=0.5, num_images_per_prompt=2),
    "no-cfg": dict(prompt="a red circle", guidance_scale=1.0),
}


@pytest.mark.parametrize("case", list(SCHEDULER_CASES))
@pytest.mark.parametrize("name", scheduler_names())
def test_every_scheduler_matches_diffusers(eps_components, name, case):
    ours, ref = _pipes(eps_components, name)
    a, out = _run_both(ours, ref, ours_kwargs={"record": "light"}, **SCHEDULER_CASES[case])
    assert a.shape == out.images.shape
    assert np.abs(a - out.images).max() <= TOL
    assert len(out.trace) == out.trace[-1].num_steps == 3
    assert [r.step for r in out.trace] == [0, 1, 2]
    calls = [r.model_calls for r in out.trace]
    assert calls == sorted(calls) and calls[-1] == len(ref.scheduler.timesteps)  # every UNet call counted


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt="a red circle", guidance_scale=1.0),
        dict(prompt="a red circle", guidance_scale=0.5),
        dict(prompt="a red circle", guidance_scale=6.0, negative_prompt="blue square"),
        dict(prompt="a red circle", guidance_scale=6.0, guidance_rescale=0.7),
        dict(prompt=["a red circle", "a blue dog"], negative_prompt=["green", "cat"], guidance_scale=4.0,
             num_images_per_prompt=2),
        dict(prompt="a cat", guidance_scale=3.0, eta=0.7),
    ],
    ids=["scale1", "scale0.5", "negative", "rescale", "batch2x2", "ddim-eta"],
)
def test_call_arguments_match_diffusers(eps_components, kwargs):
    ours, ref = _pipes(eps_components)
    a, out = _run_both(ours, ref, **kwargs)
    assert a.shape == out.images.shape
    assert np.abs(a - out.images).max() <= TOL


def test_prompt_embeds_latents_and_custom_sigmas_match(eps_components):
    ours, ref = _pipes(eps_components, "Euler")
    pe, ne = ref.encode_prompt("a red circle", "cpu", 1, True, negative_prompt="dog")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    a, out = _run_both(ours, ref, prompt_embeds=pe, negative_prompt_embeds=ne, latents=latents,
                       guidance_scale=5.0, num_inference_steps=None, sigmas=[14.0, 3.0, 0.5])
    assert np.abs(a - out.images).max() <= TOL


@pytest.mark.parametrize("clip_skip", [1])
def test_clip_skip_matches_hand_reference(eps_components, clip_skip):
    ours, ref = _pipes(eps_components)
    tok, te = eps_components["tokenizer"], eps_components["text_encoder"]
    ids = tok(["a red circle"], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = te(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        hand = te.final_layer_norm(hidden)  # transformers 5 layout: no .text_model
        plain = te(ids)[0]
    assert not torch.allclose(hand, plain)  # the skip changes something, so the test can fail
    a = ref(prompt_embeds=hand, guidance_scale=5.0, num_inference_steps=3, height=HEIGHT, width=WIDTH,
            output_type="np", generator=torch.Generator().manual_seed(0)).images
    b = ours(prompt="a red circle", clip_skip=clip_skip, guidance_scale=5.0, num_inference_steps=3,
             height=HEIGHT, width=WIDTH, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert np.abs(a - b).max() <= TOL


@pytest.mark.parametrize("name", scheduler_names())
def test_v_prediction_matches_diffusers(v_components, name):
    """Zero-terminal-SNR v model (classes without the option get the rescaled betas as trained_betas)."""
    ours, ref = _pipes(v_components, name)
    a, out = _run_both(ours, ref, prompt="a blue square", negative_prompt="red", guidance_scale=5.0,
                       guidance_rescale=0.5, num_inference_steps=2, ours_kwargs={"record": "full"})
    assert np.isfinite(a).all() and np.abs(a - out.images).max() <= TOL
    r = out.trace[-1]
    assert r.eps_guided is not None and r.eps_cond is not None and r.x0_guided is not None


def test_v_model_record_is_in_epsilon_space(v_components):
    """eps = sqrt(ab) v + sqrt(1 - ab) x_vp is affine in v, so CFG on v is CFG on eps (no rescale)."""
    ours, _ = _pipes(v_components, "Euler")
    out = ours("a cat", num_inference_steps=2, guidance_scale=4.0, height=HEIGHT, width=WIDTH, record="full",
               output_type="latent", generator=torch.Generator().manual_seed(0))
    r = out.trace[1]
    torch.testing.assert_close(r.eps_guided, r.eps_uncond + 4.0 * (r.eps_cond - r.eps_uncond), atol=1e-5, rtol=1e-5)
    # and x0 = x_s - sigma eps in Euler's sigma space
    torch.testing.assert_close(r.x0_guided, r.x_t - r.sigma * r.eps_guided, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- x0 vs the schedulers' own


def _capture_step_outputs(monkeypatch, cls):
    captured = []
    original = cls.step

    def step(self, *args, **kwargs):
        kwargs["return_dict"] = True
        first = getattr(self, "state_in_first_order", True)
        out = original(self, *args, **kwargs)
        captured.append((first, getattr(out, "pred_original_sample", None)))
        return out.prev_sample, out

    monkeypatch.setattr(cls, "step", step)
    return captured


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", ["DDIM", "DDPM", "Euler", "Euler a", "Heun", "LMS", "DPM2", "DPM2 a"])
def test_x0_equals_pred_original_sample(monkeypatch, name, prediction):
    comps = make_tiny_components(prediction)
    comps["scheduler"] = _scheduler(name, comps)
    pipe = TracingStableDiffusionPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    captured = _capture_step_outputs(monkeypatch, SCHEDULERS[name].cls)
    out = pipe("a red circle", num_inference_steps=3, guidance_scale=5.0, height=HEIGHT, width=WIDTH,
               output_type="latent", record="light", generator=torch.Generator().manual_seed(0))
    firsts = [pred for first, pred in captured if first]
    assert len(firsts) == len(out.trace) == 3
    for record, pred in zip(out.trace, firsts):
        if pred is not None:  # DPM2's step() does not return one
            assert (record.x0_guided - pred).abs().max() <= TOL
    if name not in ("DPM2", "DPM2 a"):
        assert all(p is not None for p in firsts)


# ---------------------------------------------------------------- the record contract


def test_record_full_fields_and_live_delivery(eps_components):
    ours, _ = _pipes(eps_components)
    seen, begun = [], []

    def on_step_begin(i, n):
        begun.append((i, n))
        return {"style": 0.5 * i}

    out = ours("a red circle", num_inference_steps=3, guidance_scale=5.0, height=HEIGHT, width=WIDTH,
               record="full", step_callback=seen.append, on_step_begin=on_step_begin, preview_every=2,
               preview_targets=("x_t", "x0_guided", "x0_cond", "x0_uncond"), output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert begun == [(0, 3), (1, 3), (2, 3)]
    assert seen == out.trace and all(isinstance(r, StepRecord) for r in seen)
    r0 = out.trace[0]
    assert r0.adapters == {"style": 0.0} and out.trace[2].adapters == {"style": 1.0}
    for name in ("x_t", "eps_uncond", "eps_cond", "eps_guided", "x0_uncond", "x0_cond", "x0_guided"):
        t = getattr(r0, name)
        assert t.device.type == "cpu" and t.dtype == torch.float32 and t.shape == (1, 4, 8, 8), name
    torch.testing.assert_close(r0.eps_guided, r0.eps_uncond + 5.0 * (r0.eps_cond - r0.eps_uncond))
    # x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) for DDIM's VP latents
    ab = r0.alpha_bar
    torch.testing.assert_close(r0.x0_guided, (r0.x_t - (1 - ab) ** 0.5 * r0.eps_guided) / ab**0.5)
    diff = (r0.eps_cond - r0.eps_uncond).flatten(1)
    assert r0.guidance_norm == pytest.approx(float(diff.norm(dim=1).mean() / diff.shape[1] ** 0.5), rel=1e-5)
    assert r0.guidance_scale == 5.0 and r0.sigma is None and r0.timestep == 667.0
    assert sorted(out.trace[0].previews) == ["x0_cond", "x0_guided", "x0_uncond", "x_t"]
    assert out.trace[1].previews == {} and len(out.trace[2].previews["x_t"]) == 1  # steps 0, 2 (last)


def test_light_record_keeps_only_x_t_and_x0_guided(eps_components):
    ours, _ = _pipes(eps_components, "Euler")
    out = ours("a red circle", num_inference_steps=2, guidance_scale=5.0, height=HEIGHT, width=WIDTH,
               record="light", output_type="latent", generator=torch.Generator().manual_seed(0))
    r = out.trace[0]
    assert r.x_t is not None and r.x0_guided is not None and r.guidance_norm > 0
    assert r.eps_cond is r.eps_uncond is r.eps_guided is r.x0_cond is r.x0_uncond is None
    assert r.sigma == pytest.approx(((1 - r.alpha_bar) / r.alpha_bar) ** 0.5, rel=1e-6)
    assert r.input_scale == pytest.approx(r.alpha_bar**0.5, rel=1e-6)


def test_iter_steps_yields_records_then_output(eps_components):
    ours, _ = _pipes(eps_components)
    items = list(ours.iter_steps("a cat", num_inference_steps=2, height=HEIGHT, width=WIDTH, record="light",
                                 output_type="np", generator=torch.Generator().manual_seed(0)))
    assert [type(i).__name__ for i in items] == ["StepRecord", "StepRecord", "TracingPipelineOutput"]
    assert items[-1].trace == items[:2]
    off = ours("a cat", num_inference_steps=2, height=HEIGHT, width=WIDTH, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert off.trace is None and np.array_equal(off.images, items[-1].images)


def _op_counts(fn):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func)] += 1
            return func(*args, **(kwargs or {}))

    with Count() as mode:
        fn()
    return mode.ops


def test_record_off_does_the_same_tensor_work_as_diffusers(eps_components):
    """No aten op beyond diffusers' own: no clones, copies, conversions or .item() syncs added."""
    ours, ref = _pipes(eps_components)
    kwargs = dict(prompt="a red circle", num_inference_steps=3, guidance_scale=5.0, height=HEIGHT, width=WIDTH,
                  output_type="latent")
    ref_ops = _op_counts(lambda: ref(generator=torch.Generator().manual_seed(0), **kwargs))
    our_ops = _op_counts(lambda: ours(generator=torch.Generator().manual_seed(0), record="off", **kwargs))
    assert our_ops == ref_ops  # the same ops, the same number of times
    light_ops = _op_counts(lambda: ours(generator=torch.Generator().manual_seed(0), record="light", **kwargs))
    assert light_ops != ref_ops  # the counter sees recording work, so the equality above means something


def test_guidance_config_cfg_equals_plain_call(eps_components):
    ours, _ = _pipes(eps_components)
    common = dict(prompt="a red circle", num_inference_steps=2, height=HEIGHT, width=WIDTH, output_type="np")
    a = ours(guidance_scale=5.0, guidance_rescale=0.3, generator=torch.Generator().manual_seed(0), **common).images
    b = ours(guidance=GuidanceConfig(method="cfg", scale=5.0, rescale=0.3),
             generator=torch.Generator().manual_seed(0), **common).images
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "config",
    [
        GuidanceConfig(method="apg", scale=6.0),
        GuidanceConfig(method="cfg-zero-star", scale=6.0),
        GuidanceConfig(method="perp-neg", scale=6.0),
        GuidanceConfig(scale=6.0, schedule="cosine", interval=(0.5, 20.0)),
        GuidanceConfig(scale=6.0, interval=(0.4, 1.0), interval_space="fraction"),
    ],
    ids=["apg", "cfg-zero-star", "perp-neg", "cosine+sigma-interval", "fraction-interval"],
)
@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M", "Heun"])
def test_guidance_methods_run_with_schedulers(eps_components, config, name):
    ours, _ = _pipes(eps_components, name)
    out = ours("a red circle", negative_prompt="blue", guidance=config, num_inference_steps=3, height=HEIGHT,
               width=WIDTH, record="full", output_type="np", generator=torch.Generator().manual_seed(0))
    assert np.isfinite(out.images).all() and len(out.trace) == 3
    scales = [r.guidance_scale for r in out.trace]
    if config.interval_space == "fraction" and config.interval:
        assert scales == [1.0, 6.0, 6.0]  # progress 0, 0.5, 1 against (0.4, 1.0]
    if config.method == "perp-neg":
        assert out.trace[0].eps_negative is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_inference_steps=0), "num_inference_steps=0"),
        (dict(num_inference_steps=1001), "1001 cannot be larger"),  # DDIM's own refusal, as in diffusers
        (dict(height=15), "height=15"),
        (dict(width=-16), "width=-16"),
        (dict(guidance_scale=float("nan")), "guidance_scale=nan"),
        (dict(guidance_scale=float("inf")), "guidance_scale=inf"),
        (dict(scheduler="Eulr"), "'Euler a'"),
        (dict(negative_prompt=["a", "b"]), "negative_prompt has 2 entries"),
        (dict(record="all"), "record='all'"),
        (dict(preview_decoder="png"), "preview_decoder='png'"),
        (dict(preview_targets=("eps",)), "preview_targets"),
        (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), "'noise_pred'"),
        pytest.param(dict(callback_steps=0), "callback_steps=0",  # deprecated (as stock): warned, then refused
                     marks=pytest.mark.filterwarnings("ignore:`callback_steps` is deprecated:FutureWarning")),
        (dict(scheduler_options={"timestep_spacing": "trailing"}), "scheduler_options="),
        (dict(guidance=GuidanceConfig(method="perp-neg")), "negative_prompt"),
    ],
)
def test_check_inputs_errors(eps_components, kwargs, match):
    ours, _ = _pipes(eps_components)
    args = dict(prompt="a cat", num_inference_steps=2, height=HEIGHT, width=WIDTH) | kwargs
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("[", r"\[")):
        ours(**args)


def test_from_pretrained_local_folder(eps_components, tmp_path):
    _, ref = _pipes(eps_components)
    ref.save_pretrained(tmp_path)
    loaded = TracingStableDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.safety_checker is None and type(loaded.unet).__name__ == "UNet2DConditionModel"
    a, out = _run_both(loaded, ref, prompt="a cat", guidance_scale=3.0, num_inference_steps=2)
    assert np.abs(a - out.images).max() <= TOL


def test_output_with_trace_pickles(eps_components):
    """ZeroGPU pickles what a @spaces.GPU function returns or yields: the BaseOutput must survive."""
    import pickle

    ours, _ = _pipes(eps_components)
    out = ours("a cat", num_inference_steps=2, height=HEIGHT, width=WIDTH, record="light", output_type="np",
               generator=torch.Generator().manual_seed(0))
    back = pickle.loads(pickle.dumps(out))
    assert type(back) is type(out) and np.array_equal(back[0], out.images)
    assert [r.step for r in back.trace] == [0, 1] and torch.equal(back.trace[1].x_t, out.trace[1].x_t)
