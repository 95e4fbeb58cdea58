"""Multi-LoRA blending (pipelines/lora/blender.py) on tiny seeded components with random LoRAs.

Parity is checked against diffusers' own ``load_lora_weights`` + ``set_adapters`` on a stock
``StableDiffusionPipeline``; step ranges against a spliced run; concurrency against solo runs.
"""
from __future__ import annotations

import builtins
import os
import shutil
import threading

import numpy as np
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from pipelines.lora import AdapterSetting, Blend, LoraBlender, lora_grid
from pipelines.lora.layers import plan_of
from testkit.lora_factory import ATTENTION_TARGETS, RESNET_TARGETS, random_lora, save_diffusers_lora, save_kohya_lora
from testkit.stock_pipe import CALL, PROMPT, gen, make_pipe, run

def tracing_cls():
    from pipelines.tracing import TracingStableDiffusionPipeline

    return TracingStableDiffusionPipeline


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """a: attention + resnet + text encoder (alpha != rank); b: attention + text encoder;
    c, d: attention only, UNet only; a_kohya: a with kohya keys."""
    folder = str(tmp_path_factory.mktemp("loras"))
    ref = make_pipe()
    loras = {
        "a": random_lora(ref.unet, ref.text_encoder, seed=1, rank=4, alpha=2, unet_targets=ATTENTION_TARGETS + RESNET_TARGETS),
        "b": random_lora(ref.unet, ref.text_encoder, seed=2, rank=2),
        "c": random_lora(ref.unet, None, seed=3, rank=4),
        "d": random_lora(ref.unet, None, seed=4, rank=8, alpha=4),
    }
    files = {name: save_diffusers_lora(lora, folder, f"{name}.safetensors") for name, lora in loras.items()}
    files["a_kohya"] = save_kohya_lora(loras["a"], os.path.join(folder, "a_kohya.safetensors"))
    return files


def diffusers_reference(lora_files, names):
    pipe = make_pipe()
    for name in names:
        path = lora_files[name]
        pipe.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), adapter_name=name)
    return pipe


@pytest.fixture(scope="module")
def stock_blender(lora_files):
    blender = LoraBlender(make_pipe())
    for name in "abcd":
        blender.load(name, lora_files[name])
    return blender


@pytest.fixture(scope="module")
def base_image():
    return run(make_pipe())


# ----------------------------------------------------------------------------- parity with diffusers


def test_weight_zero_equals_no_lora_exactly(stock_blender, base_image):
    for blend in (Blend.of({"a": 0.0}), Blend.of({"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}), None,
                  Blend((AdapterSetting("a", 0.0, text_encoder_weight=0.0),))):
        with stock_blender.apply(blend) as pipe:
            assert np.array_equal(run(pipe), base_image), blend
    with stock_blender.apply(Blend.of({"a": 0.5})) as pipe:  # and a non-zero weight does change it
        assert np.abs(run(pipe) - base_image).max() > 1e-3


@pytest.mark.parametrize("weight", [0.7, -1.3])
def test_one_adapter_equals_diffusers_set_adapters(stock_blender, lora_files, weight):
    ref = diffusers_reference(lora_files, ["a"])
    ref.set_adapters(["a"], [weight])
    expected = run(ref)
    with stock_blender.apply(Blend.of({"a": weight})) as pipe:
        got = run(pipe)
    assert np.abs(got - expected).max() <= 1e-5


def test_two_adapter_blend_equals_diffusers_set_adapters(stock_blender, lora_files):
    ref = diffusers_reference(lora_files, ["a", "b"])
    ref.set_adapters(["a", "b"], [0.6, -0.4])
    expected = run(ref)
    with stock_blender.apply(Blend.of({"a": 0.6, "b": -0.4})) as pipe:  # stacked: one pass per layer
        stacked = run(pipe)
    assert np.abs(stacked - expected).max() <= 1e-5
    per_adapter = LoraBlender(make_pipe(), stack_adapters=False)  # peft's own path: bit-identical
    for name in ("a", "b"):
        per_adapter.load(name, lora_files[name])
    with per_adapter.apply(Blend.of({"a": 0.6, "b": -0.4})) as pipe:
        assert np.array_equal(run(pipe), expected)


def test_four_adapters_with_separate_text_encoder_weights(stock_blender, lora_files, base_image):
    ref = diffusers_reference(lora_files, ["a", "b", "c", "d"])
    ref.set_adapters(["a", "b", "c", "d"], [{"unet": 0.5, "text_encoder": 1.5}, {"unet": -0.8, "text_encoder": 0.0},
                                            {"unet": 1.2}, {"unet": -2.0}])
    blend = Blend((AdapterSetting("a", 0.5, text_encoder_weight=1.5), AdapterSetting("b", -0.8, text_encoder_weight=0.0),
                   AdapterSetting("c", 1.2), AdapterSetting("d", -2.0)))
    with stock_blender.apply(blend) as pipe:
        got = run(pipe)
    assert np.abs(got - run(ref)).max() <= 1e-5
    assert np.abs(got - base_image).max() > 1e-3


def test_block_weights_equal_diffusers_nested_dict(stock_blender, lora_files):
    """Attention-only LoRA, every block group named: diffusers' nested dict means the same."""
    block_weights = {"down": 0.5, "mid": 1.2, "up": {"block_0": [0.2, -0.3]}}
    ref = diffusers_reference(lora_files, ["b"])
    ref.set_adapters(["b"], [{"unet": block_weights, "text_encoder": 0.9}])
    with stock_blender.apply(Blend((AdapterSetting("b", 0.9, block_weights=block_weights),))) as pipe:
        got = run(pipe)
    assert np.abs(got - run(ref)).max() <= 1e-5


def _scales(blender, adapter):
    """module name -> scaling of ``adapter`` where it is active (alpha / r folded in)."""
    return {name: module.scaling[adapter] for name, module in blender.pipe.unet.named_modules()
            if isinstance(module, BaseTunerLayer) and adapter in module.active_adapters}


def test_up_only_block_weights_leave_other_layers_untouched(stock_blender):
    with stock_blender.apply(Blend.of({"a": 0.8})):
        plain = _scales(stock_blender, "a")
    with stock_blender.apply(Blend((AdapterSetting("a", 0.8, block_weights={"up": 0.25}),))):
        up_only = _scales(stock_blender, "a")
    assert set(plain) == set(up_only)
    ups = [n for n in plain if n.startswith("up_blocks.")]
    others = [n for n in plain if not n.startswith("up_blocks.")]
    assert ups and any(".resnets." in n for n in ups) and any(n.startswith("down_blocks.0.resnets") for n in others)
    assert all(up_only[n] == plain[n] for n in others)  # down, mid and conv-level layers: the plain weight
    assert all(up_only[n] == pytest.approx(plain[n] * 0.25 / 0.8) for n in ups)
    with stock_blender.apply(Blend((AdapterSetting("a", 0.8, block_weights={"up": {"block_1": [0.0, 1.0]}}),))):
        per_layer = _scales(stock_blender, "a")
    assert not any(n.startswith("up_blocks.1.resnets.0.") for n in per_layer)  # scale 0: inactive
    assert all(per_layer[n] == pytest.approx(plain[n] / 0.8) for n in per_layer if n.startswith("up_blocks.1.resnets.1."))


def test_kohya_file_matches_its_diffusers_twin(lora_files, stock_blender):
    blender = LoraBlender(make_pipe())
    loaded = blender.load("a_kohya", lora_files["a_kohya"])
    assert loaded.format == "kohya" and set(loaded.components) == {"unet", "text_encoder"}
    assert loaded.num_layers == stock_blender.adapters["a"].num_layers
    with blender.apply(Blend.of({"a_kohya": 0.8})) as pipe:
        kohya = run(pipe)
    with stock_blender.apply(Blend.of({"a": 0.8})) as pipe:
        twin = run(pipe)
    assert np.abs(kohya - twin).max() <= 1e-6


# ----------------------------------------------------------------------------- files and validation


def test_pickle_files_refused_before_any_read(tmp_path, monkeypatch):
    blender = LoraBlender(make_pipe())
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never run"))
    for suffix in (".bin", ".pt", ".ckpt", ".pth"):
        path = tmp_path / f"lora{suffix}"
        torch.save({"x": torch.zeros(1)}, path)
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
        with pytest.raises(ValueError, match="pickle"):
            blender.load("x", path)
        monkeypatch.setattr(builtins, "open", real_open)
        assert str(path) not in opened
    disguised = tmp_path / "disguised.safetensors"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1)}, disguised)
    with pytest.raises(ValueError, match="not a safetensors file"):
        blender.load("x", disguised)
    assert blender.adapters == {}


def test_weights_validated_with_clear_messages(stock_blender):
    with pytest.raises(ValueError, match=r"weight of adapter 'a' = 2\.5 is out of range \[-2, 2\]"):
        AdapterSetting("a", 2.5)
    with pytest.raises(ValueError, match=r"text_encoder_weight of adapter 'a' = -3"):
        AdapterSetting("a", 1.0, text_encoder_weight=-3)
    with pytest.raises(ValueError, match=r"block_weights\['up'\]\['block_1'\]\[1\] of adapter 'a' = 2\.1"):
        AdapterSetting("a", 1.0, block_weights={"up": {"block_1": [0.5, 2.1]}})
    with pytest.raises(ValueError, match=r"unknown keys \['middle'\]"):
        AdapterSetting("a", 1.0, block_weights={"middle": 1.0})
    with pytest.raises(ValueError, match=r"step_range of adapter 'a' = \(0\.5, 0\.5\)"):
        AdapterSetting("a", 1.0, step_range=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"fuse=True cannot be combined with step ranges \(adapters \['a'\]\)"):
        Blend((AdapterSetting("a", step_range=(0.0, 0.4)),), fuse=True)
    with pytest.raises(ValueError, match=r"more than once"):
        Blend.of([AdapterSetting("a"), AdapterSetting("a", 0.5)])
    with pytest.raises(ValueError, match=r"\['zz'\] are not loaded"):
        with stock_blender.apply(Blend.of({"zz": 1.0})):
            pass
    with pytest.raises(ValueError, match=r"names block_5; this UNet has up blocks 0..1"):
        with stock_blender.apply(Blend((AdapterSetting("a", block_weights={"up": {"block_5": 1.0}}),))):
            pass
    with pytest.raises(ValueError, match=r"block_0 has 2 layers, got 3 values"):
        with stock_blender.apply(Blend((AdapterSetting("a", block_weights={"up": {"block_0": [1, 1, 1]}}),))):
            pass
    with pytest.raises(ValueError, match=r"cross_attention_kwargs\['scale'\]"):
        with stock_blender.apply(Blend.of({"a": 1.0})) as pipe:
            run(pipe, cross_attention_kwargs={"scale": 0.5})


def test_switching_blends_reads_no_file(lora_files, tmp_path, monkeypatch):
    for name in ("a", "b"):
        shutil.copy(lora_files[name], tmp_path / f"{name}.safetensors")
    blender = LoraBlender(make_pipe())
    blender.load("a", tmp_path / "a.safetensors")
    blender.load("b", tmp_path / "b.safetensors")
    with blender.apply(Blend.of({"a": 0.9, "b": -0.6})) as pipe:
        first = run(pipe)
    for name in ("a", "b"):
        os.remove(tmp_path / f"{name}.safetensors")

    def no_reads(*args, **kwargs):
        raise AssertionError(f"a file was opened while switching blends: {args[:1]}")

    import safetensors
    import safetensors.torch

    monkeypatch.setattr(builtins, "open", no_reads)
    monkeypatch.setattr(safetensors.torch, "load_file", no_reads)
    monkeypatch.setattr(safetensors, "safe_open", no_reads)
    for blend in (Blend.of({"a": 0.3}), Blend.of({"b": 1.7}), None, Blend.of({"a": 0.9, "b": -0.6})):
        with blender.apply(blend) as pipe:
            last = run(pipe)
    assert np.array_equal(last, first)


# ----------------------------------------------------------------------------- fuse


@pytest.fixture(scope="module")
def lowrank_blender(lora_files):
    """No dense copies: every active layer runs the low-rank form, so fusing merges them all."""
    blender = LoraBlender(make_pipe(), dense_budget_mb=0)
    for name in "abcd":
        blender.load(name, lora_files[name])
    return blender


def test_fuse_matches_unfused_and_restores_base_weights_bit_exactly(lowrank_blender):
    stock_blender = lowrank_blender
    blend = [AdapterSetting("a", 0.8, block_weights={"up": 0.3}), AdapterSetting("b", -0.5, text_encoder_weight=1.1),
             AdapterSetting("d", 1.4)]
    models = (stock_blender.pipe.unet, stock_blender.pipe.text_encoder)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    with stock_blender.apply(Blend(tuple(blend))) as pipe:
        unfused = run(pipe)
    with stock_blender.apply(Blend(tuple(blend), fuse=True)) as pipe:
        assert pipe.lora_path == "fused"
        # merged: every LoRA layer runs its base module, which now holds W + B A
        assert {plan_of(l.module) for l in stock_blender._layers} == {"base"}
        changed = [key for key, value in before[0].items() if not torch.equal(value, models[0].state_dict()[key])]
        assert changed and all(k.endswith("base_layer.weight") for k in changed)
        fused = run(pipe)
    assert np.abs(fused - unfused).max() <= 1e-5
    for model, saved in zip(models, before):
        now = model.state_dict()
        for key, value in saved.items():  # base and adapter weights
            assert torch.equal(now[key], value), key
        assert not any(m.merged for m in model.modules() if isinstance(m, BaseTunerLayer))
    with stock_blender.apply(Blend(tuple(blend))) as pipe:
        assert pipe.lora_path == "unfused"
        assert np.array_equal(run(pipe), unfused)
    with stock_blender.apply(None) as pipe:
        assert pipe.lora_path == "none"


def test_fused_restore_is_exact_even_when_run_many_times(lowrank_blender, base_image):
    """Merging and subtracting again (peft's unmerge) drifts; the restore must not, ever."""
    blend = Blend.of({"a": 1.7, "b": -1.9, "d": 2.0}, fuse=True)
    for _ in range(20):
        with lowrank_blender.apply(blend):
            pass
    with lowrank_blender.apply(None) as pipe:
        assert np.array_equal(run(pipe), base_image)


def test_fuse_leaves_dense_layers_as_they_are(stock_blender):
    """Dense layers already run the merged weight: fusing copies nothing and gives the same images."""
    blend = Blend.of({"a": 0.8, "b": -0.5, "d": 1.4})
    weights = [p.detach().clone() for p in stock_blender.pipe.unet.parameters()]
    with stock_blender.apply(blend) as pipe:
        plans = {plan_of(l.module) for l in stock_blender._layers}
        unfused = run(pipe)
    assert "dense" in plans
    with stock_blender.apply(Blend(blend.adapters, fuse=True)) as pipe:
        assert {plan_of(l.module) for l in stock_blender._layers} == plans
        assert all(torch.equal(p, w) for p, w in zip(pipe.unet.parameters(), weights))
        assert np.array_equal(run(pipe), unfused)


# ----------------------------------------------------------------------------- step ranges and the trace


@pytest.fixture(scope="module")
def tracing_blender(lora_files):
    blender = LoraBlender(make_pipe(tracing_cls()))
    for name in "abcd":
        blender.load(name, lora_files[name])
    return blender


def test_tracing_pipeline_takes_loras_like_stock(tracing_blender, stock_blender):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    assert isinstance(tracing_blender.pipe, StableDiffusionLoraLoaderMixin)
    blend = Blend.of({"a": 0.7, "c": -1.0})
    with tracing_blender.apply(blend) as pipe:
        traced = run(pipe)
    with stock_blender.apply(blend) as pipe:
        stock = run(pipe)
    assert np.abs(traced - stock).max() <= 1e-5


STEPS = 6


def test_step_range_first_half_follows_adapter_then_runs_without_it(tracing_blender, stock_blender):
    """(0, 0.5) of 6 steps: steps 0-2 with the adapter, 3-5 without.

    x_t entering steps 0..3 equals the full-range run's (the first three steps are the same
    computation); from there on the run equals one without the adapter's UNet part whose
    latents are replaced, after step 2, by the full-range run's: checked on the stock pipeline
    (callback path) and on the tracing pipeline (on_step_begin path) against the same spliced
    run. The prompt is encoded once, so the text-encoder part stays on in all of them.
    """
    call = dict(CALL, num_inference_steps=STEPS, output_type="latent")
    half = Blend((AdapterSetting("a", 1.0, step_range=(0.0, 0.5)),))
    with tracing_blender.apply(Blend.of({"a": 1.0})) as pipe:
        full = pipe(PROMPT, generator=gen(), record="light", **call)
    with tracing_blender.apply(half) as pipe:
        ranged = pipe(PROMPT, generator=gen(), record="light", **call)
    with tracing_blender.apply(None) as pipe:
        bare = pipe(PROMPT, generator=gen(), record="light", **call)

    for i in range(4):
        assert torch.equal(ranged.trace[i].x_t, full.trace[i].x_t), i
    assert not torch.allclose(ranged.trace[4].x_t, full.trace[4].x_t, atol=1e-4)
    assert not torch.allclose(ranged.trace[3].x_t, bare.trace[3].x_t, atol=1e-4)
    assert [r.adapters for r in ranged.trace] == [{"a": 1.0}] * 3 + [{}] * 3
    assert [r.adapters for r in full.trace] == [{"a": 1.0}] * STEPS

    splice_at = full.trace[3].x_t  # latents after step 2 of the full-range run

    def splice(pipe, i, t, kwargs):
        return {"latents": splice_at.clone()} if i == 2 else kwargs

    unet_off = Blend((AdapterSetting("a", 0.0, text_encoder_weight=1.0),))
    with stock_blender.apply(unet_off) as pipe:
        spliced = pipe(PROMPT, generator=gen(), callback_on_step_end=splice, **call).images
    with stock_blender.apply(half) as pipe:
        stock_ranged = pipe(PROMPT, generator=gen(), **call).images
    assert torch.equal(stock_ranged, spliced)
    assert torch.equal(ranged.images, spliced)


def test_adapters_switch_only_when_the_active_set_changes(tracing_blender, monkeypatch):
    import pipelines.lora.layers

    calls = []
    real = pipelines.lora.layers.activate
    monkeypatch.setattr(pipelines.lora.layers, "activate", lambda module, names: (calls.append(module), real(module, names))[1])
    unet_layers_with_c = sum(1 for m in tracing_blender.pipe.unet.modules() if isinstance(m, BaseTunerLayer) and "c" in m.lora_A)
    call = dict(CALL, num_inference_steps=STEPS)
    with tracing_blender.apply(Blend.of({"c": 0.5, "d": 0.5})) as pipe:
        calls.clear()
        pipe(PROMPT, generator=gen(), **call)
        assert calls == []  # full-range blend: nothing to switch inside the loop
    blend = Blend((AdapterSetting("c", 0.5, step_range=(0.0, 0.5)), AdapterSetting("d", 0.5)))
    with tracing_blender.apply(blend) as pipe:
        calls.clear()
        out = pipe(PROMPT, generator=gen(), record="light", **call)
        assert len(calls) == unet_layers_with_c  # one switch, at step 3, on the layers that hold c
    assert [r.adapters for r in out.trace] == [{"c": 0.5, "d": 0.5}] * 3 + [{"d": 0.5}] * 3


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_blends_each_equal_their_solo_run(tracing_blender):
    blends = [
        None,
        Blend.of({"a": 1.0}),
        Blend((AdapterSetting("b", -1.0, text_encoder_weight=0.5), AdapterSetting("c", 0.8, step_range=(0.0, 0.4)))),
        Blend((AdapterSetting("a", 0.5, block_weights={"down": 0.0}), AdapterSetting("b", 0.5),
               AdapterSetting("c", -0.5, step_range=(0.5, 1.0)), AdapterSetting("d", 1.0))),
        Blend.of({"a": 0.6, "d": -0.9}, fuse=True),
    ]
    call = dict(CALL, num_inference_steps=5)

    def generate(blend):
        with tracing_blender.apply(blend) as pipe:
            out = pipe(PROMPT, generator=gen(), record="light", **call)
        return out.images, [r.adapters for r in out.trace]

    solo = [generate(b) for b in blends]
    assert all(not np.array_equal(solo[0][0], s[0]) for s in solo[1:])
    results, errors = {}, []
    barrier = threading.Barrier(len(blends) * 2)

    def worker(slot):
        try:
            barrier.wait()
            for repeat in range(2):
                results[(slot, repeat)] = generate(blends[slot % len(blends)])
        except Exception as e:  # reported below, with the thread's slot
            errors.append((slot, e))

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(len(blends) * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == len(blends) * 4
    for (slot, _), (images, adapters) in results.items():
        expected_images, expected_adapters = solo[slot % len(blends)]
        assert np.array_equal(images, expected_images), slot
        assert adapters == expected_adapters, slot


def test_apply_is_not_reentrant_on_one_thread(stock_blender):
    with stock_blender.apply(None):
        with pytest.raises(RuntimeError, match="inside apply"):
            with stock_blender.apply(Blend.of({"a": 1.0})):
                pass


def test_blender_needs_a_lora_capable_pipeline():
    with pytest.raises(TypeError, match="StableDiffusionLoraLoaderMixin"):
        LoraBlender(object())


# ----------------------------------------------------------------------------- comparison grid


def test_lora_grid_none_each_alone_and_blend(stock_blender, base_image):
    blend = Blend.of({"a": 0.8, "c": -0.6})
    grid = lora_grid(stock_blender, ["a red circle", "blue square"], blend, num_inference_steps=3, height=16, width=16,
                     guidance_scale=5.0)
    assert grid.columns == ["none", "a", "c", "blend"] and len(grid.images) == 2
    assert np.array_equal(np.asarray(grid.images[0][0]), (base_image[0] * 255).round().astype(np.uint8))
    first_row = [np.asarray(im) for im in grid.images[0]]
    assert all(not np.array_equal(first_row[0], im) for im in first_row[1:])
    assert grid.to_image().size == (4 * 16 + 3 * 2, 2 * 16 + 2)


# ----------------------------------------------------------------------------- cost paths


def _unet_ops(pipe) -> dict:
    """aten op name -> count for one UNet call (what the CPU actually runs)."""
    from collections import Counter

    torch.manual_seed(0)
    sample = torch.randn(2, 4, 8, 8)
    hidden = torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        pipe.unet(sample, 10, encoder_hidden_states=hidden)
    return Counter(e.name for e in prof.events() if e.name.startswith("aten::"))


def test_idle_adapters_run_the_same_ops_as_a_pipeline_without_lora(stock_blender):
    """Loaded but idle (no blend, or weight 0): each LoRA layer runs its base module, nothing else."""
    plain = _unet_ops(make_pipe())
    with stock_blender.apply(Blend.of({"a": 0.8, "b": 0.5})) as pipe:  # something was active before
        assert pipe.lora_path == "unfused" and "base" not in {plan_of(l.module) for l in stock_blender._layers
                                                              if "a" in l.module.lora_A}
    for blend in (None, Blend.of({"a": 0.0, "c": 0.0})):
        with stock_blender.apply(blend) as pipe:
            assert pipe.lora_path == "none"
            assert {plan_of(l.module) for l in stock_blender._layers} == {"base"}
            assert _unet_ops(pipe.pipeline) == plain


def test_one_stacked_pass_per_active_layer(lora_files):
    """Low-rank form (dense copies off): three adapters on a layer cost what one does,
    the base op + ``A x`` + one in-place ``addmm_``."""
    blender = LoraBlender(make_pipe(), dense_budget_mb=0)
    for name in "bcd":
        blender.load(name, lora_files[name])
    plain = _unet_ops(make_pipe())
    with blender.apply(Blend.of({"c": 0.8})) as pipe:
        one = _unet_ops(pipe.pipeline)
    with blender.apply(Blend.of({"b": 0.3, "c": 0.8, "d": -0.6})) as pipe:  # the same attention layers
        assert {plan_of(l.module) for l in blender._layers if l.component == "unet"} == {"stacked"}
        three = _unet_ops(pipe.pipeline)
        stacked = run(pipe)
    layers = sum(1 for l in blender._layers if l.component == "unet" and "c" in l.module.lora_A)
    assert one == three
    assert one["aten::addmm_"] - plain["aten::addmm_"] == layers
    assert one["aten::mm"] - plain["aten::mm"] == layers
    dense = LoraBlender(make_pipe())  # default budget: these small layers all get dense copies
    for name in "bcd":
        dense.load(name, lora_files[name])
    with dense.apply(Blend.of({"b": 0.3, "c": 0.8, "d": -0.6})) as pipe:
        assert {plan_of(l.module) for l in dense._layers if l.component == "unet"} == {"dense"}
        assert _unet_ops(pipe.pipeline) == plain  # the base ops on other weights: nothing added
        assert np.abs(run(pipe) - stacked).max() <= 1e-5


def test_a_repeated_blend_is_not_stacked_again(lora_files, monkeypatch):
    import pipelines.lora.layers

    blender = LoraBlender(make_pipe())
    for name in "abc":
        blender.load(name, lora_files[name])
    stacks = []
    real = pipelines.lora.layers.stacked_weights
    monkeypatch.setattr(pipelines.lora.layers, "stacked_weights", lambda m, n: (stacks.append(m), real(m, n))[1])
    first, second = Blend.of({"a": 0.8, "b": -0.4, "c": 1.2}), Blend.of({"a": 0.3})
    with blender.apply(first) as pipe:
        image = run(pipe)
    assert stacks  # built once
    with blender.apply(second):
        pass
    stacks.clear()
    with blender.apply(first) as pipe:
        again = run(pipe)
    with blender.apply(Blend(first.adapters, fuse=True)):
        pass
    assert stacks == []  # both from the cache
    assert np.array_equal(image, again)
