"""Warm start: `python app.py` with its warm-up against `--no-warmup`, measured side by side.

    OMP_NUM_THREADS=1 python bench/bench_warmup.py            # prints; --write updates BENCHMARKS.md

For each mode, a fresh server process on the embedded model (HF_HUB_OFFLINE=1, one torch thread):
seconds from the process start to the log's "open" line, then the first and the second /generate
(25 steps, previews every 2) and the first and second /lora_grid (the mixer's example blend),
timed from a gradio_client. Ratios: first / second request (1.0 = no cold start), and the
no-warm-up first request / the warm one.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import machine, update_section  # noqa: E402
from tests.app_server import free_port  # noqa: E402

BLEND = "outline:1, night:1"


def measure(warm: bool) -> dict:
    from gradio_client import Client

    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log_path = f"/tmp/bench_warmup_{port}.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py"), "--port", str(port),
                                   *([] if warm else ["--no-warmup"])], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        while "open http" not in open(log_path).read():
            if server.poll() is not None:
                raise RuntimeError(open(log_path).read())
            time.sleep(0.2)
        out = {"start": time.perf_counter() - started}
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for name, call in (
            ("generate", lambda: client.predict(prompt="a large red circle in the top left", negative_prompt="",
                                                scheduler="DDIM", steps=25, guidance_scale=3, seed=0, preview_every=2,
                                                api_name="/generate")),
            ("lora_grid", lambda: client.predict(prompt="a large red circle in the top left", lora=BLEND, seed=0,
                                                 steps=25, guidance_scale=3, scheduler="DDIM", api_name="/lora_grid")),
        ):
            for attempt in ("first", "second"):
                t = time.perf_counter()
                call()
                out[f"{name} {attempt}"] = time.perf_counter() - t
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    cold, warm = measure(False), measure(True)
    rows = ["| | --no-warmup | warm-up (default) | no-warm-up / warm |", "|---|---|---|---|"]
    for key in cold:
        rows.append(f"| {key} (s) | {cold[key]:.2f} | {warm[key]:.2f} | {cold[key] / warm[key]:.2f} |")
    rows.append(f"| first / second /generate | {cold['generate first'] / cold['generate second']:.2f} | "
                f"{warm['generate first'] / warm['generate second']:.2f} | |")
    rows.append(f"| first / second /lora_grid | {cold['lora_grid first'] / cold['lora_grid second']:.2f} | "
                f"{warm['lora_grid first'] / warm['lora_grid second']:.2f} | |")
    body = (f"Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_warmup.py --write` (machine: {machine()}, "
            f"1 torch thread, shared with other jobs; one run each, so single timings are noisy).\n"
            "A fresh `python app.py` on the embedded model each time; start = process start to the log's "
            "\"open\" line; then two /generate (25 steps, previews every 2) and two /lora_grid "
            f"(`{BLEND}`) from gradio_client.\n\n" + "\n".join(rows))
    print(body)
    if args.write:
        update_section("Warm start", body)


if __name__ == "__main__":
    main()
