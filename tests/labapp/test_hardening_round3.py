"""Hardening round 3 (issue 30), the in-process parts: the settings-file parser and PNG chunk caps,
the LoRA rank cap and the inspector's memory, the user-adapter store (inspection before it is
added, freeing on failure, per-session quota, eviction message), number lists checked by length
first, the model-call budget on every endpoint that runs the model, and the Hub timeouts. The
server's own limits (body size, timeouts, upload quota, floods) are in tests/labapp/test_server_limits.py,
which shares one app process. Each test failed before its fix."""
from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib

import gradio as gr
import pytest
import torch
from PIL import Image

from labapp import engine as eng
from labapp import settings_file
from testkit.paths import ROOT


def png_with_chunk(kind: bytes, key: str, text: bytes) -> bytes:
    """A 8x8 PNG with one text chunk of ``kind`` (tEXt, zTXt, iTXt) written by hand."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()
    if kind == b"tEXt":
        body = key.encode("latin-1") + b"\0" + text
    elif kind == b"zTXt":
        body = key.encode("latin-1") + b"\0\0" + zlib.compress(text, 9)
    else:
        body = key.encode("latin-1") + b"\0\1\0" + b"\0" + b"\0" + zlib.compress(text, 9)
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:33] + chunk + data[33:]  # after IHDR (8-byte signature + 25-byte IHDR chunk)


@pytest.fixture(scope="module")
def tiny_pipe():
    torch.set_num_threads(1)
    from pipelines import TracingStableDiffusionPipeline
    from testkit.tiny import make_tiny_components

    pipe = TracingStableDiffusionPipeline(**make_tiny_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def engine(tiny_pipe):
    return eng.install(eng.engine_from_pipe(tiny_pipe, "tiny-test", "test components"))


# ------------------------------------------------------------------------------ 1. settings files


def test_a1111_parameters_parse_in_linear_time():
    """The regex backtracked quadratically: 10.6 s at 32k, 51 s at 64k characters (holding the GIL)."""
    line = "Steps: 4, " + "a" * 64_000
    started = time.perf_counter()
    pairs = settings_file.a1111_pairs(line)
    assert time.perf_counter() - started < 1.0  # ~1 ms here; the regex took ~51 s
    assert pairs == {"Steps": "4"}
    commas = "Steps: 4, " + "a," * 30_000 + "Seed: 5"  # every piece searched only up to its comma
    started = time.perf_counter()
    assert settings_file.a1111_pairs(commas) == {"Steps": "4", "Seed": "5"}
    assert time.perf_counter() - started < 1.0


def test_a1111_pairs_read_quoted_values_with_commas():
    line = 'Steps: 7, Sampler: DPM++ 2M, Lora hashes: "x: 1, y: 2", Note: "say \\"hi\\", ok", Version: v1.10.1'
    assert settings_file.a1111_pairs(line) == {"Steps": "7", "Sampler": "DPM++ 2M", "Lora hashes": "x: 1, y: 2",
                                               "Note": 'say "hi", ok', "Version": "v1.10.1"}


@pytest.mark.parametrize("kind", [b"tEXt", b"zTXt", b"iTXt"])
def test_every_text_chunk_kind_is_read(kind):
    data = png_with_chunk(kind, "parameters", b"a red circle\nSteps: 4, Seed: 9")
    assert settings_file.png_texts(data, ("parameters",)) == {"parameters": "a red circle\nSteps: 4, Seed: 9"}


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
def test_a_compressed_chunk_is_inflated_only_up_to_the_cap(kind):
    """A ~1 kB chunk that inflates to 1 MB: refused after inflating 64 kB + 1 byte, naming the cap."""
    data = png_with_chunk(kind, "parameters", b"a red circle\nSteps: 4, " + b"a" * 2**20)
    assert len(data) < 3000
    with pytest.raises(gr.Error) as refused:
        settings_file.png_texts(data, ("parameters",))
    assert "is not allowed: a settings text of at most 65536 bytes" in str(refused.value)


def test_a_long_plain_chunk_is_refused_before_parsing():
    data = png_with_chunk(b"tEXt", "parameters", b"Steps: 4, " + b"a" * 100_000)
    with pytest.raises(gr.Error, match="at most 65536 bytes"):
        settings_file.png_texts(data, ("parameters",))


def test_a1111_schedule_type_karras_maps_to_the_sampler_when_not_offered(engine):
    """A1111 1.9 writes "Sampler: Euler a, Schedule type: Karras": 'Euler a Karras' is not a scheduler here."""
    doc = settings_file.parse_a1111("a red circle\nSteps: 4, Sampler: Euler a, Schedule type: Karras, Seed: 3")
    request, notes = settings_file.checked(doc)
    assert request.scheduler == "Euler a"
    assert any("Karras is not offered with Euler a" in n for n in notes)
    doc = settings_file.parse_a1111("a\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras")
    assert doc["scheduler"] == "DPM++ 2M Karras"


@pytest.mark.parametrize("value", ["٤", "4_0", " 4", "0x10", "1e400"])
def test_settings_numbers_are_ascii_digits_only(engine, value):
    """int('٤') is 4 and int('4_0') is 40: a settings document's text number is refused instead."""
    with pytest.raises((gr.Error, ValueError)) as refused:  # ours (gr.Error), or from_form's FieldError
        settings_file.checked({"prompt": "x", "steps": value})
    message = str(refused.value)
    assert "steps=" in message and ("ASCII digits" in message or "is not allowed" in message)


# ------------------------------------------------------------------------------ 3. rank cap, inspector memory


def _one_layer_lora(path, rank: int, in_features: int = 1, out_features: int = 1):
    from safetensors.torch import save_file

    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(rank, in_features),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(out_features, rank)},
              str(path))
    return path


@pytest.mark.parametrize("rank", [1025, 4000])
def test_a_rank_over_the_cap_is_refused_from_the_header(tmp_path, rank):
    from pipelines.lora.user import MAX_RANK, read_header

    path = _one_layer_lora(tmp_path / "wide.safetensors", rank)
    with pytest.raises(ValueError) as refused:
        read_header(path)
    assert f"has rank {rank}" in str(refused.value) and f"at most rank {MAX_RANK}" in str(refused.value)
    read_header(_one_layer_lora(tmp_path / "ok.safetensors", MAX_RANK))  # the cap itself is accepted


def test_delta_norm_matches_the_dense_norm():
    from pipelines.lora.inspector import delta_norm

    g = torch.Generator().manual_seed(0)
    for rank, fan_in, fan_out in ((4, 16, 8), (64, 8, 32), (3, 5, 7), (40, 3, 3, )):
        a, b = torch.randn(rank, fan_in, generator=g), torch.randn(fan_out, rank, generator=g)
        dense = 0.7 * torch.linalg.norm(b.double() @ a.double())
        assert delta_norm(a, b, 0.7) == pytest.approx(float(dense), rel=1e-12)
    conv_a, conv_b = torch.randn(6, 4, 3, 3, generator=g), torch.randn(5, 6, 1, 1, generator=g)
    dense = torch.linalg.norm(conv_b.reshape(5, 6).double() @ conv_a.reshape(6, -1).double())
    assert delta_norm(conv_a, conv_b, 1.0) == pytest.approx(float(dense), rel=1e-12)


def test_delta_norm_memory_is_linear_in_the_adapter():
    """Rank 8000 on a 1 x 1 layer (64 kB of weights): the r x r products cost +1.4 GB before; the
    peak RSS growth of a fresh process is measured around the call."""
    script = ("import resource, torch\n"
              "from pipelines.lora.inspector import delta_norm\n"
              "a, b = torch.ones(8000, 1), torch.ones(1, 8000)\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "value = delta_norm(a, b, 1.0)\n"
              "print(value, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    value, grown_kb = out.stdout.split()
    assert float(value) == pytest.approx(8000.0)
    assert int(grown_kb) < 50 * 1024, f"peak RSS grew {int(grown_kb) // 1024} MB (the r x r version: ~1,400 MB)"


# ------------------------------------------------------------------------------ 4, 8. the user-adapter store


@pytest.fixture
def store(tiny_pipe, tmp_path):
    from pipelines.lora import LoraBlender
    from pipelines.lora.user_store import UserAdapterStore

    blender = LoraBlender(tiny_pipe)
    yield UserAdapterStore(blender, max_adapters=3, max_per_session=2)
    for name in list(blender.adapters):
        blender.unload(name)


def _lora(tiny_pipe, tmp_path, seed: int) -> str:
    from testkit.lora_factory import random_lora, save_diffusers_lora

    folder = tmp_path / f"lora{seed}"
    folder.mkdir()
    return save_diffusers_lora(random_lora(tiny_pipe.unet, seed=seed), str(folder))


def _peft_names(pipe) -> set[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name for m in pipe.unet.modules() if isinstance(m, BaseTunerLayer) for name in getattr(m, "lora_A", {})}


def test_a_failed_inspection_leaves_no_adapter_loaded(store, tiny_pipe, tmp_path):
    """store.add used to run before the inspection, whose error was not caught: a hidden adapter stayed pinned."""
    def failing_inspection(adapter):
        raise RuntimeError("tried to allocate 8000000000000 bytes")

    with pytest.raises(RuntimeError):
        store.add("session-a", _lora(tiny_pipe, tmp_path, 1), {"kind": "upload"}, check=failing_inspection)
    assert len(store) == 0 and not store.blender.adapters
    assert not any(n.startswith("user-") for n in _peft_names(tiny_pipe))
    adapter = store.add("session-a", _lora(tiny_pipe, tmp_path, 2), {"kind": "upload"}, check=lambda a: {"ok": a.name})
    assert adapter.report == {"ok": adapter.name} and store.names("session-a") == [adapter.name]


def test_other_sessions_cannot_push_out_a_sessions_only_adapter(store, tiny_pipe, tmp_path):
    """One 8-slot LRU for everyone: 8 uploads of other sessions evicted session A's adapter."""
    mine = store.add("a", _lora(tiny_pipe, tmp_path, 1), {"kind": "upload"}).name
    for seed in range(2, 6):  # session b uploads four: past its quota (2) and the server's (3)
        store.add("b", _lora(tiny_pipe, tmp_path, seed), {"kind": "upload"})
    assert store.names("a") == [mine]
    assert len(store.names("b")) == 2 and len(store) == 3
    gone = store.evicted("b")
    assert len(gone) == 2 and all("was unloaded to make room" in m and "load it again" in m for m in gone.values())
    assert any("at most 2 user adapters per session" in m for m in gone.values())


def test_naming_an_evicted_adapter_says_it_was_unloaded(engine, tiny_pipe, tmp_path, monkeypatch):
    from labapp import lora_user_ui
    from pipelines.request import GenerationRequest

    lora_user_ui.configure(max_user_loras=2)
    found = lora_user_ui.store(engine)
    monkeypatch.setattr(lora_user_ui, "session_of", lambda request=None: "a")
    first = found.add("a", _lora(tiny_pipe, tmp_path, 1), {"kind": "upload"}).name
    for seed in (2, 3):
        found.add("a", _lora(tiny_pipe, tmp_path, seed), {"kind": "upload"})
    assert first not in found.names("a")
    with pytest.raises(ValueError) as refused:
        GenerationRequest.from_form(lora_user_ui.limits(engine), prompt="x", negative_prompt="", scheduler="DDIM",
                                    steps=2, guidance_scale=3.0, seed=0, lora=f"{first}:1")
    assert f"your adapter {first} was unloaded to make room" in str(refused.value), str(refused.value)
    for name in found.names("a"):
        found.remove("a", name)
    lora_user_ui.configure()


# ------------------------------------------------------------------------------ 9. number lists


def test_a_number_list_is_checked_by_length_before_it_is_split():
    """"1," * 10**7 (20 MB) cost +540 MB in the split before the count check."""
    from pipelines.fields import FieldError, number_list

    text = "1," * 10_000_000
    tracemalloc.start()
    try:
        with pytest.raises(FieldError) as refused:
            number_list("scales", text, 0, 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "at most 256 characters" in str(refused.value)
    assert peak < 2**20, f"{peak} bytes traced while refusing"  # the message shows a shortened value
    with pytest.raises(FieldError, match="a list of 9 items"):
        number_list("scales", [1] * 9, 0, 30)
    assert number_list("scales", "1, 3 7.5", 0, 30) == [1.0, 3.0, 7.5]


# ------------------------------------------------------------------------------ 6. budget on every model endpoint


def test_compare_guidance_kinds_checks_the_budget_up_front(engine, monkeypatch):
    """40 steps held the slot 219 s; now refused before any model call."""
    from labapp import guidance_kinds

    engine.pipe.classifier = object()  # the check for a classifier passes; nothing may run
    monkeypatch.setattr(guidance_kinds, "_run", lambda *a, **k: pytest.fail("a model call ran"))
    try:
        with pytest.raises(gr.Error) as refused:
            guidance_kinds.compare_guidance_kinds(steps=150, adherence_prompts=8)
    finally:
        del engine.pipe.classifier
    assert "the budget is 3600 model calls" in str(refused.value)
    assert guidance_kinds.request_cost(25, 4, 5, guidance_kinds.DEFAULT_ADHERENCE_PROMPTS) <= eng.MODEL_CALL_BUDGET


# Every event that runs in the pipeline slot (concurrency_id="pipeline"), public or private (a private
# event is callable through the queue too): how its work is bounded. A new event in the slot must add
# itself here (the test below fails until it does), and an entry for an event that left it goes.
MODEL_ENDPOINTS = {
    "generate": "the budget's own definition: 150 steps x 2 calls x 4 images x 3 branches",
    "generate_live": "the same form and checks as /generate",
    "cfg_sweep": "labs.within_budget", "compare_guidance": "labs.within_budget",
    "compare_schedulers": "labs.within_budget", "lora_grid": "labs.within_budget",
    "compare_guidance_kinds": "guidance_kinds.within_budget (counts UNet rows and classifier passes)",
    "img2img": "a /generate's fields (build_request), strength <= 1: at most a /generate",
    "inpaint": "a /generate's fields (build_request): at most a /generate",
    "forward_noise": "no UNet call: one VAE encode of one image",
    "explore_frames": "VAE decodes of the session's stored trace: at most 150 steps of one 64 px latent",
    "cfg_step": "one step of the session's stored trace, no UNet call",
    "lora_unload": "no model call", "switch_model": "a registry model load (off on a Space)",
    "attention_maps": "a /generate's form (GenerationRequest.from_form), one image: at most a /generate",
    "compare_weights": "3 runs of the session's recorded attention settings (server-side state, one image): "
                       "3 x 150 steps x 2 calls x 2 branches = 1800 calls at most",
}


def _slot_events(demo, pipeline: str) -> set[str]:
    import re

    return {re.sub(r"_\d+$", "", fn.api_name) for fn in demo.fns.values()
            if fn.concurrency_id == pipeline and fn.api_name}


def test_every_model_endpoint_has_a_bounded_cost(engine):
    import app

    demo = app.build_demo(engine, allow_model_switch=True)
    slot = _slot_events(demo, app.PIPELINE)
    assert {"generate", "compare_guidance_kinds", "cfg_sweep"} <= slot, slot
    assert not slot - set(MODEL_ENDPOINTS), f"events in the pipeline slot with no stated bound: {sorted(slot - set(MODEL_ENDPOINTS))}"
    assert not set(MODEL_ENDPOINTS) - slot, f"stale entries: {sorted(set(MODEL_ENDPOINTS) - slot)}"


# ------------------------------------------------------------------------------ 2. the Hub


@pytest.fixture
def black_hole():
    """A local socket that accepts connections and never answers (127.0.0.1 only)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_a_stalled_hub_fails_within_its_timeout(black_hole, monkeypatch):
    """HfApi.list_repo_files had no timeout: 27 minutes against a Hub that never answers."""
    from huggingface_hub import constants

    from labapp import network
    from pipelines.lora.hub import resolve_hub_lora

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests/conftest.py sets HF_HUB_OFFLINE=1
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "ENDPOINT", black_hole)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", black_hole + "/{repo_id}/resolve/{revision}/{filename}")
    network.install_timeouts(1.0)
    try:
        for hub_id in ("a/b", "a/b/c.safetensors"):
            started = time.monotonic()
            with pytest.raises(ValueError) as refused:
                network.within_deadline(f"Hub LoRA {hub_id!r}", resolve_hub_lora, hub_id, max_bytes=2**20,
                                        offline=False, deadline=4.0)
            took = time.monotonic() - started
            message = str(refused.value)
            assert took < 6, f"{hub_id}: {took:.1f} s"
            assert message.startswith(f"Hub LoRA {hub_id!r}: the Hub ({black_hole})") and "\n" not in message
    finally:
        network.install_timeouts()


# ------------------------------------------------------------------------------ 11. a session's own Stop and unload


class _Session:
    """What Gradio passes as gr.Request: the handlers read only its session hash."""

    def __init__(self, session_hash: str):
        self.session_hash = session_hash


def test_stop_and_forget_session_act_only_on_the_callers_own_session(engine, tiny_pipe, tmp_path):
    """Item 11: neither handler takes a session hash as an argument (nothing in the payload names a
    session); each acts on ``request.session_hash``, the session of the request that runs it. A Stop
    or an unload from session B leaves session A's run and adapters alone. (That hash is itself
    client-chosen: see SECURITY.md, "Known gaps".)"""
    import inspect

    from labapp import generate as gen
    from labapp import lora_user_ui

    for handler in (gen.request_stop, lora_user_ui.forget_session):
        assert list(inspect.signature(handler).parameters) == ["request"], handler

    found = lora_user_ui.store(engine)
    mine = found.add("session-a", _lora(tiny_pipe, tmp_path, 1), {"kind": "upload"}).name
    lora_user_ui.forget_session(_Session("session-b"))
    assert found.names("session-a") == [mine]

    outputs = []
    for out in gen.generate(prompt="a red circle", negative_prompt="", scheduler="DDIM", steps=4, guidance_scale=5.0,
                            seed=7, preview_every=1, progress=lambda *a, **k: None, request=_Session("session-a")):
        outputs.append(out)
        if len(outputs) == 2:
            gen.request_stop(_Session("session-b"))
    assert outputs[-1][2] is not None and not outputs[-1][7].stopped, outputs[-1][5]  # A's run finished
    gen._stops.discard("session-b")

    lora_user_ui.forget_session(_Session("session-a"))
    assert found.names("session-a") == [] and mine not in engine.blender.adapters
