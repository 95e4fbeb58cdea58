"""First contact: `python app.py --help`, a bad flag, and what a start plus one request prints."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from testkit.app_server import free_port

from testkit.paths import ROOT
APP = os.path.join(ROOT, "app.py")

# run app.py as __main__ the way `python app.py --help` does, then report what got imported
PROBE = """
import runpy, sys
sys.argv = ["app.py", *sys.argv[1:]]
try:
    runpy.run_path({app!r}, run_name="__main__")
except SystemExit as exit:
    code = exit.code
print("IMPORTED", "torch" in sys.modules, "gradio" in sys.modules, "EXIT", code)
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE.format(app=APP), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_help_answers_without_importing_torch_or_gradio():
    from pipelines.models import model_names

    result = run_cli("--help")
    assert result.stdout.strip().endswith("IMPORTED False False EXIT 0"), result.stdout + result.stderr
    for flag in ("--model", "--host", "--port", "--share", "--no-warmup"):
        assert flag in result.stdout
    for default in ("127.0.0.1", "7860", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", *model_names()):
        assert default in result.stdout, default


def test_a_bad_model_exits_2_with_one_line():
    result = subprocess.run([sys.executable, APP, "--model", "foo"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--model" in lines[0] and "'foo'" in lines[0] and "tiny-shapes" in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.app_process
@pytest.mark.timeout(300)
def test_start_and_one_request_log_no_warning(tmp_path):
    """Three INFO lines of the app's own (model loaded, warmed up, where to open it) and nothing
    else: no library warning, no progress bar, no per-request line, also when a LoRA preset loads.

    Three, not the earlier two, on purpose: the warm-up takes seconds before the page opens, and a
    person watching the log should see what that wait was for (and how long it took) before the
    URL; the URL stays the last line, the one scripts wait for."""
    from gradio_client import Client

    port = free_port()
    log_path = tmp_path / "app.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               )  # Python's default warning filters, as a user's plain `python app.py` has
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, APP, "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "open http" not in log_path.read_text():
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(prompt="a red circle", negative_prompt="", scheduler="DDIM", steps=3,
                                guidance_scale=3, seed=0, preview_every=1, lora="outline:0.5", api_name="/generate")
        assert result[5].startswith("Done"), result[5]
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert len(lines) == 3, "\n".join(lines)
    assert "INFO diffusion_lab: Diffusion Lab: loaded model 'tiny-shapes' on cpu" in lines[0], lines[0]
    assert "INFO diffusion_lab: Diffusion Lab: warmed up in " in lines[1], lines[1]
    assert "LoRA presets outline, night, pastel loaded" in lines[1], lines[1]
    assert f"INFO diffusion_lab: Diffusion Lab: open http://127.0.0.1:{port}/" in lines[2], lines[2]


@pytest.mark.app_process
@pytest.mark.timeout(300)
def test_no_warmup_starts_with_two_lines(tmp_path):
    """--no-warmup: the model line and the URL, nothing warmed."""
    port = free_port()
    log_path = tmp_path / "app.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, APP, "--port", str(port), "--no-warmup"], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "open http" not in log_path.read_text():
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert len(lines) == 2 and "loaded model" in lines[0] and "open http" in lines[1], "\n".join(lines)
