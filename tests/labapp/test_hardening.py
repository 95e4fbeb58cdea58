"""Hardening round 2 (issue 13), the parts that are not rows of the hostile-input table: bounded
trace memory, the work budget and GPU durations, the model switch on a Space, the app's own temp
dir, raw inputs on every event, and Hub-token redaction. Each test failed before its fix."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading

import gradio as gr
import pytest
import torch

from labapp import engine as eng
from labapp import generate as gen
from labapp import labs, trace_store, trace_views

from testkit.paths import ROOT


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


def no_progress(*args, **kwargs):
    pass


def fake_record(step: int, batch: int = 4, side: int = 8, seed: int = 0):
    from pipelines.record import StepRecord

    g = torch.Generator().manual_seed(seed + step)
    def t():
        return torch.randn(batch, 4, side, side, generator=g)

    return StepRecord(step=step, num_steps=3, timestep=900.0 - step, sigma=None, alpha_bar=0.5, x_t=t(),
                      eps_uncond=t(), eps_cond=t(), eps_guided=t(), x0_uncond=t(), x0_cond=t(), x0_guided=t(),
                      guidance_scale=5.0, guidance_norm=0.1, model_calls=step + 1)


# ------------------------------------------------------------------------------ item 5: trace memory


def test_compact_record_keeps_what_the_views_read():
    full = fake_record(0, batch=4, side=8)
    small = trace_store.compact(full)
    for name in trace_store.TENSOR_FIELDS:
        stored = small.tensors[name]
        assert stored.dtype == torch.float16 and stored.shape == (1, 4, 8, 8)
        torch.testing.assert_close(getattr(small, name), getattr(full, name)[:1], atol=5e-3, rtol=1e-3)
    assert (small.step, small.model_calls, small.guidance_scale) == (0, 1, 5.0)
    assert small.nbytes * 7 < sum(getattr(full, n).numel() * 4 for n in trace_store.TENSOR_FIELDS)


def test_compact_record_downsamples_large_latents():
    small = trace_store.compact(fake_record(0, batch=1, side=128))  # SD 1.5 at 1024 px
    assert small.tensors["x_t"].shape == (1, 4, trace_store.MAX_LATENT_SIDE, trace_store.MAX_LATENT_SIDE)


def test_store_evicts_least_recently_used_across_sessions_within_budget():
    one = trace_store.compact(fake_record(0)).nbytes
    store = trace_store.TraceStore(budget_bytes=3 * one)
    first, second, third = (trace_store.keep({}, [fake_record(i)], "m", store) for i in range(3))
    assert len(store) == 3
    first.records[0]  # viewed: now the most recent
    fourth = trace_store.keep({}, [fake_record(3)], "m", store)
    assert len(store) == 3 and store.nbytes <= 3 * one
    with pytest.raises(gr.Error, match="no longer kept on the server"):
        second.records[0]
    assert first.records[0].step == 0 and third.records[0].step == 2 and fourth.records[0].step == 3


def test_store_drops_runs_after_their_lifetime():
    now = [0.0]
    store = trace_store.TraceStore(ttl_seconds=900, clock=lambda: now[0])
    trace = trace_store.keep({}, [fake_record(0)], "m", store)
    now[0] = 899
    assert trace.records[0].step == 0
    now[0] = 901
    with pytest.raises(gr.Error, match="15 minutes"):
        list(trace.records)
    assert store.nbytes == 0 and len(store) == 0


def test_state_expiry_forgets_the_run():
    store = trace_store.TraceStore()
    trace = trace_store.keep({}, [fake_record(0)], "m", store)
    trace_store.forget(trace)
    assert len(store) == 0 and store.nbytes == 0


def test_a_view_of_an_evicted_run_says_so(engine):
    out = list(gen.generate("a red circle", "", "DDIM", 2, 5.0, 0, width=16, height=16, num_images=2,
                            preview_every=0, progress=no_progress))
    trace = out[-1][-1]
    assert {f.name for f in dataclasses.fields(trace)} >= {"settings", "records", "model"} and len(trace.records) == 2
    x_t, x0, _eps, info = trace_views.explore_step(trace, 2, "linear")  # the sliders are 1-based
    assert x_t is not None and "step 2 / 2" in info
    trace_store.STORE.forget(trace.records.key)
    with pytest.raises(gr.Error, match="no longer kept on the server.*generate again"):
        trace_views.explore_step(trace, 2, "linear")
    with pytest.raises(gr.Error, match="no longer kept"):
        trace_views.cfg_step(trace, 1, "linear")


# ------------------------------------------------------------------------------ item 6: work per request


def test_the_largest_generate_fits_the_budget(engine):
    job = gen.build_request(engine, prompt="a", negative_prompt="b", scheduler="Heun", steps=gen.MAX_STEPS,
                            guidance_scale=7.5, seed=0, width=16, height=16, num_images=gen.MAX_IMAGES,
                             guidance_method="perp-neg")
    assert eng.job_branches(job) == 3 and eng.job_images(job) == gen.MAX_IMAGES
    assert eng.request_cost([job]) <= eng.MODEL_CALL_BUDGET


def test_maximal_sweep_is_refused_with_budget_and_cost(tiny_pipe):
    """8 scales x 150 steps x (1 + 32 adherence prompts) images x 2 branches (1 at w = 1): 74250 model
    calls, refused before anything runs (the issue's maximal sweep ran 322 s)."""
    eng.install(eng.engine_from_pipe(tiny_pipe, eng.EMBEDDED_MODEL, "test components as the embedded model"))
    with pytest.raises(gr.Error, match=r"cfg_sweep: this request needs 74250 model calls.*budget is 3600"):
        labs.cfg_sweep("a red circle", "", "1, 2, 3, 4, 5, 6, 7, 8", 0, 150, "DDIM", labs.MAX_ADHERENCE_PROMPTS)


def test_sweep_gpu_duration_counts_every_adherence_image(engine):
    job = labs._settings(prompt="x", negative_prompt="", scheduler="DDIM", steps=100, guidance_scale=5, seed=0)
    job = job.replace(prompt=["a red circle"] * 32)
    expected = eng.GPU_SECONDS_OVERHEAD + eng.GPU_SECONDS_PER_STEP_IMAGE * 100 * 32
    assert eng._batch_duration([job]) == int(expected)  # it counted 1 image per job: 29x too short


# ------------------------------------------------------------------------------ items 8, 9, 11: the app


def _model_events(demo) -> list:
    config = demo.get_config_file()
    ids = [c["id"] for c in config["components"] if c.get("props", {}).get("label") == "Model"]
    return [d for d in config["dependencies"] if any(t[0] in ids for t in d.get("targets", []))]


def test_model_switch_is_off_on_a_space_unless_asked(engine, monkeypatch):
    import app

    monkeypatch.delenv(app.MODEL_SWITCH_ENV, raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/diffusion-lab")
    assert not _model_events(app.build_demo(engine))
    monkeypatch.setenv(app.MODEL_SWITCH_ENV, "1")
    assert len(_model_events(app.build_demo(engine))) == 1
    monkeypatch.delenv(app.MODEL_SWITCH_ENV)
    assert len(_model_events(app.build_demo(engine, allow_model_switch=True))) == 1
    monkeypatch.delenv("SPACE_ID")
    assert len(_model_events(app.build_demo(engine))) == 1  # a local run keeps it


def test_every_event_takes_raw_inputs(engine):
    import app

    import gradio as gr

    demo = app.build_demo(engine)
    examples = [fn for fn in demo.fns.values() if any(isinstance(b, gr.Dataset) for b in fn.inputs)]
    assert examples, "the Generate tab's gr.Examples event"
    # gr.Examples' own event keeps Gradio's preprocess (index -> a row of the server's own list; no file
    # is read); every other event takes its inputs raw
    assert all(fn.preprocess is False for fn in demo.fns.values() if fn not in examples)
    assert all(all(isinstance(b, gr.Dataset) for b in fn.inputs) for fn in examples)


@pytest.mark.app_process
def test_the_app_has_its_own_temp_dir():
    """In a fresh process (GRADIO_TEMP_DIR unset): the app sets its own before Gradio writes."""
    code = ("import os; os.environ.pop('GRADIO_TEMP_DIR', None)\n"
            "import app, tempfile\nfrom testkit.app_server import tiny_engine\n"
            "demo = app.build_demo(tiny_engine())\n"
            "caches = {b.GRADIO_CACHE for b in demo.blocks.values()}\n"
            "print(os.environ['GRADIO_TEMP_DIR']); print(sorted(caches)); print(oct(os.stat(os.environ['GRADIO_TEMP_DIR']).st_mode & 0o777))\n")
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder, caches, mode = proc.stdout.strip().splitlines()[-3:]
    assert os.path.basename(folder).startswith("diffusion-lab-") and folder != os.path.join("/tmp", "gradio")
    assert caches == str([folder]) and mode == "0o700"


# ------------------------------------------------------------------------------ item 7: tokens


def _echoing_hub():
    """A 'Hub' that answers every request with 400 and the request's Authorization header."""
    import http.server

    class Echo(http.server.BaseHTTPRequestHandler):
        def reply(self):
            body = json.dumps({"error": f"you sent Authorization: {self.headers.get('Authorization')}"}).encode()
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = reply

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_push_error_hides_an_hf_token_echoed_by_the_hub(tmp_path):
    """Token in HF_TOKEN (no --hub_token): the reply echoes 'Bearer <token>'; the error must not."""
    server = _echoing_hub()
    token = "hf_ENVonlyTOKEN0123456789abc"
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    code = ("from train.lora_export import push_output_folder, HubPushError\n"
            "try:\n    push_output_folder(%r, 'me/x', None, False)\nexcept HubPushError as e:\n    print('ERR', e)\n"
            ) % str(tmp_path)
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_TOKEN=token,
               HF_HUB_OFFLINE="0", OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240,
                              cwd=ROOT)
    finally:
        server.shutdown()
    assert "ERR --push_to_hub failed" in proc.stdout and "Bearer ***" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert token not in proc.stdout + proc.stderr


def test_log_lines_are_redacted_whatever_the_token_source(monkeypatch):
    from train.redact import RedactingFilter, redact

    monkeypatch.setenv("HF_TOKEN", "hf_fromTheEnvironment12345")
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(handler.format(record))
    handler.addFilter(RedactingFilter("explicit-flag-token-xyz"))
    log = logging.getLogger("test_redaction")
    log.addHandler(handler)
    try:
        log.error("push failed: %s / %s / Authorization: Bearer some.opaque.token / hf_unknownShape98765",
                  "hf_fromTheEnvironment12345", "explicit-flag-token-xyz")
    finally:
        log.removeHandler(handler)
    (line,) = records
    for secret in ("hf_fromTheEnvironment12345", "explicit-flag-token-xyz", "some.opaque.token", "hf_unknownShape98765"):
        assert secret not in line, line
    assert redact("nothing secret here", []) == "nothing secret here"
