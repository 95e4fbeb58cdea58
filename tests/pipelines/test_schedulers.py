"""Scheduler registry, schedule arrays, and the prediction-type conversions."""
import numpy as np
import pytest
import torch

from pipelines.prediction import output_from_x0, predicted_eps, predicted_x0
from pipelines.schedulers import (
    SCHEDULERS,
    EvalPoint,
    make_scheduler,
    sampling_schedule,
    scheduler_names,
    training_schedule,
)
from testkit.tiny import make_tiny_components

REQUIRED = ["DDIM", "DDPM", "PNDM", "LMS", "Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2M",
            "DPM++ 2M Karras", "DPM++ SDE Karras", "DPM++ 2M SDE", "UniPC", "DEIS", "LCM"]


@pytest.fixture(scope="module")
def eps_config():
    return make_tiny_components("epsilon")["scheduler"].config


@pytest.fixture(scope="module")
def v_config():
    return make_tiny_components("v_prediction", zero_snr=True)["scheduler"].config


def test_registry_has_the_known_names():
    assert set(REQUIRED) <= set(scheduler_names())


def test_bad_name_lists_valid_names(eps_config):
    with pytest.raises(ValueError, match=r"scheduler='Eulr'.*'DPM\+\+ 2M Karras'"):
        make_scheduler("Eulr", eps_config)


@pytest.mark.parametrize("name", [n for n in scheduler_names() if not n.startswith("DPM2")])  # DPM2 init ~2 s
def test_built_from_model_config_keeps_prediction_type(v_config, eps_config, name):
    """(zero-SNR v config for a few, so trained_betas emulation does not hide the check)"""
    cls = SCHEDULERS[name].cls
    config = v_config if name in ("DDIM", "Euler", "UniPC") else eps_config
    s = make_scheduler(name, config)
    assert isinstance(s, cls)
    assert s.config.prediction_type == config.prediction_type
    assert s.config.beta_schedule == "scaled_linear" and s.config.beta_end == 0.012  # model's betas travel


def test_options(eps_config, v_config):
    assert make_scheduler("DDIM", eps_config, timestep_spacing="trailing").config.timestep_spacing == "trailing"
    assert make_scheduler("DDIM", eps_config, zero_snr=True).config.rescale_betas_zero_snr is True
    assert make_scheduler("DDIM", v_config).config.rescale_betas_zero_snr is True  # the model's own flag
    assert make_scheduler("DPM++ 2M", eps_config, sigmas="karras").config.use_karras_sigmas is True
    assert make_scheduler("DPM++ 2M Karras", eps_config, sigmas="default").config.use_karras_sigmas is False
    assert make_scheduler("Euler", eps_config, sigmas="exponential").config.use_exponential_sigmas is True
    assert make_scheduler("PNDM", eps_config).config.skip_prk_steps is True
    assert make_scheduler("DPM++ 2M SDE", eps_config).config.algorithm_type == "sde-dpmsolver++"
    with pytest.raises(ValueError, match="timestep_spacing='middle'"):
        make_scheduler("DDIM", eps_config, timestep_spacing="middle")
    with pytest.raises(ValueError, match="sigmas='karras'"):
        make_scheduler("DDIM", eps_config, sigmas="karras")


@pytest.mark.parametrize("name", ["Heun", "LMS", "PNDM", "DEIS", "DPM++ SDE"])
def test_zero_snr_emulated_with_trained_betas(v_config, name):
    euler = make_scheduler("Euler", v_config)  # diffusers' own zero-SNR rescale, alpha_bar_T = 2^-24
    other = make_scheduler(name, v_config)
    assert other.config.trained_betas is not None
    assert other.alphas_cumprod[-1].item() == pytest.approx(2.0**-24, rel=1e-3)
    torch.testing.assert_close(other.alphas_cumprod, euler.alphas_cumprod, atol=2e-6, rtol=0)
    assert make_scheduler(name, v_config, zero_snr=False).config.trained_betas is None


def test_training_schedule_arrays(eps_config, v_config):
    s = training_schedule(eps_config)
    assert all(isinstance(v, np.ndarray) for v in s.values()) and len(s["t"]) == 1000
    # scaled_linear: beta_0 = 0.00085 -> alpha_bar_0 = 0.99915
    assert s["alpha_bar"][0] == pytest.approx(0.99915, abs=1e-7)
    assert s["sigma"][0] == pytest.approx(np.sqrt(0.00085 / 0.99915), rel=1e-6)
    assert s["log_snr"][0] == pytest.approx(np.log(0.99915 / 0.00085), rel=1e-6)
    assert np.all(np.diff(s["log_snr"]) < 0)
    z = training_schedule(v_config)
    assert z["alpha_bar"][-1] == 0.0 and np.isinf(z["sigma"][-1]) and z["log_snr"][-1] == -np.inf


def test_sampling_schedule_timesteps_and_calls(eps_config):
    # leading, steps_offset 1: 1000 // 4 = 250 -> 0, 250, 500, 750 reversed, + 1
    s = sampling_schedule("DDIM", eps_config, 4)
    assert s["timesteps"].tolist() == [751, 501, 251, 1] and s["num_model_calls"] == 4 and s["sigmas"] is None
    # trailing: round(arange(1000, 0, -250)) - 1
    s = sampling_schedule("DDIM", eps_config, 4, timestep_spacing="trailing")
    assert s["timesteps"].tolist() == [999, 749, 499, 249]
    heun = sampling_schedule("Heun", eps_config, 4)
    assert heun["num_model_calls"] == 7 and heun["num_steps"] == 4  # 2 calls per step, last step 1
    assert sampling_schedule("PNDM", eps_config, 4)["num_model_calls"] == 5  # first step re-evaluated
    euler = sampling_schedule("Euler", eps_config, 4)
    assert euler["sigmas"].shape == (5,) and euler["sigmas"][-1] == 0.0


# ------------------------------------------------------------------ prediction conversions

# alpha_bar = .36: a = .6, b = .8, sigma = 4/3. x_vp = 1, eps = .5 -> x0 = (1 - .4) / .6 = 1,
# v = a eps - b x0 = .3 - .8 = -.5 ; sigma-space latent x_s = x_vp / a = 5/3.
VP = EvalPoint(timestep=500.0, alpha_bar=0.36, sigma=None, sigma_space=False)
KS = EvalPoint(timestep=500.0, alpha_bar=0.36, sigma=4 / 3, sigma_space=True)
one = torch.ones(1, 1, 1, 1, dtype=torch.float64)


@pytest.mark.parametrize("point, sample", [(VP, 1.0), (KS, 5 / 3)])
def test_conversions_by_hand(point, sample):
    x = one * sample
    assert predicted_x0(one * 0.5, x, point, "epsilon").item() == pytest.approx(1.0)
    assert predicted_x0(one * -0.5, x, point, "v_prediction").item() == pytest.approx(1.0)
    assert predicted_eps(one * -0.5, x, point, "v_prediction").item() == pytest.approx(0.5)
    assert predicted_eps(one * 1.0, x, point, "sample").item() == pytest.approx(0.5)
    assert output_from_x0(one * 1.0, x, point, "v_prediction").item() == pytest.approx(-0.5)
    assert output_from_x0(one * 1.0, x, point, "epsilon").item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="prediction_type='flow'"):
        predicted_x0(one, x, point, "flow")
    assert point.input_scale == pytest.approx(0.6 if point.sigma_space else 1.0)


def test_training_schedule_agrees_with_diffusers_float32(eps_config, v_config):
    from diffusers import DDIMScheduler

    for config in (eps_config, v_config):
        ours = training_schedule(config)["alpha_bar"]
        theirs = DDIMScheduler.from_config(config).alphas_cumprod.double().numpy()
        assert np.abs(ours - theirs).max() < 1e-5
