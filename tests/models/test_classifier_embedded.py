"""The shipped noise-aware classifier of the embedded model (models/tiny-shapes/classifier/):
within its weight budget, accurate on clean latents, and one classifier-guided step raises
log p(y | x_t) on the real model with a VP and a sigma-space scheduler."""
import json
import os

import pytest
import torch

from pipelines import TracingStableDiffusionPipeline
from pipelines.classifier import HEADS, load_classifier
from pipelines.guidance import DEFAULT_CLASSIFIER_SCALE, GuidanceConfig

from testkit.paths import ROOT
MODEL = os.path.join(ROOT, "models", "tiny-shapes")
FOLDER = os.path.join(MODEL, "classifier")


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    from pipelines.models import load_pipeline

    p = load_pipeline("tiny-shapes")
    p.set_progress_bar_config(disable=True)
    return p


def test_shipped_files_fit_the_weight_budget():
    size = os.path.getsize(os.path.join(FOLDER, "model.safetensors"))
    assert size <= 1.5 * 1024 * 1024, size
    training = json.load(open(os.path.join(FOLDER, "training.json")))
    assert training["command"].startswith("python train/train_classifier.py")
    assert set(training["accuracy_vs_t"]["0"]) == set(HEADS)
    assert training["parameters"] <= 1_000_000


def test_accurate_on_clean_latents_of_fresh_renders(pipe):
    """Held-out renders (seeds unused by training and by train_classifier's evaluation) at t = 0."""
    from shapesworld.world import images_array

    images, _, attrs = images_array(range(90_000_000, 90_000_096), empty_prob=0.0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        logits = pipe.classifier(latents, torch.zeros(len(latents)))
    for name, classes in HEADS.items():
        truth = torch.tensor([classes.index(getattr(a, name)) for a in attrs])
        accuracy = float((logits[name].argmax(-1) == truth).float().mean())
        assert accuracy >= 0.9, (name, accuracy)


@pytest.mark.parametrize("scheduler", [None, "Euler"])
def test_one_guided_step_raises_log_p(pipe, scheduler):
    """Same seed with s = 0 and s = default: at the first step where x_t differs (after exactly one
    guided update) the classifier's log p(y | x_t) is higher for every sample (a sign check)."""
    prompts = ["a red circle", "a blue square", "a small green triangle", "a yellow shape on the left"]

    def run(scale):
        return pipe(prompts, num_inference_steps=25, output_type="latent", record="light", scheduler=scheduler,
                    generator=[torch.Generator().manual_seed(100 + i) for i in range(len(prompts))],
                    guidance=GuidanceConfig(method="classifier", classifier_scale=scale)).trace

    plain, guided = run(0.0), run(DEFAULT_CLASSIFIER_SCALE)
    k = next(k for k in range(1, len(plain)) if not torch.equal(plain[k].x_t, guided[k].x_t))
    assert k <= 2
    before, after = torch.tensor(plain[k].classifier["log_prob"]), torch.tensor(guided[k].classifier["log_prob"])
    assert (after > before).all(), (k, before, after)


def test_loaded_with_the_model_and_refused_on_a_bare_pipeline(pipe):
    assert pipe.classifier is not None and not pipe.classifier.training
    bare = TracingStableDiffusionPipeline.from_pretrained(MODEL)
    bare.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="needs a noise-aware classifier"):
        bare("a red circle", num_inference_steps=2, guidance=GuidanceConfig(method="classifier"))
    assert isinstance(load_classifier(FOLDER), torch.nn.Module)
