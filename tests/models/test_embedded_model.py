"""The shipped embedded model: loads with stock diffusers, follows prompts, and guidance helps.

A smaller sample than bench/eval_tiny_shapes.py (which writes the 200-sample table to
BENCHMARKS.md); the thresholds here leave room for the sampling error of 48 prompts.
"""
import json
import os

import numpy as np
import pytest
import torch

from shapesworld.evaluate import empty_prompt_colors, evaluate_adherence

from testkit.paths import ROOT
MODEL = os.path.join(ROOT, "models", "tiny-shapes")


@pytest.fixture(scope="module")
def stock_pipe():
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_model_folder_is_complete_and_small():
    index = json.load(open(os.path.join(MODEL, "model_index.json")))
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert part in index and os.path.isdir(os.path.join(MODEL, part)), part
    sched = json.load(open(os.path.join(MODEL, "scheduler", "scheduler_config.json")))
    # what the model was trained with travels with it, so stock schedulers sample it correctly
    assert sched["prediction_type"] == "v_prediction"
    assert sched["rescale_betas_zero_snr"] is True
    assert sched["timestep_spacing"] == "trailing"
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(MODEL) for f in fs)
    assert size < 30 * 1024 * 1024
    factors = json.load(open(os.path.join(MODEL, "preview_factors.json")))
    assert np.asarray(factors["factors"]).shape == (5, 3)  # 4 latent channels + bias -> RGB


@pytest.mark.slow
def test_guidance_improves_adherence(stock_pipe):
    curve = evaluate_adherence(stock_pipe, (1.0, 7.5), num_samples=48, steps=25, batch_size=48)
    hi, lo = curve[7.5], curve[1.0]
    assert hi["color"] >= 0.85 and hi["shape"] >= 0.75 and hi["position"] >= 0.7, curve
    assert hi["position"] > lo["position"] or hi["shape"] > lo["shape"], curve


@pytest.mark.slow
def test_unconditional_samples_spread_over_colors(stock_pipe):
    shares = empty_prompt_colors(stock_pipe, num_samples=48, steps=25, batch_size=48)
    assert max(v for k, v in shares.items() if k != "none") <= 0.5, shares
    assert sum(v > 0 for k, v in shares.items() if k != "none") >= 4, shares


def test_stock_diffusers_and_our_pipeline_give_the_same_image(stock_pipe):
    from pipelines import TracingStableDiffusionPipeline
    ours = TracingStableDiffusionPipeline.from_pretrained(MODEL)
    ours.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=25, guidance_scale=7.5, output_type="np")
    a = stock_pipe("a large green triangle in the top right", generator=torch.Generator().manual_seed(3), **kw).images
    b = ours("a large green triangle in the top right", generator=torch.Generator().manual_seed(3), **kw).images
    assert np.abs(a - b).max() <= 1e-5
