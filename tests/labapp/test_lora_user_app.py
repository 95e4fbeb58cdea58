"""Bring your own LoRA through a real Gradio server and gradio_client (issue 17): upload, inspect,
blend; per-session isolation (two clients are two sessions), concurrent blends that never cross,
the LRU bound, unloading that frees the weights, the upload limit, bad files, and Hub ids resolved
from a fake offline Hub cache (HF_HUB_OFFLINE=1; nothing reaches the network).
"""
from __future__ import annotations

import gc
import os
import threading
import weakref

import numpy as np
import pytest
import torch

from testkit.hostile_helpers import GENERATE_DEFAULTS
from testkit.lora_factory import ATTENTION_TARGETS, RESNET_TARGETS, random_lora, save_kohya_lora, write_safetensors

MAX_MB, MAX_ADAPTERS = 1, 3


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    from labapp import lora_user_ui
    from testkit.app_server import launch, tiny_engine

    lora_user_ui.configure(MAX_MB, MAX_ADAPTERS)
    engine = tiny_engine()
    demo, url = launch(engine, concurrency_limit=2)
    yield engine, url
    demo.close()
    lora_user_ui._limits.clear()


@pytest.fixture(scope="module")
def lora_paths(server, tmp_path_factory):
    engine, _ = server
    folder = tmp_path_factory.mktemp("byo")
    paths = []
    for seed in range(5):
        lora = random_lora(engine.pipe.unet, engine.pipe.text_encoder, seed=100 + seed, rank=2, std=0.3,
                           unet_targets=ATTENTION_TARGETS + RESNET_TARGETS)
        paths.append(save_kohya_lora(lora, str(folder / f"style{seed}.safetensors")))
    return paths


def client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def inspect(c, path):
    from gradio_client import handle_file

    return c.predict(file=handle_file(path), hub_id="", api_name="/lora_inspect")


def image(c, lora: str, seed: int = 3) -> np.ndarray:
    from PIL import Image

    out = c.predict(**(GENERATE_DEFAULTS | dict(lora=lora, seed=seed)), api_name="/generate")
    assert out[5].startswith("Done"), out[5]
    return np.asarray(Image.open(out[2]))


def test_upload_inspect_and_blend(server, lora_paths):
    _, url = server
    a = client(url)
    name, summary, report, plot = inspect(a, lora_paths[0])
    assert name.startswith("user-style0-") and f"`{name}`" in summary
    assert report["file"]["format"] == "kohya" and report["source"] == {"kind": "upload", "filename": "style0.safetensors"}
    assert report["ranks"] == [2] and {"attn1", "attn2", "resnet"} <= set(report["heatmap"]["kinds"])
    assert plot is not None
    assert not np.array_equal(image(a, f"{name}:1"), image(a, ""))
    assert np.array_equal(image(a, f"{name}:0"), image(a, ""))  # weight 0 is the base model, exactly


def test_another_session_never_sees_it(server, lora_paths):
    _, url = server
    a, b = client(url), client(url)
    name = inspect(a, lora_paths[1])[0]
    own = inspect(b, lora_paths[1])[0]  # the same file: B gets its own adapter, under another name
    assert own != name
    for call in (lambda: image(b, f"{name}:1"),
                 lambda: b.predict(name=name, api_name="/lora_unload"),
                 lambda: b.predict(prompt="a red circle", lora=f"{name}:1", seed=0, steps=2, guidance_scale=5,
                                   scheduler="DDIM", api_name="/lora_grid")):
        with pytest.raises(Exception, match=rf"(lora name|name)='{name}' is not allowed"):
            call()
    image(a, f"{name}:1")  # still A's


def test_two_sessions_blend_concurrently_without_crossing(server, lora_paths):
    _, url = server
    a, b = client(url), client(url)
    names = {"a": inspect(a, lora_paths[2])[0], "b": inspect(b, lora_paths[3])[0]}
    clients = {"a": a, "b": b}
    solo = {k: image(clients[k], f"{names[k]}:0.9") for k in names}
    assert not np.array_equal(solo["a"], solo["b"])
    results, errors = {"a": [], "b": []}, []

    def worker(key):
        try:
            for _ in range(3):
                results[key].append(image(clients[key], f"{names[key]}:0.9"))
        except Exception as error:  # broad on purpose: reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for key in names:
        assert len(results[key]) == 3
        for out in results[key]:
            np.testing.assert_array_equal(out, solo[key])


def test_lru_bound_and_unload_frees_the_weights(server, lora_paths):
    engine, url = server
    from labapp import lora_user_ui
    from pipelines.lora.inspector import _layers

    c = client(url)
    first = inspect(c, lora_paths[0])[0]
    params = [weakref.ref(p) for _, _, m in _layers(engine.pipe, first)
              for p in list(m.lora_A[first].parameters()) + list(m.lora_B[first].parameters())]
    assert params
    for path in lora_paths[1:4]:
        inspect(c, path)
    store = lora_user_ui.store(engine)
    assert len(store) <= MAX_ADAPTERS
    assert first not in store.names(c.session_hash) and first not in engine.blender.adapters
    with pytest.raises(Exception, match=rf"lora name='{first}' is not allowed"):
        image(c, f"{first}:1")
    gc.collect()
    assert all(ref() is None for ref in params), "an evicted adapter's weights are still referenced"
    last = store.names(c.session_hash)[-1]
    assert "Unloaded" in c.predict(name=last, api_name="/lora_unload")
    assert last not in engine.blender.adapters


def test_upload_limit_and_bad_files_keep_the_server_serving(server, lora_paths, tmp_path):
    _, url = server
    c = client(url)
    big = write_safetensors(str(tmp_path / "big.safetensors"), {"lora_unet_x.lora_down.weight": torch.zeros(300_000)})
    with pytest.raises(Exception, match=r"file='<\d+ bytes>' is not allowed: at most 1048576 bytes"):
        inspect(c, big)
    pickled = tmp_path / "evil.safetensors"
    import pickle

    pickled.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(Exception, match=r"is a pickle"):
        inspect(c, str(pickled))
    ckpt = tmp_path / "evil.ckpt"
    ckpt.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(Exception, match=r"pickle checkpoint"):
        inspect(c, str(ckpt))
    with pytest.raises(Exception, match=r"hub_id=.* is not allowed: empty when a file is uploaded"):
        from gradio_client import handle_file

        c.predict(file=handle_file(lora_paths[0]), hub_id="a/b", api_name="/lora_inspect")
    from testkit.hostile_helpers import upload

    # the upload route's own limit is the larger of the image and LoRA limits (5 MB here): a 413, nothing stored
    assert upload(url, "huge.safetensors", b"\0" * (6 * 2**20)).status_code == 413
    image(c, "")


def fake_hub(cache: str, repo: str, files: dict[str, str], revision: str = "0123456789abcdef0123456789abcdef01234567"):
    """huggingface_hub's cache layout: models--owner--name/{refs/main, snapshots/<rev>/<file>}."""
    import shutil

    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(revision)
    for name, source in files.items():
        target = os.path.join(root, "snapshots", revision, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(source, target)
    return revision


def test_hub_ids_from_an_offline_cache(server, lora_paths, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    _, url = server
    cache = str(tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rev = fake_hub(cache, "someone/shapes-lora", {"pytorch_lora_weights.safetensors": lora_paths[4]})
    fake_hub(cache, "someone/two-files", {"a.safetensors": lora_paths[4], "b.safetensors": lora_paths[3]})
    c = client(url)
    name, summary, report, _ = c.predict(file=None, hub_id="someone/shapes-lora", api_name="/lora_inspect")
    assert report["source"] == {"kind": "hub", "repo": "someone/shapes-lora", "file": "pytorch_lora_weights.safetensors",
                                "revision": rev, "filename": "pytorch_lora_weights.safetensors"}
    assert f"at revision `{rev}`" in summary
    image(c, f"{name}:1")
    name2 = c.predict(file=None, hub_id="someone/two-files/b.safetensors", api_name="/lora_inspect")[0]
    assert name2.startswith("user-b-")
    for hub_id, pattern in (("someone/two-files", r"holds 2 \.safetensors files"),
                            ("someone/missing", r"could not be found in the local Hub cache"),
                            ("../../etc/passwd", r"is not a Hub id"),
                            ("someone/shapes-lora/model.ckpt", r"pickle checkpoint")):
        with pytest.raises(Exception, match=pattern):
            c.predict(file=None, hub_id=hub_id, api_name="/lora_inspect")
