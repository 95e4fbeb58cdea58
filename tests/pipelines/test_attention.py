"""Cross-attention recorder (pipelines/attention.py) on tiny seeded components.

What must hold: the recorded probabilities are the ones the layer really used (P @ V through the
layer's output projection gives its output, LoRA or not); each per-head map row is a distribution
over tokens and the aggregated maps keep that; only the conditional rows are recorded; images are
bit-identical with the recorder off, on, and in stock diffusers; the processors go back afterwards.
"""
from __future__ import annotations

import os

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import Attention

from pipelines import GuidanceConfig, TracingStableDiffusionPipeline
from pipelines.attention import AttentionRecorder, attention_probs, grid_size
from pipelines.img2img import SDEditStart
from pipelines.inpaint import InpaintStart
from testkit.lora_factory import random_lora, save_diffusers_lora
from testkit.tiny import make_tiny_components

PROMPT = "a red circle"
CALL = dict(prompt=PROMPT, num_inference_steps=3, guidance_scale=5.0, output_type="np", height=32, width=32)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    p = TracingStableDiffusionPipeline(**make_tiny_components())
    p.set_progress_bar_config(disable=True)
    return p


def cross_attention_modules(unet):
    return [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]


def check_probs_reproduce_output(attn: Attention, seed: int = 0):
    """P @ V, merged over heads and projected by to_out, equals the layer's own output."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 64, attn.query_dim, generator=g)
    context = torch.randn(2, 7, attn.to_k.in_features, generator=g)
    probs = attention_probs(attn, hidden, context)  # (B, heads, N, L)
    assert probs.shape == (2, attn.heads, 64, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, attn.heads, 64))
    value = attn.to_v(context)
    value = value.view(2, -1, attn.heads, value.shape[-1] // attn.heads).transpose(1, 2)  # (B, heads, L, d)
    mixed = (probs @ value).transpose(1, 2).reshape(2, 64, -1)
    expected = attn(hidden, encoder_hidden_states=context)
    torch.testing.assert_close(attn.to_out[0](mixed), expected, atol=1e-5, rtol=1e-4)


def test_probabilities_are_the_ones_the_layer_uses(pipe):
    modules = cross_attention_modules(pipe.unet)
    assert modules
    for k, attn in enumerate(modules):
        check_probs_reproduce_output(attn, seed=k)


def test_grid_size_follows_the_unet_levels():
    assert grid_size(256, (16, 16)) == (16, 16)
    assert grid_size(64, (16, 16)) == (8, 8)
    assert grid_size(6, (5, 9)) == (2, 3)  # ceil halving: 5x9 -> 3x5 -> 2x3
    with pytest.raises(ValueError, match="no level"):
        grid_size(7, (16, 16))


def test_each_head_is_a_distribution_and_maps_keep_it(pipe):
    seen = []
    out = pipe(generator=seeded(), record_attention="levels", **CALL)
    with AttentionRecorder(pipe.unet, on_layer=lambda p: seen.append(p.clone())) as rec:
        latents = torch.randn(2, 4, 16, 16, generator=seeded(1))
        text = pipe.encode_prompt(PROMPT, "cpu", 1, True)
        rec.expect(slice(1, 2), (16, 16))
        pipe.unet(latents, 500, encoder_hidden_states=torch.cat([text[1], text[0]]))
        maps = rec.take()
    assert len(seen) == len(cross_attention_modules(pipe.unet)) == maps.layers
    for probs in seen:  # (B=1 conditional row, heads, N, L): a distribution over tokens per head and position
        assert probs.shape[0] == 1 and probs.shape[-1] == pipe.tokenizer.model_max_length
        assert (probs >= 0).all()
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    length = pipe.tokenizer.model_max_length
    assert maps.maps.shape == (1, length, 16, 16)
    # the aggregate is the mean over layers of each layer's head-mean, upsampled bilinearly to the latent
    reference = torch.stack([
        torch.nn.functional.interpolate(p.mean(1).transpose(1, 2).reshape(1, length, *grid_size(p.shape[2], (16, 16))),
                                        size=(16, 16), mode="bilinear", align_corners=False) for p in seen]).mean(0)
    torch.testing.assert_close(maps.maps, reference)
    assert len(out.trace) == 3
    for record in out.trace:
        a = record.attention
        assert a.maps.shape == (1, length, 16, 16) and a.maps.dtype == torch.float32
        torch.testing.assert_close(a.maps.sum(1), torch.ones(1, 16, 16))
        assert set(a.levels) == {"8x8"}  # the tiny UNet cross-attends at its 8x8 level only
        torch.testing.assert_close(a.levels["8x8"].sum(1), torch.ones(1, 8, 8))
        torch.testing.assert_close(a.token_mass().sum(-1), torch.ones(1))
    assert not any(r.attention.levels for r in pipe(generator=seeded(), record_attention=True, **CALL).trace)


def test_off_is_bit_identical_and_touches_nothing(pipe):
    before = dict(pipe.unet.attn_processors)
    stock = StableDiffusionPipeline(**make_tiny_components(), requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    reference = stock(generator=seeded(), **CALL).images
    off = pipe(generator=seeded(), **CALL)
    on = pipe(generator=seeded(), record_attention=True, **CALL)
    assert (off.images == reference).all()
    assert (on.images == reference).all()  # recording reads the probabilities beside the layer's own output
    assert off.trace is None and on.trace is not None  # record="off" + attention records in light mode
    after = dict(pipe.unet.attn_processors)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_closed_generator_puts_the_processors_back(pipe):
    before = dict(pipe.unet.attn_processors)
    steps = pipe.iter_steps(generator=seeded(), record_attention=True, **CALL)
    first = next(steps)
    assert first.attention is not None
    assert any(type(p).__name__ == "_RecordingProcessor" for p in pipe.unet.attn_processors.values())
    steps.close()  # a stopped generation
    assert all(pipe.unet.attn_processors[k] is before[k] for k in before)


def test_only_the_conditional_branch_is_recorded(pipe):
    """At step 0 the UNet sees the same latents in both runs: CFG's recorded maps must equal the maps
    of a run with the conditional branch alone (scale 1), and differ from the negative prompt's."""
    cfg = pipe(generator=seeded(), record_attention=True, negative_prompt="blue square", **CALL).trace[0]
    cond_only = pipe(generator=seeded(), record_attention=True, **{**CALL, "guidance_scale": 1.0}).trace[0]
    negative_only = pipe(generator=seeded(), record_attention=True,
                         **{**CALL, "prompt": "blue square", "guidance_scale": 1.0}).trace[0]
    torch.testing.assert_close(cfg.attention.maps, cond_only.attention.maps, atol=1e-6, rtol=1e-5)
    assert (cfg.attention.maps - negative_only.attention.maps).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["cfg", "apg", "cfg-zero-star", "perp-neg"])
def test_every_guidance_method_with_a_conditional_branch(pipe, method):
    kw = dict(CALL, negative_prompt="blue square", guidance=GuidanceConfig(method=method), num_images_per_prompt=2)
    plain = pipe(generator=[seeded(0), seeded(1)], **kw)
    recorded = pipe(generator=[seeded(0), seeded(1)], record_attention=True, **kw)
    assert (plain.images == recorded.images).all()
    cond_only = pipe(generator=[seeded(0), seeded(1)], record_attention=True,
                     **{**kw, "guidance": None, "guidance_scale": 1.0})
    for record in recorded.trace:
        assert record.attention.maps.shape[0] == 2
        torch.testing.assert_close(record.attention.maps.sum(1), torch.ones(2, 16, 16))
    torch.testing.assert_close(recorded.trace[0].attention.maps, cond_only.trace[0].attention.maps, atol=1e-6, rtol=1e-5)


def test_with_a_lora_active(pipe, tmp_path):
    components = make_tiny_components()
    lora_pipe = TracingStableDiffusionPipeline(**components)
    lora_pipe.set_progress_bar_config(disable=True)
    lora = random_lora(lora_pipe.unet, None, seed=3, rank=4, std=0.5)
    path = save_diffusers_lora(lora, str(tmp_path), "a.safetensors")
    lora_pipe.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), adapter_name="a")
    for k, attn in enumerate(cross_attention_modules(lora_pipe.unet)):  # to_q / to_k are peft LoRA layers now
        assert type(attn.to_q).__module__.startswith("peft")
        check_probs_reproduce_output(attn, seed=k)
    plain = lora_pipe(generator=seeded(), **CALL)
    recorded = lora_pipe(generator=seeded(), record_attention=True, **CALL)
    assert (plain.images == recorded.images).all()
    base = pipe(generator=seeded(), record_attention=True, **CALL)
    assert (recorded.trace[0].attention.maps - base.trace[0].attention.maps).abs().max() > 1e-4  # the LoRA moves the maps


def test_img2img_and_inpainting(pipe):
    image = torch.rand(1, 3, 32, 32, generator=seeded(2)) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    for start in (SDEditStart(image, 0.6), InpaintStart(image, mask, strength=1.0)):
        kw = dict(CALL, num_inference_steps=5)
        plain = pipe(generator=seeded(), start=start, **kw)
        recorded = pipe(generator=seeded(), start=type(start)(*_start_args(start)), record_attention=True, **kw)
        assert (plain.images == recorded.images).all()
        assert recorded.trace and all(r.attention is not None for r in recorded.trace)
        assert len(recorded.trace) == recorded.trace[0].num_steps


def _start_args(start):
    return (start.image, start.strength) if isinstance(start, SDEditStart) else (start.image, start.mask, start.strength)


def test_record_attention_is_checked(pipe):
    for bad in ("yes", 1, "Levels"):
        with pytest.raises(ValueError, match="record_attention"):
            pipe(generator=seeded(), record_attention=bad, **CALL)


def test_beside_either_attention_processor():
    """SDPA (AttnProcessor2_0, the default on torch 2 and what a GPU runs) and the classic AttnProcessor:
    recording changes neither's images, and both give the same maps."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    maps = {}
    for processor in (AttnProcessor2_0, AttnProcessor):
        p = TracingStableDiffusionPipeline(**make_tiny_components())
        p.set_progress_bar_config(disable=True)
        p.unet.set_attn_processor(processor())
        plain = p(generator=seeded(), **CALL)
        recorded = p(generator=seeded(), record_attention=True, **CALL)
        assert (plain.images == recorded.images).all()
        assert all(type(proc) is processor for proc in p.unet.attn_processors.values())  # put back
        maps[processor.__name__] = recorded.trace[0].attention.maps
    torch.testing.assert_close(maps["AttnProcessor2_0"], maps["AttnProcessor"], atol=1e-5, rtol=1e-4)


def test_second_order_sampler_records_each_step_once(pipe):
    """Heun calls the model twice a step: one map per step, from the step's first call (the record's)."""
    out = pipe(generator=seeded(), record_attention=True, scheduler="Heun", **CALL)
    assert len(out.trace) == 3 and all(r.attention is not None and r.model_calls for r in out.trace)
    assert out.trace[-1].model_calls > 3


def test_with_an_ip_adapter(tmp_path):
    """IP-Adapter's processors get (text, image features) as the context: the text's map is recorded,
    the images stay bit-identical."""
    from safetensors.torch import save_file

    from testkit.tiny import tiny_ip_adapter

    p = TracingStableDiffusionPipeline(**make_tiny_components())
    p.set_progress_bar_config(disable=True)
    state = tiny_ip_adapter(p.unet)
    save_file({f"{part}.{k}": v for part, tensors in state.items() for k, v in tensors.items()}, str(tmp_path / "ip.safetensors"))
    p.load_ip_adapter(str(tmp_path), subfolder="", weight_name="ip.safetensors", image_encoder_folder=None)
    p.set_ip_adapter_scale(0.7)
    embeds = [torch.randn(2, 1, 8, generator=seeded(9))]  # (negative, positive)
    plain = p(generator=seeded(), ip_adapter_image_embeds=embeds, **CALL)
    recorded = p(generator=seeded(), ip_adapter_image_embeds=embeds, record_attention=True, **CALL)
    assert (plain.images == recorded.images).all()
    maps = recorded.trace[0].attention.maps
    assert maps.shape == (1, p.tokenizer.model_max_length, 16, 16)
    torch.testing.assert_close(maps.sum(1), torch.ones(1, 16, 16))
