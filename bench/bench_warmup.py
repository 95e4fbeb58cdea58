"""Warm start: the first Generate and LoRA grid after start, with the app's warm-up and without.

    OMP_NUM_THREADS=1 python -m bench run warmup            # prints; --write updates BENCHMARKS.md
    OMP_NUM_THREADS=1 python -m bench run warmup --server 3 # also through `python app.py` + gradio_client

Each mode runs in a fresh process (cold torch, nothing injected by peft yet), on the embedded model,
one torch thread: load the engine, then (warm mode) ``labapp.warmup.warm_up``, then the handlers a
click runs, twice each: Generate (25 steps, previews every 2) and the LoRA grid (the mixer's example
blend). Ratios: first / second call (1.0: no cold start left) and cold first / warm first. In-process,
so the figures are the handlers' own cost, not Gradio's transport (bench/bench_app.py measures that).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SECTION = 'Warm start'  # of BENCHMARKS.md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLEND = "outline:1, night:1"
PROMPT = "a large red circle in the top left"


def one_mode(warm: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    from labapp import engine as eng
    from labapp import generate as gen
    from labapp import labs, warmup

    started = time.perf_counter()
    engine = eng.install(eng.load_engine(eng.EMBEDDED_MODEL, "bench", "cpu"))
    out = {"load": time.perf_counter() - started}
    if warm:
        t = time.perf_counter()
        warmup.warm_up(engine)
        out["warm-up"] = time.perf_counter() - t
    calls = {"generate": lambda: list(gen.generate(PROMPT, "", "DDIM", 25, 3.0, 0, preview_every=2,
                                                   progress=lambda *a, **k: None)),
             "lora_grid": lambda: labs.lora_grid(PROMPT, BLEND, 0, 25, 3.0, "DDIM")}
    for name, call in calls.items():
        for attempt in ("first", "second"):
            t = time.perf_counter()
            call()
            out[f"{name} {attempt}"] = time.perf_counter() - t
    return out


def one_server(warm: bool) -> dict:
    """``python app.py`` as a user starts it (with or without --no-warmup), then the real gradio_client:
    seconds until the page answers, then /generate and /lora_grid twice each, as a first visitor would."""
    import socket
    import urllib.request

    from gradio_client import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "app.py", "--port", str(port)] + ([] if warm else ["--no-warmup"])
    started = time.perf_counter()
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"app.py exited with {server.returncode}")
            try:
                urllib.request.urlopen(url + "config", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        out = {"page answers": time.perf_counter() - started}
        client = Client(url, verbose=False)
        calls = {"generate": lambda: client.predict(prompt=PROMPT, negative_prompt="", scheduler="DDIM", steps=25,
                                                    guidance_scale=3.0, seed=0, preview_every=2, api_name="/generate"),
                 "lora_grid": lambda: client.predict(prompt=PROMPT, lora=BLEND, seed=0, steps=25, guidance_scale=3.0,
                                                     scheduler="DDIM", api_name="/lora_grid")}
        for name, call in calls.items():
            for attempt in ("first", "second"):
                t = time.perf_counter()
                call()
                out[f"{name} {attempt}"] = time.perf_counter() - t
        out["page answers -> first image"] = out["page answers"] + out["generate first"]
        return out
    finally:
        server.terminate()
        server.wait(timeout=60)


def server_table(repeats: int) -> str:
    """Both modes through the server, interleaved, ``repeats`` times each; medians."""
    import statistics

    runs = {"cold": [], "warm": []}
    for _ in range(repeats):
        for mode in ("cold", "warm"):
            runs[mode].append(one_server(mode == "warm"))
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()}
    cold, warm = med["cold"], med["warm"]
    rows = ["| seconds (median) | --no-warmup | warm-up (default) | no-warm-up / warm |", "|---|---|---|---|"]
    for key in ("page answers", "generate first", "generate second", "lora_grid first", "lora_grid second",
                "page answers -> first image"):
        rows.append(f"| {key} | {cold[key]:.2f} | {warm[key]:.2f} | {cold[key] / warm[key]:.2f} |")
    for name in ("generate", "lora_grid"):
        rows.append(f"| {name}: first / second | {cold[name + ' first'] / cold[name + ' second']:.2f} | "
                    f"{warm[name + ' first'] / warm[name + ' second']:.2f} | |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true")
    p.add_argument("--server", type=int, default=0, metavar="REPEATS",
                   help="also measure through `python app.py` and gradio_client, REPEATS times per mode")
    p.add_argument("--mode", choices=["cold", "warm"], help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(one_mode(args.mode == "warm")))
        return
    from bench.common import command, machine, update_section

    results = {}
    for mode in ("cold", "warm"):
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        run = subprocess.run([sys.executable, __file__, "--mode", mode], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True)
        results[mode] = json.loads(run.stdout.split("RESULT ", 1)[1])
    cold, warm = results["cold"], results["warm"]
    rows = ["| seconds | --no-warmup | warm-up (default) | no-warm-up / warm |", "|---|---|---|---|",
            f"| load the model | {cold['load']:.2f} | {warm['load']:.2f} | |",
            f"| warm-up | - | {warm['warm-up']:.2f} | |"]
    for key in ("generate first", "generate second", "lora_grid first", "lora_grid second"):
        rows.append(f"| {key} | {cold[key]:.2f} | {warm[key]:.2f} | {cold[key] / warm[key]:.2f} |")
    for name in ("generate", "lora_grid"):
        rows.append(f"| {name}: first / second | {cold[name + ' first'] / cold[name + ' second']:.2f} | "
                    f"{warm[name + ' first'] / warm[name + ' second']:.2f} | |")
    body = (f"Command: `OMP_NUM_THREADS=1 .venv/bin/python -m bench run warmup --write` (machine: {machine()}, "
            "1 torch thread, shared with other jobs; one run of each, so single timings are noisy).\n"
            "Each mode in a fresh process on the embedded model: load, (warm-up), then Generate (25 steps, previews "
            f"every 2) twice and the LoRA grid (`{BLEND}`, 4 images) twice, through the app's handlers.\n\n"
            + "\n".join(rows))
    if args.server:
        body += ("\n\nThrough the server (`--server " + str(args.server) + "`): `python app.py` started as a user starts it, "
                 "then the real gradio_client, as the first visitor: seconds until the page answers, then /generate and "
                 f"/lora_grid twice each; modes interleaved, {args.server} runs each, medians "
                 f"(load average {os.getloadavg()[0]:.1f} when done).\n\n" + server_table(args.server))
    print(body)
    if args.write:
        update_section(SECTION, body, regenerate=command('warmup'))


if __name__ == "__main__":
    main()
