"""The StableDiffusionPipeline contract, one battery run against BOTH classes.

Every check is parametrized over diffusers' ``StableDiffusionPipeline`` ("stock") and ours: code
written for the stock class must run unchanged on ours. Where both do the same work, our images
equal stock's to 1e-5 (``assert_same_as_stock`` runs the stock class on fresh components of the
same seed). Where stock itself fails on transformers 5 (clip_skip: no ``.text_model``), the stock
param is marked xfail(strict), so the day it starts working the mark must go.

Tiny seeded components (testkit/tiny.py), CPU float32, 2-3 steps.
"""
import inspect
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.callbacks import SDCFGCutoffCallback
from diffusers.loaders import FromSingleFileMixin, IPAdapterMixin
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.utils import logging as diffusers_logging

from pipelines import TracingStableDiffusionPipeline
from testkit.lora_factory import random_lora, save_diffusers_lora
from testkit.tiny import make_tiny_components, tiny_ip_adapter

TOL = 1e-5
SIZE = 16
CLASSES = {"stock": StableDiffusionPipeline, "ours": TracingStableDiffusionPipeline}


@pytest.fixture(params=list(CLASSES))
def cls(request):
    return CLASSES[request.param]


def make_pipe(cls, components=None, **component_kwargs):
    components = components or make_tiny_components(**component_kwargs)
    pipe = cls(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_args(**kwargs):
    args = dict(prompt="a red circle", num_inference_steps=3, guidance_scale=5.0, height=SIZE, width=SIZE,
                output_type="np", generator=torch.Generator().manual_seed(0))
    return args | kwargs


def stock_images(setup=None, **kwargs):
    """Stock's images for the same call on fresh components; ``setup(pipe)`` prepares the pipe."""
    pipe = make_pipe(StableDiffusionPipeline)
    if setup is not None:
        setup(pipe)
    return pipe(**call_args(**kwargs)).images


def assert_same_as_stock(images, setup=None, **kwargs):
    expected = stock_images(setup, **kwargs)
    assert np.asarray(images).shape == np.asarray(expected).shape
    assert np.abs(np.asarray(images) - np.asarray(expected)).max() <= TOL


# ------------------------------------------------------------------------ class and output


def test_is_a_stock_pipeline_with_its_mixins(cls):
    assert issubclass(cls, StableDiffusionPipeline)
    assert issubclass(cls, IPAdapterMixin) and issubclass(cls, FromSingleFileMixin)
    for name in ("load_ip_adapter", "set_ip_adapter_scale", "unload_ip_adapter", "from_single_file",
                 "load_lora_weights", "load_textual_inversion", "enable_freeu", "fuse_qkv_projections",
                 "enable_attention_slicing", "enable_model_cpu_offload", "enable_sequential_cpu_offload"):
        assert callable(getattr(cls, name)), name
    assert cls._callback_tensor_inputs == ["latents", "prompt_embeds", "negative_prompt_embeds"]


def test_call_signature_names_the_real_arguments(cls):
    params = inspect.signature(cls.__call__).parameters
    stock = inspect.signature(StableDiffusionPipeline.__call__).parameters
    assert list(params)[: len(stock) - 1] == list(stock)[:-1]  # same names in the same order (kwargs last)
    for name in ("prompt", "height", "width", "guidance_scale", "negative_prompt", "prompt_embeds",
                 "negative_prompt_embeds", "cross_attention_kwargs", "ip_adapter_image_embeds",
                 "callback_on_step_end", "callback_on_step_end_tensor_inputs"):
        assert params[name].default == stock[name].default, name
    assert list(inspect.signature(cls.encode_prompt).parameters) == list(
        inspect.signature(StableDiffusionPipeline.encode_prompt).parameters)


def test_output_is_a_base_output_and_return_dict_false_a_tuple(cls):
    pipe = make_pipe(cls)
    out = pipe(**call_args())
    assert isinstance(out, StableDiffusionPipelineOutput)
    assert out[0] is out.images and out["images"] is out.images
    assert out.to_tuple() == (out.images,)  # nsfw is None: left out, as BaseOutput does
    images, nsfw = pipe(**call_args(return_dict=False))
    assert nsfw is None and images.shape == (1, SIZE, SIZE, 3)
    assert np.array_equal(images, out.images)
    assert_same_as_stock(images)


def test_output_types_agree(cls):
    pipe = make_pipe(cls)
    as_np = pipe(**call_args()).images
    as_pt = pipe(**call_args(output_type="pt")).images
    as_pil = pipe(**call_args(output_type="pil")).images
    latents = pipe(**call_args(output_type="latent")).images
    assert isinstance(as_pt, torch.Tensor) and isinstance(as_pil[0], PIL.Image.Image)
    assert np.abs(as_pt.permute(0, 2, 3, 1).numpy() - as_np).max() <= TOL
    assert np.abs(np.asarray(as_pil[0]) / 255.0 - as_np[0]).max() <= 1 / 255 + TOL
    assert latents.shape == (1, 4, 8, 8)


def test_unknown_output_type_falls_back_to_numpy_as_stock(cls):
    pipe = make_pipe(cls)
    with pytest.warns(FutureWarning, match="output_type jpg is outdated"):  # stock's own deprecation, kept
        images = pipe(**call_args(output_type="jpg")).images
    assert isinstance(images, np.ndarray)
    assert_same_as_stock(images)


@pytest.mark.parametrize("kwargs", [dict(guidance_rescale=1.5), dict(eta=-0.5), dict(eta=0.7, guidance_rescale=0.3)],
                         ids=["rescale>1", "eta<0", "eta+rescale"])
def test_values_stock_accepts(cls, kwargs):
    """The pipeline refuses only what it cannot run; the app keeps its own ranges (labapp/generate.py)."""
    images = make_pipe(cls)(**call_args(**kwargs)).images
    assert np.isfinite(images).all()
    assert_same_as_stock(images, **kwargs)


def test_batch_num_images_and_generator_list(cls):
    pipe = make_pipe(cls)
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    images = pipe(**call_args(prompt=["a red circle", "a blue dog"], negative_prompt=["green", "cat"],
                              num_images_per_prompt=2, generator=gens)).images
    assert images.shape == (4, SIZE, SIZE, 3)
    assert_same_as_stock(images, prompt=["a red circle", "a blue dog"], negative_prompt=["green", "cat"],
                         num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in range(4)])


def test_save_and_load_round_trip(cls, tmp_path):
    pipe = make_pipe(cls)
    before = pipe(**call_args()).images
    pipe.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is cls
    assert np.abs(loaded(**call_args()).images - before).max() <= TOL


# ------------------------------------------------------------------------ encode_prompt and LoRA scale


def test_encode_prompt_returns_what_stock_returns(cls):
    pipe, ref = make_pipe(cls), make_pipe(StableDiffusionPipeline)
    for args in [("a red circle", "cpu", 2, True), ("a red circle", "cpu", 1, False)]:
        kwargs = dict(negative_prompt="blue square") if args[3] else {}
        ours, stock = pipe.encode_prompt(*args, **kwargs), ref.encode_prompt(*args, **kwargs)
        assert isinstance(ours, tuple) and len(ours) == 2
        torch.testing.assert_close(ours[0], stock[0], atol=TOL, rtol=0)
        if stock[1] is None:
            assert ours[1] is None
        else:
            torch.testing.assert_close(ours[1], stock[1], atol=TOL, rtol=0)
    assert ours[0].shape == (1, 16, 16)


def _add_text_encoder_lora(pipe, tmp_path):
    """A random LoRA on the text encoder only (peft keys), loaded with stock's load_lora_weights."""
    lora = random_lora(None, pipe.text_encoder, seed=3, std=0.5)
    path = save_diffusers_lora(lora, str(tmp_path))
    pipe.load_lora_weights(str(tmp_path), weight_name="pytorch_lora_weights.safetensors", adapter_name="te")
    return path


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_cross_attention_scale_scales_text_encoder_lora(cls, tmp_path, scale):
    """Stock's encode_prompt scales the text encoder's LoRA layers by cross_attention_kwargs['scale']."""
    pipe = make_pipe(cls)
    _add_text_encoder_lora(pipe, tmp_path)
    images = pipe(**call_args(cross_attention_kwargs={"scale": scale})).images
    assert_same_as_stock(images, setup=lambda p: _add_text_encoder_lora(p, tmp_path),
                         cross_attention_kwargs={"scale": scale})
    full = pipe(**call_args()).images  # and the layers are back at their own scale afterwards
    if scale != 1.0:
        assert np.abs(images - full).max() > 1e-3  # the scale changes the image, so the test can fail
    assert np.abs(full - stock_images(setup=lambda p: _add_text_encoder_lora(p, tmp_path))).max() <= TOL


@pytest.mark.parametrize("clip_skip", [1])
def test_clip_skip(cls, clip_skip, request):
    if cls is StableDiffusionPipeline:  # FIELD-NOTES: stock reads text_encoder.text_model (gone in transformers 5)
        request.applymarker(pytest.mark.xfail(raises=AttributeError, strict=True,
                                              reason="stock diffusers 0.42.1 + transformers 5: no .text_model"))
    pipe = make_pipe(cls)
    skipped = pipe(**call_args(clip_skip=clip_skip)).images
    assert pipe.clip_skip == clip_skip
    cond, _ = pipe.encode_prompt("a red circle", "cpu", 1, False, clip_skip=clip_skip)
    te, tok = pipe.text_encoder, pipe.tokenizer
    ids = tok(["a red circle"], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        hand = te.final_layer_norm(te(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)])
    torch.testing.assert_close(cond, hand)
    assert np.abs(skipped - pipe(**call_args()).images).max() > 0


def test_long_prompt_truncation_warning(cls, caplog):
    pipe = make_pipe(cls)
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            pipe(**call_args(prompt=" ".join(["red circle"] * 20), num_inference_steps=1))
    finally:
        diffusers_logging.disable_propagation()
    assert any("truncated" in r.getMessage() and "circle" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------ callbacks and properties


def test_callback_on_step_end_edits_latents_and_sees_properties(cls):
    pipe = make_pipe(cls)
    seen = []

    def on_step_end(p, i, t, kwargs):
        seen.append((i, int(t), sorted(kwargs), p.guidance_scale, p.do_classifier_free_guidance,
                     p.cross_attention_kwargs, p.num_timesteps, p.interrupt))
        return {"latents": kwargs["latents"] * 0.9} if i == 1 else {}

    images = pipe(**call_args(callback_on_step_end=on_step_end,
                              callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
                              cross_attention_kwargs={})).images
    assert [s[0] for s in seen] == [0, 1, 2] and [s[1] for s in seen] == [667, 334, 1]
    assert seen[0][2:] == (["latents", "prompt_embeds"], 5.0, True, {}, 3, False)
    assert_same_as_stock(images, callback_on_step_end=lambda p, i, t, k: {"latents": k["latents"] * 0.9} if i == 1 else {},
                         cross_attention_kwargs={})
    assert np.abs(images - pipe(**call_args()).images).max() > 1e-3


def test_cfg_cutoff_callback_edits_prompt_embeds(cls):
    pipe = make_pipe(cls)
    images = pipe(**call_args(callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1))).images
    assert pipe.guidance_scale == 0.0 and not pipe.do_classifier_free_guidance
    assert_same_as_stock(images, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1))
    assert np.abs(images - pipe(**call_args()).images).max() > 1e-4


def test_callback_changing_guidance_scale_mid_run(cls):
    def lower_scale(p, i, t, kwargs):
        if i == 0:
            p._guidance_scale = 2.0
        return {}

    pipe = make_pipe(cls)
    images = pipe(**call_args(callback_on_step_end=lower_scale)).images
    assert pipe.guidance_scale == 2.0
    assert_same_as_stock(images, callback_on_step_end=lower_scale)
    assert np.abs(images - pipe(**call_args()).images).max() > 1e-4


def test_interrupt_skips_the_remaining_steps(cls):
    pipe = make_pipe(cls)
    calls = []

    def stop_after_first(p, i, t, kwargs):
        calls.append(i)
        p._interrupt = True
        return {}

    images = pipe(**call_args(callback_on_step_end=stop_after_first)).images
    assert calls == [0] and pipe.interrupt
    assert_same_as_stock(images, callback_on_step_end=stop_after_first)


def test_deprecated_callback_and_callback_steps(cls):
    pipe = make_pipe(cls)
    got = []
    with pytest.warns(FutureWarning, match="callback"):  # deprecated as stock deprecates them
        pipe(**call_args(callback=lambda i, t, latents: got.append((i, int(t), tuple(latents.shape))), callback_steps=2))
    assert got == [(0, 667, (1, 4, 8, 8)), (2, 1, (1, 4, 8, 8))]


def test_bad_callback_inputs_are_refused(cls):
    pipe = make_pipe(cls)
    with pytest.raises(ValueError, match="noise_pred"):
        pipe(**call_args(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise_pred"]))
    with pytest.raises(ValueError, match="callback_steps"), pytest.warns(FutureWarning, match="callback"):
        pipe(**call_args(callback=lambda *a: None, callback_steps=0))


# ------------------------------------------------------------------------ schedulers


def test_legacy_scheduler_config_is_normalized(cls):
    components = make_tiny_components()
    legacy = dict(components["scheduler"].config) | {"steps_offset": 0, "clip_sample": True}
    components["scheduler"] = DDIMScheduler.from_config(legacy)
    with pytest.warns(FutureWarning, match="steps_offset"):  # stock's own notice about the legacy config
        pipe = make_pipe(cls, components)
    assert pipe.scheduler.config.steps_offset == 1 and pipe.scheduler.config.clip_sample is False
    images = pipe(**call_args()).images
    ref_components = make_tiny_components()
    ref_components["scheduler"] = DDIMScheduler.from_config(legacy)
    with pytest.warns(FutureWarning, match="steps_offset"):
        ref = make_pipe(StableDiffusionPipeline, ref_components)
    assert np.abs(images - ref(**call_args()).images).max() <= TOL


def test_pipe_scheduler_is_advanced_by_a_call(cls):
    pipe = make_pipe(cls)
    pipe(**call_args())
    assert pipe.scheduler.timesteps.tolist() == [667, 334, 1]
    assert pipe.num_timesteps == 3


@pytest.mark.parametrize("custom", [dict(timesteps=[999, 500, 100]), dict(sigmas=[14.0, 3.0, 0.5])])
def test_custom_timesteps_and_sigmas(cls, custom):
    def euler(p):
        p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config)

    pipe = make_pipe(cls)
    euler(pipe)
    images = pipe(**call_args(num_inference_steps=None, **custom)).images
    assert pipe.num_timesteps == len(pipe.scheduler.timesteps)
    if "timesteps" in custom:
        assert pipe.scheduler.timesteps.tolist() == custom["timesteps"]
    assert_same_as_stock(images, setup=euler, num_inference_steps=None, **custom)


def test_custom_timesteps_refused_where_the_scheduler_has_none(cls):
    pipe = make_pipe(cls)  # DDIM's set_timesteps takes no timesteps list
    with pytest.raises(ValueError, match="custom"):
        pipe(**call_args(num_inference_steps=None, timesteps=[999, 500, 100]))


# ------------------------------------------------------------------------ stock's steps as methods


def test_stock_step_methods(cls):
    pipe, ref = make_pipe(cls), make_pipe(StableDiffusionPipeline)
    for p in (pipe, ref):
        p.scheduler.set_timesteps(3)
    args = (2, 4, SIZE, SIZE, torch.float32, "cpu", torch.Generator().manual_seed(0))
    latents = pipe.prepare_latents(*args)
    torch.testing.assert_close(latents, ref.prepare_latents(*args[:-1], torch.Generator().manual_seed(0)))
    assert latents.shape == (2, 4, 8, 8)
    assert pipe.prepare_extra_step_kwargs(None, 0.3) == {"eta": 0.3, "generator": None}
    with pytest.warns(FutureWarning), torch.no_grad():
        image = pipe.decode_latents(latents)
    assert image.shape == (2, SIZE, SIZE, 3) and 0 <= image.min() and image.max() <= 1
    w = torch.tensor([1.5, 6.0])
    torch.testing.assert_close(pipe.get_guidance_scale_embedding(w, 32), ref.get_guidance_scale_embedding(w, 32))
    with pytest.raises(ValueError):
        pipe.check_inputs("a cat", 15, SIZE, None)
    pipe.check_inputs("a cat", SIZE, SIZE, None)


# ------------------------------------------------------------------------ model variants


def _lcm_components():
    components = make_tiny_components()
    torch.manual_seed(0)
    components["unet"] = UNet2DConditionModel.from_config(components["unet"].config, time_cond_proj_dim=32).eval()
    components["scheduler"] = LCMScheduler.from_config(components["scheduler"].config)
    return components


def test_guidance_embedded_unet_with_lcm_scheduler(cls):
    """LCM-distilled UNets: no CFG batch, w - 1 as timestep_cond; custom timesteps as LCM takes them."""
    pipe = make_pipe(cls, _lcm_components())
    images = pipe(**call_args(guidance_scale=8.0)).images
    assert not pipe.do_classifier_free_guidance
    ref = make_pipe(StableDiffusionPipeline, _lcm_components())
    assert np.abs(images - ref(**call_args(guidance_scale=8.0)).images).max() <= TOL
    custom = pipe(**call_args(num_inference_steps=None, timesteps=[999, 499])).images
    assert np.abs(custom - ref(**call_args(num_inference_steps=None, timesteps=[999, 499])).images).max() <= TOL


def test_ip_adapter_loaded_from_a_file(cls, tmp_path):
    """load_ip_adapter reads a .safetensors IP-Adapter (no image encoder: image embeds are given)."""
    from safetensors.torch import save_file

    state = tiny_ip_adapter(make_tiny_components()["unet"])
    save_file({f"{part}.{k}": v for part, tensors in state.items() for k, v in tensors.items()},
              str(tmp_path / "ip.safetensors"))

    def load(p):
        p.load_ip_adapter(str(tmp_path), subfolder="", weight_name="ip.safetensors", image_encoder_folder=None)
        p.set_ip_adapter_scale(0.7)

    embeds = [torch.randn(2, 1, 8, generator=torch.Generator().manual_seed(9))]  # (negative, positive)
    pipe = make_pipe(cls)
    load(pipe)
    images = pipe(**call_args(ip_adapter_image_embeds=embeds)).images
    assert_same_as_stock(images, setup=load, ip_adapter_image_embeds=embeds)
    pipe.set_ip_adapter_scale(0.0)
    assert np.abs(images - pipe(**call_args(ip_adapter_image_embeds=embeds)).images).max() > 1e-4


def test_from_single_file_refuses_a_missing_file_like_stock(cls, tmp_path):
    with pytest.raises(Exception) as ours:
        cls.from_single_file(str(tmp_path / "missing.safetensors"), config=str(tmp_path))
    with pytest.raises(Exception) as stock:
        StableDiffusionPipeline.from_single_file(str(tmp_path / "missing.safetensors"), config=str(tmp_path))
    assert type(ours.value) is type(stock.value)


# ------------------------------------------------------------------------ memory and speed switches


def _small_tiles(vae):
    """VAE tiling with 8-px tiles, so the 16-px image really is decoded in overlapping tiles."""
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = 8, 4


SWITCHES = {
    "freeu": lambda p: p.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4),
    "fused-qkv": lambda p: p.fuse_qkv_projections(),
    "attention-slicing": lambda p: p.enable_attention_slicing(1),
    "vae-slicing": lambda p: p.vae.enable_slicing(),
    "vae-tiling": lambda p: _small_tiles(p.vae),
}


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_switches_work_as_in_stock(cls, switch):
    pipe = make_pipe(cls)
    plain = pipe(**call_args(num_images_per_prompt=2)).images
    SWITCHES[switch](pipe)
    images = pipe(**call_args(num_images_per_prompt=2)).images
    assert_same_as_stock(images, setup=SWITCHES[switch], num_images_per_prompt=2)
    if switch in ("freeu", "vae-tiling"):  # these change the result, so the comparison can fail
        assert np.abs(images - plain).max() > 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload moves modules to an accelerator")
def test_model_cpu_offload(cls):
    pipe = make_pipe(cls)
    pipe.enable_model_cpu_offload()
    images = pipe(**call_args()).images
    assert_same_as_stock(images, setup=lambda p: p.enable_model_cpu_offload())
    assert pipe.unet.device.type == "cpu"  # offloaded again after the call
