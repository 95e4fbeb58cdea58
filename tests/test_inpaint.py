"""Inpainting on iter_steps' one loop (pipelines/inpaint.py): parity with diffusers'
StableDiffusionInpaintPipeline (tiny seeded components built in code, CPU float32, <= 1e-5) for
latent blending (4-channel UNet) and the 9-channel inpainting UNet, every registry scheduler; the
known region kept; bad masks and methods named."""
import copy

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

from pipelines import TracingStableDiffusionPipeline, make_scheduler, scheduler_names
from pipelines.inpaint import InpaintStart, check_method, inpaint, preprocess_inputs, region_errors
from tests.tiny import make_tiny_components

TOL = 1e-5


def tiny_inpaint_unet(seed: int = 0) -> UNet2DConditionModel:
    """The tiny UNet of tests/tiny.py with 9 input channels (latents, mask, masked-image latents)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=2, attention_head_dim=2,
    )


@pytest.fixture(scope="module")
def components():
    return make_tiny_components("epsilon")


@pytest.fixture(scope="module")
def components9(components):
    return {**components, "unet": tiny_inpaint_unet()}


@pytest.fixture(scope="module")
def image():
    return PIL.Image.fromarray((np.random.RandomState(0).rand(16, 16, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def mask():
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 6:14] = 255  # white: regenerate
    return PIL.Image.fromarray(m)


_TEMPLATES = {}


def _pipes(components, name):
    if name not in _TEMPLATES:
        _TEMPLATES[name] = make_scheduler(name, components["scheduler"].config)
    ref = StableDiffusionInpaintPipeline(**{**components, "scheduler": copy.deepcopy(_TEMPLATES[name])},
                                         requires_safety_checker=False)
    ours = TracingStableDiffusionPipeline(**{**components, "scheduler": copy.deepcopy(_TEMPLATES[name])})
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    return ours, ref


KW = dict(prompt="a red circle", negative_prompt="blue", num_inference_steps=4, guidance_scale=5.0, output_type="np",
          height=16, width=16)


@pytest.mark.parametrize("nine", [False, True], ids=["blend", "unet9"])
@pytest.mark.parametrize("name", scheduler_names())
def test_inpaint_matches_diffusers(components, components9, image, mask, name, nine):
    ours, ref = _pipes(components9 if nine else components, name)
    for strength in (1.0, 0.75):
        a = ref(image=image, mask_image=mask, strength=strength, generator=torch.Generator().manual_seed(0), **KW).images
        out = inpaint(ours, image, mask, strength, generator=torch.Generator().manual_seed(0), record="light", **KW)
        assert np.abs(a - out.images).max() <= TOL, (name, strength)
        assert out.inpaint.method == ("unet" if nine else "blend")
        assert len(out.trace) == int(4 * strength)

