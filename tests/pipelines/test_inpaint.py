"""Inpainting on iter_steps' one loop (pipelines/inpaint.py): parity with diffusers'
StableDiffusionInpaintPipeline (tiny seeded components built in code, CPU float32, <= 1e-5) for
latent blending (4-channel UNet) and the 9-channel inpainting UNet, every registry scheduler; the
known region kept; bad masks and methods named."""
import copy

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline

from pipelines import TracingStableDiffusionPipeline, make_scheduler, scheduler_names
from pipelines.inpaint import check_method, inpaint, preprocess_inputs, region_errors
from testkit.tiny import make_tiny_components, tiny_inpaint_unet

TOL = 1e-5


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



def test_batch_and_generator_list_match_diffusers(components, image, mask):
    ours, ref = _pipes(components, "Euler a")
    kw = {**KW, "prompt": ["a red circle", "a blue dog"], "negative_prompt": None, "num_images_per_prompt": 2}
    def gens():
        return [torch.Generator().manual_seed(i) for i in range(4)]

    a = ref(image=image, mask_image=mask, strength=1.0, generator=gens(), **kw).images
    b = inpaint(ours, image, mask, 1.0, generator=gens(), **kw).images
    assert a.shape == b.shape == (4, 16, 16, 3)
    assert np.abs(a - b).max() <= TOL


def test_blending_keeps_the_known_region_at_every_step(components, image, mask):
    """The trace's x_t equals the forward-noised original q(x_t | z_0) outside the mask at every
    step (DDIM: VP latents), and the result's latents equal z_0 there; inside they differ."""
    from pipelines.forward import q_sample

    ours, _ = _pipes(components, "DDIM")
    out = inpaint(ours, image, mask, 1.0, generator=torch.Generator().manual_seed(0), record="light",
                  **{**KW, "output_type": "latent"})
    start = out.inpaint
    keep = start.mask_latent == 0
    assert keep.any() and (~keep).any()
    sched = make_scheduler("DDIM", components["scheduler"].config)
    for r in out.trace[1:]:  # step 0 starts from pure noise (strength 1)
        expected = q_sample(sched, start.z0, start.noise, int(r.timestep))
        assert torch.allclose(r.x_t.masked_select(keep), expected.masked_select(keep), atol=1e-6)
        assert not torch.allclose(r.x_t.masked_select(~keep), expected.masked_select(~keep), atol=1e-2)
    assert torch.equal(out.images.masked_select(keep), start.z0.masked_select(keep))
    errors = region_errors(out.trace, start)
    assert len(errors) == 4 and {"known", "unknown", "step", "timestep"} <= set(errors[0])


def test_nine_channel_unet_sees_mask_and_masked_image(components9, image, mask):
    """A different mask changes the 9-channel UNet's result (the mask channels are used) and the
    known region is not blended (the model has to keep it itself)."""
    ours, _ = _pipes(components9, "DDIM")
    def run(m):
        return inpaint(ours, image, m, 1.0, generator=torch.Generator().manual_seed(0), **{**KW, "output_type": "latent"})

    other = PIL.Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 4))
    a, b = run(mask), run(other)
    assert not torch.allclose(a.images, b.images)
    assert a.inpaint.z0 is None  # strength 1: the image is never encoded, only the masked image


@pytest.mark.parametrize("fill, message", [(0, "mask is empty"), (255, "mask covers the whole image")])
def test_empty_or_full_mask_is_refused(components, image, fill, message):
    ours, _ = _pipes(components, "DDIM")
    with pytest.raises(ValueError, match=message):
        inpaint(ours, image, PIL.Image.new("L", (16, 16), fill), 1.0, **KW)


def test_method_must_fit_the_unet(components, components9, image, mask):
    ours, _ = _pipes(components, "DDIM")
    with pytest.raises(ValueError, match=r"method 'unet' does not fit this model: .*9-channel inpainting UNet"):
        inpaint(ours, image, mask, 1.0, method="unet", **KW)
    with pytest.raises(ValueError, match=r"method 'x' must be one of \['blend', 'unet'\]"):
        check_method(ours.unet, "x")
    nine, _ = _pipes(components9, "DDIM")
    with pytest.raises(ValueError, match=r"method 'blend' does not fit this model: this UNet takes 9 input channels"):
        inpaint(nine, image, mask, 1.0, method="blend", **KW)


def test_inpainting_unet_refuses_text_to_image_and_img2img(components9, image):
    from pipelines.img2img import img2img

    nine, _ = _pipes(components9, "DDIM")
    with pytest.raises(ValueError, match="takes 9 input channels .*not text-to-image or img2img"):
        nine(prompt="a red circle", num_inference_steps=2)
    with pytest.raises(ValueError, match="takes 9 input channels"):
        img2img(nine, image, 0.5, prompt="a red circle", num_inference_steps=2)


def test_mask_of_another_size_is_resized_to_the_image(components, image):
    ours, _ = _pipes(components, "DDIM")
    big = np.zeros((64, 64), np.uint8)
    big[16:48, 24:56] = 255
    pixels, m = preprocess_inputs(ours, image, PIL.Image.fromarray(big))
    assert pixels.shape[-2:] == m.shape[-2:] == (16, 16)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="mask_image is required"):
        preprocess_inputs(ours, image, None)


def test_strength_is_checked(components, image, mask):
    ours, _ = _pipes(components, "DDIM")
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            inpaint(ours, image, mask, bad, **KW)


def test_sd15_inpaint_registry_entry_and_a_saved_nine_channel_model_loads(components9, image, mask, tmp_path):
    """The registry id the Space loads (never downloaded here), and the loader path it takes: a
    9-channel diffusers folder through TracingStableDiffusionPipeline.from_pretrained inpaints."""
    from pipelines.models import model_family, model_spec

    spec = model_spec("sd15-inpaint")
    assert spec.source == "stable-diffusion-v1-5/stable-diffusion-inpainting" and model_family("sd15-inpaint") == "sd15"
    ours, _ = _pipes(components9, "DDIM")
    ours.save_pretrained(tmp_path)
    loaded = TracingStableDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    a = inpaint(ours, image, mask, generator=torch.Generator().manual_seed(0), **KW).images
    b = inpaint(loaded, image, mask, generator=torch.Generator().manual_seed(0), **KW).images
    assert np.abs(a - b).max() <= TOL
