"""Latent -> RGB previews: linear factors (published and fitted), TAESD, full VAE; in the pipeline."""
import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from pipelines import TracingStableDiffusionPipeline
from pipelines.previews import (
    SD15_LATENT_RGB_FACTORS,
    decode_preview,
    fit_linear_factors,
    linear_decode,
    load_linear_factors,
    save_linear_factors,
    to_pil,
)
from testkit.tiny import make_tiny_components


@pytest.fixture(scope="module")
def components():
    return make_tiny_components("epsilon")


def tiny_taesd():
    torch.manual_seed(0)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1), latent_channels=4, upsampling_scaling_factor=2,
    ).eval()


def test_linear_decode_by_hand():
    z = torch.zeros(1, 4, 1, 2)
    z[0, 0, 0, 0] = 1.0  # pixel 0: channel 0 only -> row 0 of the factors
    z[0, 3, 0, 1] = 2.0  # pixel 1: 2 x row 3
    factors = torch.cat([SD15_LATENT_RGB_FACTORS[:4], torch.tensor([[0.1, 0.2, 0.3]])])  # bias row
    rgb = linear_decode(z, factors)
    assert rgb.shape == (1, 3, 1, 2)
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor([0.3512 + 0.1, 0.2297 + 0.2, 0.3227 + 0.3]))
    torch.testing.assert_close(rgb[0, :, 0, 1], torch.tensor([-0.4240 + 0.1, -0.5232 + 0.2, -1.4354 + 0.3]))


def test_to_pil_maps_minus_one_to_one():
    img = to_pil(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1))[0]
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (0, 128, 255)  # 127.5 rounds to even 128


class LinearStubVAE:
    """A 'VAE' whose decoder is exactly linear per pixel (nearest upsampling x2), to test the fit."""

    def __init__(self, factors):
        self.factors = factors
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.config = type("C", (), {"scaling_factor": 0.5, "latent_channels": 4})()

    def decode(self, z, return_dict=False):
        rgb = linear_decode(z * self.config.scaling_factor, self.factors)  # undo the pipeline's division
        return (torch.nn.functional.interpolate(rgb, scale_factor=2, mode="nearest"),)


def test_fit_recovers_linear_factors():
    truth = torch.tensor([[0.3, 0.1, -0.2], [0.0, 0.5, 0.1], [-0.4, 0.2, 0.3], [0.1, -0.1, -0.6], [0.05, -0.02, 0.1]])
    latents = torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    fitted = fit_linear_factors(LinearStubVAE(truth), latents)
    assert fitted.shape == (5, 3)
    torch.testing.assert_close(fitted, truth, atol=1e-5, rtol=0)


def test_fit_on_tiny_vae_latents_and_images(components):
    vae = components["vae"]
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    from_latents = fit_linear_factors(vae, latents)
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    from_images = fit_linear_factors(vae, images)
    assert from_latents.shape == from_images.shape == (5, 3)
    assert torch.isfinite(from_latents).all() and torch.isfinite(from_images).all()
    # the fit beats the zero predictor on its own data
    with torch.no_grad():
        target = torch.nn.functional.avg_pool2d(vae.decode(latents / vae.config.scaling_factor).sample, 2)
    err = (linear_decode(latents, from_latents) - target).pow(2).mean()
    assert err < (target - target.mean()).pow(2).mean()


def test_save_and_load_factors(tmp_path):
    assert load_linear_factors(str(tmp_path)) is None
    path = save_linear_factors(SD15_LATENT_RGB_FACTORS, str(tmp_path))
    assert path.endswith("preview_factors.json")
    torch.testing.assert_close(load_linear_factors(str(tmp_path)), SD15_LATENT_RGB_FACTORS)


def test_decoders_return_pil(components):
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    lin = decode_preview(z, "linear")
    assert len(lin) == 2 and lin[0].size == (8, 8)
    vae = decode_preview(z, "vae", vae=components["vae"])
    assert vae[0].size == (16, 16)
    taesd = decode_preview(z, "taesd", taesd=tiny_taesd())
    assert taesd[0].size == (16, 16) and taesd[0].mode == "RGB"
    with pytest.raises(ValueError, match="taesd"):
        decode_preview(z, "taesd")
    with pytest.raises(ValueError, match="preview_decoder='jpeg'"):
        decode_preview(z, "jpeg")


@pytest.mark.parametrize("decoder", ["linear", "taesd", "vae"])
def test_pipeline_previews(components, decoder):
    pipe = TracingStableDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", num_inference_steps=2, guidance_scale=4.0, height=16, width=16, output_type="np",
               preview_every=1, preview_decoder=decoder, preview_targets=("x_t", "x0_guided"),
               preview_taesd=tiny_taesd() if decoder == "taesd" else None,
               generator=torch.Generator().manual_seed(0))
    assert out.trace is not None and len(out.trace) == 2  # previews imply light recording
    size = (8, 8) if decoder == "linear" else (16, 16)
    for record in out.trace:
        assert sorted(record.previews) == ["x0_guided", "x_t"]
        assert record.previews["x0_guided"][0].size == size
    if decoder == "vae":  # the last step's x0 preview is the image itself, up to one more step
        final = np.asarray(record.previews["x0_guided"][0], dtype=np.float32) / 255
        assert np.abs(final - out.images[0]).mean() < 0.02, np.abs(final - out.images[0]).mean()


# ------------------------------------------------------------------------------ per-model choice


def test_choose_preview_decoder_follows_the_cost_rule():
    from pipelines.previews import choose_preview_decoder

    everything = ("linear", "taesd", "vae")
    assert choose_preview_decoder(everything, 0.009, 0.1).default == "vae"  # 9% of a step: cheap
    assert choose_preview_decoder(everything, 0.011, 0.1).default == "taesd"  # 11%: TAESD when there is one
    assert choose_preview_decoder(("linear", "vae"), 0.5, 0.1).default == "linear"
    small = choose_preview_decoder(("linear", "vae"), 0.03, 0.1, latent_side=8)  # 8x8 linear blocks are unreadable
    assert small.default == "vae" and "8x8" in small.reason and "30%" in small.reason
    assert choose_preview_decoder(("vae",), 1.0, 0.1).default == "vae"


def test_taesd_is_offered_only_when_loaded(components):
    from pipelines.previews import available_preview_decoders, preview_choice_for

    pipe = TracingStableDiffusionPipeline(**components)
    assert available_preview_decoders(pipe) == ("linear", "vae")
    pipe.preview_taesd = tiny_taesd()
    assert available_preview_decoders(pipe) == ("linear", "taesd", "vae")
    choice = preview_choice_for(pipe)  # measured on the real modules
    assert choice.default in choice.available and "of a denoising step" in choice.reason
