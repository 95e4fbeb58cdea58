"""Faults: training killed at random moments and resumed; a Hub that cannot be reached; a generation
that raises mid-stream or is abandoned by its client; a LoRA file that disappears after loading; a
queue that overflows. The system must keep its outputs, never publish a corrupt checkpoint, and keep
serving.

Kill moments are random but seeded (FAULT_SEED, printed on failure): the first kill waits for a
half-written checkpoint folder (.tmp-checkpoint-N) and kills while it exists, later ones wait for
training to make progress and then kill after a seeded delay, so they land during a step or during a
checkpoint write. The slow tier (`-m slow`) adds a run with more kills whose final adapter must equal an
uninterrupted run's.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from testkit.faults import lora_vanish_scenario
from testkit.paths import ROOT
from testkit.tiny import save_tiny_model, train_env, write_noise_imagefolder

torch = pytest.importorskip("torch")
TRAIN_LORA = [sys.executable, "-m", "train.train_lora"]
FAULT_SEED = int(os.environ.get("FAULT_SEED", "20240607"))
TOKEN = "hf_FAULTtoken0123456789secret"
STEPS = 8
TRAIN_ARGS = ["--resolution", "16", "--train_batch_size", "2", "--max_train_steps", str(STEPS),
              "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--seed", "5", "--rank", "4",
              "--learning_rate", "1e-3", "--report_to", "none"]


# ----------------------------------------------------------------------------- training fixtures


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("fault-model")))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_noise_imagefolder(tmp_path_factory.mktemp("fault-images"), 6, (16, 16), ["red circle", "blue square"], seed=1)



def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_dirs(out: str) -> list[str]:
    return sorted(d for d in os.listdir(out) if "checkpoint" in d) if os.path.isdir(out) else []


def assert_latest_checkpoint_is_valid(out: str, context: str) -> int:
    """The checkpoint "latest" resumes from must be whole: marker matching its name, LoRA weights that
    load with finite values, accelerate's optimizer / scheduler / RNG files present and non-empty.
    Returns its step (0 when there is none yet)."""
    from safetensors.torch import load_file

    from train.lora_checkpoints import MARKER, latest_checkpoint

    latest = latest_checkpoint(out)
    if latest is None:
        return 0
    step = int(os.path.basename(latest).split("-")[-1])
    with open(os.path.join(latest, MARKER), encoding="utf-8") as f:
        marker = json.load(f)
    assert marker["global_step"] == step, f"{context}: {latest} marker says {marker}"
    weights = load_file(os.path.join(latest, "unet_lora.safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values()), f"{context}: {latest} LoRA weights"
    files = os.listdir(latest)
    for prefix in ("optimizer", "scheduler", "random_states"):
        found = [f for f in files if f.startswith(prefix)]
        assert found, f"{context}: {latest} lacks {prefix}* ({files})"
        assert all(os.path.getsize(os.path.join(latest, f)) > 0 for f in found), f"{context}: empty {found}"
    return step


def kill_run(args, env, out, wait_for, rng, log) -> dict:
    """Start a training process, wait for ``wait_for(out)`` (or the process to end), sleep a seeded
    random delay, SIGKILL it. Returns what happened."""
    proc = subprocess.Popen([*TRAIN_LORA, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"))
    deadline = time.time() + 600
    while proc.poll() is None and not wait_for(out) and time.time() < deadline:
        time.sleep(0.002)
    delay = rng.uniform(0.0, 1.0) if wait_for.__name__ != "tmp_checkpoint_exists" else 0.0
    time.sleep(delay)
    partial = [d for d in checkpoint_dirs(out) if d.startswith(".tmp-")]
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return {"killed": not finished, "delay": round(delay, 3), "partial_at_kill": partial,
            "dirs": checkpoint_dirs(out), "returncode": proc.returncode}


def tmp_checkpoint_exists(out: str) -> bool:
    return any(d.startswith(".tmp-checkpoint-") for d in checkpoint_dirs(out))


def progressed_past(step: int):
    def progressed(out: str) -> bool:
        from train.lora_checkpoints import complete_checkpoints

        return any(s > step for s, _ in complete_checkpoints(out))

    progressed.__name__ = f"progressed_past_{step}"
    return progressed


def kill_and_resume(tiny_model, image_folder, tmp_path, kills: int, seed: int) -> tuple[str, list[dict], subprocess.CompletedProcess]:
    """``kills`` killed runs (the first while a checkpoint is half-written), then a resumed run to
    the end that pushes to an unreachable Hub. Checks the latest checkpoint after every kill."""
    os.makedirs(tmp_path, exist_ok=True)  # callers may hand a sub-folder of pytest's tmp_path
    out = str(tmp_path / "out")
    args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
            *TRAIN_ARGS]
    env = train_env(tmp_path)
    rng = random.Random(seed)
    log = str(tmp_path / "train.log")
    history = []
    for i in range(kills):
        resume = ["--resume_from_checkpoint", "latest"] if i else []
        last = assert_latest_checkpoint_is_valid(out, f"before kill {i}")
        wait_for = tmp_checkpoint_exists if i == 0 else progressed_past(last)
        event = kill_run([*args, *resume], env, out, wait_for, rng, log)
        event["step"] = assert_latest_checkpoint_is_valid(out, f"after kill {i} ({event}, FAULT_SEED={seed})")
        history.append(event)
        assert not os.path.exists(os.path.join(out, "pytorch_lora_weights.safetensors")) or not event["killed"] \
            or event["step"] == STEPS, f"kill {i} landed after the export: {event}"
    endpoint = f"http://127.0.0.1:{closed_port()}"
    final = subprocess.run([*TRAIN_LORA, *args, "--resume_from_checkpoint", "latest", "--push_to_hub",
                            "--hub_model_id", "me/fault-lora", "--hub_token", TOKEN],
                           cwd=ROOT, env=train_env(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint,
                                                   HF_HUB_ETAG_TIMEOUT="2"),
                           capture_output=True, text=True, timeout=900)
    return out, history, final


def assert_valid_adapter(out: str, tiny_model: str):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    weights = load_file(os.path.join(out, "pytorch_lora_weights.safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values())

    def images(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("red circle", num_inference_steps=2, height=16, width=16, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    base = images(pipe)
    pipe.load_lora_weights(out)
    with_lora = images(pipe)
    assert np.isfinite(with_lora).all() and np.abs(with_lora - base).max() > 0, "the adapter changes nothing"
    return weights


@pytest.mark.training
def test_training_killed_at_random_moments_resumes_to_a_valid_adapter(tiny_model, image_folder, tmp_path):
    out, history, final = kill_and_resume(tiny_model, image_folder, tmp_path, kills=2, seed=FAULT_SEED)
    context = f"FAULT_SEED={FAULT_SEED} kills={history}\n{final.stderr[-3000:]}"
    assert history[0]["killed"], context
    # the unreachable Hub: exit code 2, a clear message, every local output kept, the token nowhere
    assert final.returncode == 2, context
    assert "--push_to_hub failed" in final.stderr and "Nothing local was removed" in final.stderr, context
    assert TOKEN not in final.stdout + final.stderr
    assert "Resuming from" in final.stderr, context
    for name in ("pytorch_lora_weights.safetensors", "README.md", "train_result.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert json.load(open(os.path.join(out, "train_result.json")))["global_step"] == STEPS
    assert assert_latest_checkpoint_is_valid(out, "at the end") == STEPS
    assert not [d for d in checkpoint_dirs(out) if d.startswith((".tmp-", ".trash-"))], checkpoint_dirs(out)
    for dirpath, _, names in os.walk(out):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                assert TOKEN.encode() not in f.read(), name
    assert_valid_adapter(out, tiny_model)


@pytest.mark.slow
def test_many_kills_end_with_the_uninterrupted_runs_adapter(tiny_model, image_folder, tmp_path):
    from safetensors.torch import load_file

    reference = str(tmp_path / "reference")
    ref = subprocess.run([*TRAIN_LORA, "--pretrained_model_name_or_path", tiny_model, "--train_data_dir",
                          image_folder, "--output_dir", reference, *TRAIN_ARGS], cwd=ROOT,
                         env=train_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out, history, final = kill_and_resume(tiny_model, image_folder, tmp_path / "killed", kills=6,
                                          seed=FAULT_SEED + 1)
    assert final.returncode == 2, f"{history}\n{final.stderr[-3000:]}"
    got = assert_valid_adapter(out, tiny_model)
    expected = load_file(os.path.join(reference, "pytorch_lora_weights.safetensors"))
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=f"{key} after {history}")


# ----------------------------------------------------------------------------- the app under faults


class FlakyUNet:
    """Wraps a UNet's forward: when armed, the n-th call from now raises (a CUDA error, an OOM...)."""

    def __init__(self, unet):
        self.unet, self.forward = unet, unet.forward
        self.countdown = None
        unet.forward = self

    def arm(self, after_calls: int):
        self.countdown = after_calls

    def __call__(self, *args, **kwargs):
        if self.countdown is not None:
            self.countdown -= 1
            if self.countdown < 0:
                self.countdown = None
                raise RuntimeError("injected fault: CUDA error: an illegal memory access was encountered")
        return self.forward(*args, **kwargs)


@pytest.fixture(scope="module")
def app_server():
    torch.set_num_threads(1)
    from gradio_client import Client

    from testkit.app_server import launch, tiny_engine

    engine = tiny_engine()
    flaky = FlakyUNet(engine.pipe.unet)
    demo, url = launch(engine, concurrency_limit=1)
    yield {"url": url, "engine": engine, "flaky": flaky, "client": Client(url, verbose=False)}
    demo.close()


GEN = dict(prompt="a red circle", negative_prompt="", scheduler="DDIM", steps=6, guidance_scale=5.0, seed=11)


def final_pixels(result) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(result[2]).convert("RGB"))


def test_generation_that_raises_mid_stream_leaves_the_app_serving(app_server):
    client, flaky = app_server["client"], app_server["flaky"]
    before = final_pixels(client.predict(**GEN, preview_every=1, api_name="/generate"))
    flaky.arm(after_calls=3)  # step 4 of 6: previews for steps 1-3 have been streamed
    job = client.submit(**GEN, preview_every=1, api_name="/generate")
    with pytest.raises(Exception) as excinfo:
        job.result(timeout=120)
    assert "injected fault" in str(excinfo.value)
    assert len(job.outputs()) >= 1, "the fault was meant to land mid-stream, after some previews"
    # the next request works and gives the image it gave before the fault
    after = final_pixels(client.predict(**GEN, preview_every=1, api_name="/generate"))
    np.testing.assert_array_equal(before, after)
    blender = app_server["engine"].blender
    if blender is not None:  # the blend lock was released by the failed generation
        assert blender._lock.acquire(timeout=5)
        blender._lock.release()


def test_client_abandoning_a_stream_does_not_block_the_next_request(app_server):
    client = app_server["client"]
    job = client.submit(**(GEN | dict(steps=150)), preview_every=1, api_name="/generate")
    deadline = time.time() + 120
    while not job.outputs() and time.time() < deadline and not job.done():
        time.sleep(0.05)
    job.cancel()
    started = time.perf_counter()
    result = client.predict(**GEN, preview_every=0, api_name="/generate")
    assert result[5].startswith("Done")
    assert time.perf_counter() - started < 120


@pytest.mark.parametrize("mode", ["delete", "replace"])
def test_lora_file_that_disappears_after_load_keeps_loaded_blends_working(mode, tmp_path):
    lora_vanish_scenario(mode, str(tmp_path))


@pytest.mark.app_process
def test_lora_file_overwritten_in_place_after_load_does_not_crash(tmp_path):
    """In a subprocess: before 2e92888 the loaded LoRA tensors stayed memory-mapped to the file, and
    overwriting it in place (cp over it) killed the process with SIGBUS at the next blend."""
    code = ("from testkit.faults import lora_vanish_scenario\n"
            f"lora_vanish_scenario('overwrite', {str(tmp_path)!r})\nprint('SURVIVED')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=train_env(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "SURVIVED" in proc.stdout, f"rc={proc.returncode}\n{proc.stderr[-2000:]}"


def test_queue_overflow_is_refused_cleanly_and_the_server_keeps_serving():
    """More simultaneous requests than the queue holds (app.QUEUE_MAX_SIZE): the excess gets Gradio's
    'Queue is full' error, everything else completes, and the server answers afterwards."""
    import app
    from bench.bench_load import burst, launch_app

    torch.set_num_threads(1)
    demo, url = launch_app()
    try:
        result = burst(url, app.QUEUE_MAX_SIZE + 10, steps=20)
    finally:
        demo.close()
    assert result["refused"] >= 1, result
    assert result["other_errors"] == 0, result
    assert result["completed"] + result["refused"] == result["requests"], result
    assert result["refusal_messages"] <= {"Queue is full! Please try again."}, result
    assert result["after"] == "ok", result
