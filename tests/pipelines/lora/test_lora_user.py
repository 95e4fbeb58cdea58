"""Bring your own LoRA (issue 17), the pipelines side: reading a user's file safely, checking it
against the model, loading it into the blender like a preset, unloading it, and inspecting it.

Files are built in code (tests/lora_factory.py) on tiny seeded components; nothing is downloaded.
"""
from __future__ import annotations

import builtins
import io
import pickle
import struct

import numpy as np
import pytest
import torch

from pipelines.lora import AdapterSetting, Blend, LoraBlender
from pipelines.lora.inspector import delta_norm, inspect_adapter
from pipelines.lora.user import MAX_TENSORS, read_header, read_user_lora
from testkit.lora_factory import (
    ATTENTION_TARGETS, RESNET_TARGETS, loha_file, many_tiny_tensors, random_lora, raw_safetensors,
    save_diffusers_lora, save_kohya_lora, sdxl_like_kohya, write_safetensors,
)
from testkit.stock_pipe import make_pipe, run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


@pytest.fixture(scope="module")
def files(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("user-loras")
    lora = random_lora(pipe.unet, pipe.text_encoder, seed=11, rank=2, alpha=1.0,
                       unet_targets=ATTENTION_TARGETS + RESNET_TARGETS)
    out = {"lora": lora,
           "diffusers": save_diffusers_lora(lora, str(folder / "d"), "mine.safetensors"),
           "kohya": save_kohya_lora(lora, str(folder / "locon.safetensors"))}
    half = {k: v.half() for k, v in __import__("testkit.lora_factory", fromlist=["x"]).kohya_state_dict(lora).items()}
    out["kohya_fp16"] = write_safetensors(str(folder / "half.safetensors"), half)
    out["folder"] = folder
    return out


def refused(path, pipe, pattern):
    with pytest.raises(ValueError, match=pattern):
        read_user_lora(path, pipe)


# ------------------------------------------------------------------------------ reading and refusing


def test_peft_and_kohya_files_are_read_with_their_format(files, pipe):
    d = read_user_lora(files["diffusers"], pipe)
    k = read_user_lora(files["kohya"], pipe)
    assert (d.format, k.format) == ("diffusers", "kohya")
    assert d.components == k.components == ("unet", "text_encoder")
    assert k.metadata["ss_network_dim"] == "2" and len(k.sha256) == 64
    import hashlib

    assert k.sha256 == hashlib.sha256(open(files["kohya"], "rb").read()).hexdigest()


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_names_refused_before_any_read(files, pipe, suffix, monkeypatch):
    path = files["folder"] / f"evil{suffix}"
    path.write_bytes(pickle.dumps({"x": 1}))
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    refused(path, pipe, "pickle checkpoint")
    assert str(path) not in opened


def test_pickle_and_zip_refused_by_magic_bytes_without_torch_load(files, pipe, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads was called"))
    renamed = files["folder"] / "pickle.safetensors"
    renamed.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    refused(renamed, pipe, r"is a pickle \(starts with bytes 0x80 0x04")
    buf = io.BytesIO()
    torch.save({"unet.x.lora_A.weight": torch.zeros(2)}, buf)
    zipped = files["folder"] / "zip.safetensors"
    zipped.write_bytes(buf.getvalue())
    refused(zipped, pipe, "is a zip archive")


def test_truncated_file(files, pipe):
    data = open(files["kohya"], "rb").read()
    cut = files["folder"] / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    refused(cut, pipe, r"is truncated: its header describes \d+ bytes of tensors, the file holds \d+")


def test_header_claiming_huge_tensors(files, pipe):
    path = raw_safetensors(str(files["folder"] / "huge.safetensors"),
                           {"lora_unet_a.lora_down.weight": {"dtype": "F32", "shape": [2**20, 2**20],
                                                             "data_offsets": [0, 4 * 2**40]}}, b"\0" * 64)
    refused(path, pipe, r"claims shape \[1048576, 1048576\]")
    lying = raw_safetensors(str(files["folder"] / "lying.safetensors"),
                            {"lora_unet_a.lora_down.weight": {"dtype": "F32", "shape": [1000, 1000],
                                                              "data_offsets": [0, 16]}}, b"\0" * 16)
    refused(lying, pipe, r"declares 4000000 bytes \(F32 \[1000, 1000\]\) but its byte range holds 16")
    long_header = files["folder"] / "longheader.safetensors"
    long_header.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    refused(long_header, pipe, r"header of 1099511627776 bytes is over the limit")


def test_nan_and_inf_weights(files, pipe):
    from testkit.lora_factory import kohya_state_dict

    for bad, word in ((float("nan"), "NaN"), (float("inf"), "Inf")):
        state = kohya_state_dict(files["lora"])
        key = next(k for k in state if k.endswith("lora_up.weight"))
        state[key] = state[key].clone()
        state[key][0, 0] = bad
        path = write_safetensors(str(files["folder"] / f"{word}.safetensors"), state)
        refused(path, pipe, rf"tensor '{key}' holds {word} values")


def test_ten_thousand_tiny_tensors_refused_from_the_header(files, pipe, monkeypatch):
    path = many_tiny_tensors(str(files["folder"] / "many.safetensors"))
    import safetensors

    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: pytest.fail("tensors were read"))
    refused(path, pipe, rf"holds 10000 tensors; at most {MAX_TENSORS}")


def test_formats_it_cannot_apply_are_refused_by_name(files, pipe):
    refused(loha_file(str(files["folder"] / "loha.safetensors")), pipe, r"is LoHa \(LyCORIS")
    lokr = write_safetensors(str(files["folder"] / "lokr.safetensors"),
                             {"lora_unet_a.lokr_w1": torch.zeros(2, 2), "lora_unet_a.lokr_w2": torch.zeros(2, 2)})
    refused(lokr, pipe, r"is LoKr")
    emb = write_safetensors(str(files["folder"] / "emb.safetensors"), {"emb_params": torch.zeros(2, 16)})
    refused(emb, pipe, "textual-inversion embedding")


def test_sdxl_lora_on_this_model_names_first_mismatch_and_base_model(files, pipe):
    path = sdxl_like_kohya(str(files["folder"] / "sdxl.safetensors"))
    refused(path, pipe, r"does not fit this model: unet\.down_blocks\.1\.attentions\.0\.transformer_blocks\.0\."
                        r"attn2\.to_k\.lora_A\.weight has shape \[4, 2048\], the model's Linear .* needs \[4, 16\] "
                        r"\(the file's metadata says it was made for ss_base_model_version=sdxl_base_v1-0\)")
    te2 = write_safetensors(str(files["folder"] / "te2.safetensors"),
                            {"lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": torch.zeros(2, 32),
                             "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight": torch.zeros(32, 2)},
                            {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    refused(te2, pipe, r"text_encoder_2.*SDXL LoRA.*stable-diffusion-xl-v1-base/lora")
    sgm = write_safetensors(str(files["folder"] / "sgm.safetensors"),
                            {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(2, 8),
                             "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(8, 2)})
    refused(sgm, pipe, r"LDM/SGM block names")


def test_missing_module_is_named(files, pipe):
    path = write_safetensors(str(files["folder"] / "missing.safetensors"),
                             {"unet.down_blocks.7.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 8),
                              "unet.down_blocks.7.attentions.0.proj_in.lora_B.weight": torch.zeros(8, 2)})
    refused(path, pipe, r"targets unet\.down_blocks\.7\.attentions\.0\.proj_in, which this model does not have")


def test_header_is_read_without_tensor_data(files):
    header = read_header(files["kohya"])
    assert header.data_size == sum(e.end - e.start for e in header.tensors.values())
    assert header.metadata["ss_network_module"] == "networks.lora"


# ------------------------------------------------------------------------------ blending and unloading


def test_user_kohya_locon_blends_like_the_same_adapter_in_diffusers_form(files):
    blender = LoraBlender(make_pipe())
    blender.load("k", read_user_lora(files["kohya"], blender.pipe).path)
    blender.load("d", files["diffusers"])
    blender.load("h", files["kohya_fp16"])
    outs = {}
    for name in ("k", "d", "h"):
        blend = Blend((AdapterSetting(name, 0.7, block_weights={"down": 0.5, "mid": 1.0, "up": 1.5}),))
        with blender.apply(blend) as p:
            outs[name] = run(p)
    with blender.apply(Blend()) as p:
        base = run(p)
    assert np.abs(outs["k"] - base).max() > 1e-3  # it changes the image
    np.testing.assert_allclose(outs["k"], outs["d"], atol=1e-5)
    np.testing.assert_allclose(outs["h"], outs["k"], atol=2e-2)  # the fp16 copy of the same weights


def test_unload_restores_the_base_model_and_frees_the_layers(files):
    blender = LoraBlender(make_pipe())
    with blender.apply(Blend()) as p:
        before = run(p)
    blender.load("u", files["kohya"])
    with blender.apply(Blend((AdapterSetting("u", 1.0),))) as p:
        run(p)
    blender.unload("u")
    assert "u" not in blender.adapters
    assert not any("u" in l.module.lora_A for l in blender._layers)
    with blender.apply(Blend()) as p:
        np.testing.assert_array_equal(run(p), before)
    with pytest.raises(ValueError, match="not loaded"):
        blender.check_blend(Blend((AdapterSetting("u", 1.0),)))


# ------------------------------------------------------------------------------ inspector


def test_delta_norm_equals_the_dense_product():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 3, 3, generator=g).double(), torch.randn(7, 3, 1, 1, generator=g).double()
    dense = 0.5 * b.reshape(7, 3) @ a.reshape(3, -1)
    assert delta_norm(a, b, 0.5) == pytest.approx(float(dense.norm()), rel=1e-9)


def test_inspector_reports_ranks_alphas_kinds_and_block_heat(files):
    blender = LoraBlender(make_pipe())
    blender.load("k", files["kohya"])
    report = inspect_adapter(blender.pipe, "k")
    assert report["ranks"] == [2] and report["alphas"] == [1.0] and report["scales"] == [0.5]
    lora = files["lora"]
    assert report["num_layers"] == (len(lora.unet) + len(lora.text_encoder)) // 2
    kinds = {l["kind"] for l in report["layers"] if l["component"] == "unet"}
    assert {"attn1", "attn2", "resnet"} <= kinds
    assert report["counts"]["text encoder"]["self-attention"] == len(lora.text_encoder) // 2
    expected = sum(v.numel() for v in list(lora.unet.values()) + list(lora.text_encoder.values()))
    assert report["parameters"]["adapter_total"] == expected
    everything = sum(p.numel() for m in (blender.pipe.unet, blender.pipe.text_encoder) for p in m.parameters())
    assert report["parameters"]["base_total"] == everything - expected
    # one layer's norm against the file's own A and B
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    layer = next(l for l in report["layers"] if l["module"] == key)
    a, b = lora.unet[f"{key}.lora_A.weight"], lora.unet[f"{key}.lora_B.weight"]
    assert layer["delta_norm"] == pytest.approx(float((0.5 * b @ a).norm()), rel=1e-5)
    heat = report["heatmap"]
    row, col = heat["blocks"].index("down 1"), heat["kinds"].index("attn2")
    cell = [l["delta_norm"] for l in report["layers"] if l["block"] == "down 1" and l["kind"] == "attn2"]
    assert heat["values"][row][col] == pytest.approx(float(np.sqrt(np.sum(np.square(cell)))))


# ------------------------------------------------------------------------------ the store (LRU, sessions)


def test_store_evicts_the_least_recently_used_and_keeps_sessions_apart(files, pipe):
    from pipelines.lora.user_store import UserAdapterStore

    blender = LoraBlender(make_pipe())
    store = UserAdapterStore(blender, max_adapters=2, max_bytes=2**30)
    paths = []
    for seed in range(3):
        lora = random_lora(blender.pipe.unet, None, seed=200 + seed, rank=2)
        paths.append(save_kohya_lora(lora, str(files["folder"] / f"lru{seed}.safetensors")))
    first = store.add("s1", paths[0], {"kind": "upload"})
    second = store.add("s2", paths[1], {"kind": "upload"})
    assert store.add("s1", paths[0], {"kind": "upload"}) is first  # same file, same session: no second copy
    assert store.names("s1") == [first.name] and store.names("s2") == [second.name] and store.names(None) == []
    with pytest.raises(LookupError, match="no user adapter"):
        store.get("s2", first.name)
    with pytest.raises(LookupError):
        store.remove("s2", first.name)
    store.touch("s1", [first.name])  # first is now the most recently used
    third = store.add("s1", paths[2], {"kind": "upload"})
    assert second.name not in blender.adapters and store.names("s2") == []
    assert set(blender.adapters) == {first.name, third.name} and len(store) == 2
    assert store.nbytes == first.nbytes + third.nbytes > 0
    assert store.forget_session("s1") == 2 and not blender.adapters
