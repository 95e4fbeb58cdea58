"""Every sampler the lab offers works at every step count (issue 27).

Fast: the combinations the issue found crashing, flat or off-colour on the embedded model, run through
the real pipeline; every registry sampler stepped with an exact Gaussian denoiser (testkit.sampler_sweep)
at a few step counts; refusals; the naming rule; the truncation warning's logger.
Grid (`pytest -m grid`; marker `grid`, not in CI: about 30 minutes on a 2-core CPU): the whole grid (scheduler x spacing x sigmas x steps 1-150 with the stand-in; the
real embedded model and SD 1.5's scheduler config on tiny components at a set of step counts, in
every mode).
"""
import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipelines.schedulers import make_scheduler, scheduler_names
from shapesworld import score_image
from testkit.paths import ROOT
from testkit.sampler_sweep import (
    MODES,
    SIGMAS,
    SPACINGS,
    Case,
    cached_scheduler,
    run_case,
    sd15_tiny_pipeline,
    stand_in_run,
    stock_stand_in_run,
)

EMBEDDED_CONFIG = json.loads(Path(ROOT, "models", "tiny-shapes", "scheduler", "scheduler_config.json").read_text())
MULTISTEP = ["DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DEIS", "UniPC"]
DPM2_FAMILY = ["DPM2", "DPM2 Karras", "DPM2 a", "DPM2 a Karras"]
FEW_STEP_STOCK = ("Heun", *DPM2_FAMILY, "PNDM")  # noisy at 2-7 linspace steps on SD 1.5 in stock diffusers too


@pytest.fixture(scope="module")
def embedded():
    from pipelines import TracingStableDiffusionPipeline

    pipe = TracingStableDiffusionPipeline.from_pretrained(os.path.join(ROOT, "models", "tiny-shapes"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_ok(outcome):
    assert outcome.status == "ok", f"{outcome.case.label()}: {outcome.status} {outcome.message}"


# ------------------------------------------------------------------ the issue's failures, real model


@pytest.mark.parametrize("name", MULTISTEP)
@pytest.mark.parametrize("sigmas", ["karras", "exponential"])
def test_multistep_solvers_with_sigma_ramps_run_at_25_steps(embedded, name, sigmas):
    """Were IndexError (DPM++ 2M family, DEIS) / AssertionError (UniPC) at 25 and 50 steps."""
    _assert_ok(run_case(embedded, Case(name, "trailing", sigmas, 25)))


def test_dpm_pp_2m_karras_at_the_default_25_steps(embedded):
    """The issue's first report: 'index 26 is out of bounds for dimension 0 with size 26'."""
    out = run_case(embedded, Case("DPM++ 2M Karras", None, None, 25))
    _assert_ok(out)
    reading = score_image((out.image * 255).round().astype(np.uint8))
    assert (reading.color, reading.shape) == ("red", "circle")


@pytest.mark.parametrize("name, spacing", [(n, ("linspace", "trailing")[i % 2]) for i, n in enumerate(DPM2_FAMILY)])
def test_dpm2_family_with_karras_sigmas_is_not_flat(embedded, name, spacing):
    """Were flat (NaN through the DPM2 midpoint of the step from sigma_T) at 25-50 steps."""
    _assert_ok(run_case(embedded, Case(name, spacing, "karras", 25)))


@pytest.mark.parametrize("case", [
    Case("Heun", None, None, 10),  # the lab's default comparison: wrong corner, blue smear
    Case("DPM++ 2M Karras", None, None, 10),  # the lab's default comparison: lumpy blob
    Case("Heun", "linspace", "karras", 10),
    Case("Heun", "trailing", "exponential", 10),
    Case("DPM2", "trailing", "exponential", 10),
])
def test_the_issues_off_colour_cases_draw_the_prompt(embedded, case):
    out = run_case(embedded, case)
    _assert_ok(out)
    reading = score_image((out.image * 255).round().astype(np.uint8))
    assert (reading.color, reading.shape, reading.h, reading.v) == ("red", "circle", "left", "top"), case.label()


# ------------------------------------------------------------------ every sampler, stand-in model


@pytest.mark.parametrize("name", scheduler_names())
def test_every_sampler_steps_to_the_data_with_an_exact_denoiser(name):
    """Gaussian data, exact denoiser: a working sampler ends within ~1 s of mu (0 at 1 step); a drifting
    step index, an unstable second-order step or an inf sigma ends far away, NaN, or crashes."""
    for spacing in ("trailing", "linspace"):
        for sigmas in SIGMAS:
            for steps in (1, 2, 3, 25):
                options = {k: v for k, v in (("timestep_spacing", spacing), ("sigmas", sigmas)) if v}
                try:
                    err = stand_in_run(name, EMBEDDED_CONFIG, options, steps)
                except ValueError:
                    continue  # refused before the run (tested below)
                # DDIM steps T // n training steps; linspace puts its 2 timesteps at 999 and 0, so the one
                # step lands at t=499 and the rest of the noise stays (diffusers' DDIM; finite, not flat)
                bound = 2.0 if spacing == "linspace" and steps == 2 else 1.5
                assert err <= bound, f"{name} {options} {steps} steps: rms(final - mu) / s = {err}"


@pytest.mark.parametrize("name", DPM2_FAMILY)
@pytest.mark.parametrize("sigmas", ["karras", "exponential"])
@pytest.mark.parametrize("steps", [100, 111, 125, 142])
def test_dpm2_family_at_leading_spacing_with_sigma_ramps_starts_at_the_first_step(name, sigmas, steps):
    """Was inf (found by the grid): at these counts leading spacing starts at t = 991 / 991 / 993 / 988, on the
    zero-SNR curve's steep top; DPM2 rounds a Karras ramp's timesteps, the ramp's second sigma rounded to the
    first timestep, diffusers' index lookup took the second copy, and the run ended dividing by sigma = 0."""
    options = {"timestep_spacing": "leading", "sigmas": sigmas}
    assert _schedule_faults(name, options, EMBEDDED_CONFIG, steps) == []
    err = stand_in_run(name, EMBEDDED_CONFIG, options, steps)
    assert err <= 1.5, f"{name} {options} {steps} steps: rms(final - mu) / s = {err}"


# ------------------------------------------------------------------ refusals: one line, before the run


def test_refusals_name_the_combination_and_why(embedded):
    with pytest.raises(ValueError, match=r"scheduler='DEIS', sigmas='karras' at 1 step\(s\): .*sigma_min.*noise") as err:
        embedded("red circle", num_inference_steps=1, scheduler="DEIS", scheduler_options={"sigmas": "karras"})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"timestep_spacing='leading' at 1 step\(s\): the first timestep is t=1 "):
        embedded("red circle", num_inference_steps=1, scheduler="Euler", scheduler_options={"timestep_spacing": "leading"})
    # trailing spacing at 61 steps: diffusers' round(arange(1000, 0, -1000 / 61)) - 1 ends at t = -1 (found by the slow sweep)
    with pytest.raises(ValueError, match=r"scheduler='DDIM' at 61 step\(s\): diffusers' spacing puts a timestep at t=-1"):
        embedded("red circle", num_inference_steps=61, scheduler="DDIM")
    assert run_case(embedded, Case("DEIS", None, "karras", 2)).status == "ok"  # 2 steps run
    assert run_case(embedded, Case("DDIM", None, "karras", 10)).status == "refused"  # make_scheduler's refusal


# ------------------------------------------------------------------ drop-in gaps (item 4)


def test_registry_name_equals_the_diffusers_from_config_idiom():
    """The naming rule (README, Scheduler lab): make_scheduler(name, config) == Class.from_config(config,
    **the entry's overrides), settings the model's file left unset included."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    config = json.loads(Path(ROOT, "testkit", "configs", "sd15", "scheduler", "scheduler_config.json").read_text())
    config.pop("timestep_spacing")  # as in older SD configs
    model = PNDMScheduler.from_config(config)
    assert model.config.timestep_spacing == "leading"  # PNDM's default
    for name, idiom in (("Euler", EulerDiscreteScheduler.from_config(model.config)),
                        ("DPM++ 2M Karras", DPMSolverMultistepScheduler.from_config(model.config, use_karras_sigmas=True))):
        ours = make_scheduler(name, model.config)
        assert ours.config.timestep_spacing == idiom.config.timestep_spacing
        for n in (10, 25):
            ours.set_timesteps(n)
            idiom.set_timesteps(n)
            np.testing.assert_array_equal(ours.timesteps.numpy(), idiom.timesteps.numpy())
    assert make_scheduler("Euler", model.config).config.timestep_spacing == "linspace"  # Euler's default, not PNDM's


# CaptureLogger is what diffusers' own long-prompt test uses; its module warns that it moves in diffusers 1.0
@pytest.mark.filterwarnings("ignore:`diffusers.utils.testing_utils` is deprecated:FutureWarning")
def test_truncation_warning_goes_through_diffusers_logger(embedded):
    from diffusers.utils import logging as dlogging
    from diffusers.utils.testing_utils import CaptureLogger

    logger = dlogging.get_logger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    long_prompt = " ".join(["a large red circle in the top left"] * 20)
    try:
        with CaptureLogger(logger) as captured:  # what diffusers' own long-prompt test does
            embedded.encode_prompt(long_prompt, "cpu", 1, False)
        assert "truncated" in captured.out
        dlogging.set_verbosity_error()
        with CaptureLogger(logger) as quiet:
            embedded.encode_prompt(long_prompt, "cpu", 1, False)
        assert quiet.out == ""
    finally:
        dlogging.set_verbosity_warning()


def test_forward_does_not_import_schedulers():
    """One home for the schedule math: schedulers.py imports forward.py, never the reverse."""
    tree = ast.parse(Path(ROOT, "pipelines", "forward.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(m and "schedulers" in m for m in imported), imported


# ------------------------------------------------------------------ grid: the whole grid


STEPPED = (*range(1, 13), 15, 20, 25, 33, 50, 64, 75, 100, 111, 125, 142, 149, 150)


def _slow_config(config_name):
    from diffusers import PNDMScheduler

    from testkit.components import SD15_CONFIGS

    if config_name == "embedded":
        return EMBEDDED_CONFIG
    return dict(PNDMScheduler.load_config(os.path.join(SD15_CONFIGS, "scheduler")))


def _schedule_faults(name, options, config, steps):
    """What made the multistep solvers and DPM2 crash, checked on the schedule alone: a repeated first
    timestep (diffusers' index lookup starts the step index at its second copy and it runs off the end),
    a timestep outside [0, T), a non-finite or rising sigma."""
    from pipelines.schedulers import check_schedule

    sched = cached_scheduler(name, config, options)
    try:
        sched.set_timesteps(steps)  # LCM refuses more than its 50 original steps here
        check_schedule(sched, name, options, steps)
    except ValueError:
        return None  # refused before the run
    t = sched.timesteps.double()
    faults = []
    if hasattr(sched, "index_for_timestep"):  # what the sigma-space and multistep samplers look up
        first = sched.index_for_timestep(sched.timesteps[0])
        if first != 0:
            faults.append(f"the first step starts at index {first} (first timestep repeated): {t[:4].tolist()}")
    elif len(t) > 1 and t[0] == t[1] and sched.order == 1:
        faults.append(f"first timestep repeated: {t[:3].tolist()}")
    if not (t.isfinite().all() and t.min() >= 0 and t.max() <= len(sched.alphas_cumprod) - 1):
        faults.append(f"timesteps outside [0, T): {t.min()}..{t.max()}")
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is not None:
        if not sigmas.isfinite().all():
            faults.append("non-finite sigma")
        elif (sigmas[1:] - sigmas[:-1] > 1e-3 * sigmas[:-1].clamp(min=1e-3)).any():
            faults.append("sigma rises")
    return faults


@pytest.mark.grid
@pytest.mark.parametrize("config_name", ["embedded", "sd15"])
def test_whole_grid_schedules_at_every_step_count(config_name):
    """scheduler x spacing x sigmas x every step count 1-150: the schedule each accepted combination
    picks has none of the faults that crashed the multistep solvers."""
    config = _slow_config(config_name)
    failures = []
    for name in scheduler_names():
        for spacing in SPACINGS:
            for sigmas in SIGMAS:
                options = {k: v for k, v in (("timestep_spacing", spacing), ("sigmas", sigmas)) if v}
                try:
                    cached_scheduler(name, config, options)
                except ValueError:
                    continue
                for steps in range(1, 151):
                    faults = _schedule_faults(name, options, config, steps)
                    if faults:
                        failures.append(f"{name} {options} {steps}: {faults}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:40])


def _stock_bound(config_name, name, options, steps, strength):
    """The stand-in bound where stock diffusers' own sampler ends as far from the data: its figure, measured
    side by side (stock_stand_in_run), else None. Only at 2-7 steps, only for the samplers listed.

    SD 1.5's config (no zero-SNR fix acts, so ours is the stock class): Heun, the DPM2 family and PNDM at
    2-7 steps end noisier than the usual bound in stock diffusers too (0.42.1, from noise at linspace
    spacing: 2 steps Heun 13.7, DPM2 9.7, DPM2 a 27.2, PNDM 2.2; 3-7 steps up to 9.4 (DPM2 a, exponential);
    img2img at strength 1.0 at 2 linspace steps the same; PNDM img2img at 0.5 x 2 trailing steps 5.7: the one
    step left is PNDM's repeated warm-up timestep, t = 499 twice, whose second call corrects as if from
    t = 999). Bound: ours no worse than stock's figure (x 1.05 + 0.01).
    Embedded config, Heun / DPM2 with a Karras / exponential ramp at 5-7 linspace steps: after the exact
    first step from pure noise (pipelines/zero_snr.py) the run is SD 1.5's own (steps - 1)-step ramp from
    sigma 14.6, in stock's math where no later step falls more than 10-fold; stock ends there at up to 1.83
    (Heun, exponential, 4 steps; ours 1.83 at 5). Bound: the usual one, or stock's figure where higher."""
    if not 2 <= steps <= 7:
        return None
    if config_name == "sd15" and name in FEW_STEP_STOCK:
        return 1.05 * stock_stand_in_run(name, _slow_config("sd15"), options, steps, strength) + 0.01
    ramp = options.get("sigmas") in ("karras", "exponential") or (name == "DPM2 Karras" and "sigmas" not in options)
    if (config_name == "embedded" and name in ("Heun", "DPM2", "DPM2 Karras") and ramp and steps >= 5 and strength is None
            and options.get("timestep_spacing") == "linspace"):
        return max(1.5, 1.05 * stock_stand_in_run(name, _slow_config("sd15"), options, steps - 1) + 0.01)
    return None


@pytest.mark.grid
@pytest.mark.parametrize("config_name", ["embedded", "sd15"])
def test_whole_grid_stepped_with_the_stand_in(config_name):
    """Every accepted combination stepped with the exact Gaussian denoiser at 1-12, 15, 20, 25, 33, 50,
    64, 75, 100, 111, 125, 142, 149, 150 steps from pure noise, and img2img at strength 0.1 / 0.5 / 1.0 at 2, 7, 50, 150."""
    config = _slow_config(config_name)
    failures = []
    for name in scheduler_names():
        for spacing in SPACINGS:
            for sigmas in SIGMAS:
                options = {k: v for k, v in (("timestep_spacing", spacing), ("sigmas", sigmas)) if v}
                runs = [(n, None) for n in STEPPED] + [(n, s) for n in (2, 7, 50, 150) for s in (0.1, 0.5, 1.0)]
                for steps, strength in runs:
                    try:
                        err = stand_in_run(name, config, options, steps, strength)
                    except ValueError:
                        continue
                    except Exception as error:  # noqa: BLE001 (a crash is what this test finds)
                        failures.append(f"{name} {options} {steps} {strength}: {type(error).__name__}: {error}")
                        continue
                    # leading spacing never starts at pure noise, so few steps leave noise (the schedule
                    # flaw); img2img keeps the image's own part; DDIM linspace at 2 steps (see the fast test)
                    leading = (spacing or config.get("timestep_spacing", "leading")) == "leading"
                    bound = 5.0 if leading or strength else 2.0 if steps == 2 else 1.5
                    bound = _stock_bound(config_name, name, options, steps, strength) or bound
                    if not err <= bound:
                        failures.append(f"{name} {options} {steps} {strength}: rms(final - mu) / s = {err:.3g}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:40])


@pytest.mark.grid
@pytest.mark.parametrize("config_name", ["embedded", "sd15"])
def test_whole_grid_on_the_real_pipeline(embedded, config_name):
    """Every accepted combination makes a finite, non-flat image through the real pipeline: every
    spacing x sigmas at 10 steps; the model's spacing x sigmas at 1, 2 and 25 steps; img2img at 0.1 /
    0.5 / 1.0 and inpainting at 10 steps."""
    pipe = embedded if config_name == "embedded" else sd15_tiny_pipeline()
    names = scheduler_names()
    cases = [Case(n, sp, sg, 10) for n in names for sp in SPACINGS for sg in SIGMAS]
    cases += [Case(n, None, sg, s) for n in names for sg in SIGMAS for s in (1, 2, 25)]
    cases += [Case(n, None, None, 10, m) for n in names for m in MODES if m != "txt2img"]
    bad = [o for o in (run_case(pipe, c) for c in cases) if o.status not in ("ok", "refused")]
    assert not bad, f"{len(bad)} of {len(cases)}:\n" + "\n".join(f"{o.status}: {o.case.label()}: {o.message[:100]}" for o in bad[:40])


def test_registry_schedulers_save_as_the_stock_class(tmp_path):
    """The zero-SNR fixes ride on a subclass with the stock name and module: a saved pipeline's
    model_index.json and scheduler config name the diffusers class, and load back with stock diffusers."""
    from diffusers import DPMSolverMultistepScheduler, KDPM2AncestralDiscreteScheduler

    for name, cls in (("DPM++ 2M Karras", DPMSolverMultistepScheduler), ("DPM2 a", KDPM2AncestralDiscreteScheduler)):
        ours = make_scheduler(name, EMBEDDED_CONFIG)
        assert isinstance(ours, cls) and type(ours).__module__ == cls.__module__
        ours.save_config(tmp_path / name)
        again = cls.from_pretrained(tmp_path / name)
        assert json.loads(Path(tmp_path / name / "scheduler_config.json").read_text())["_class_name"] == cls.__name__
        assert again.config.prediction_type == "v_prediction"
