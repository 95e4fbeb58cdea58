"""Load on the running app: N concurrent gradio_client users on loopback, for a bounded time each.

The app is launched in this process on 127.0.0.1 (a free port), exactly as ``python app.py`` builds
it (``app.build_demo`` with its default concurrency limit of 1 for the pipeline, and its queue limit
``app.QUEUE_MAX_SIZE``), on tiny test components (default) or the embedded model (``--model
tiny-shapes``, once trained). Each user has its own Client and sends /generate requests back to
back (unique seeds) until the window closes; requests already sent are allowed to finish.

Per N: completed requests, errors by kind, throughput, latency (submit -> final result) and queue
wait (submit -> the handler starts; measured in the server, which runs in this process) as
percentiles. Then a burst of more simultaneous requests than the queue holds: the excess must be
refused with Gradio's "Queue is full" error, the rest must complete, and a request afterwards must
work.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench run load [--users 1 4 16] [--seconds 20] [--steps 4]
        [--model tiny-shapes] [--write]

``--write`` puts the table into BENCHMARKS.md ("Load").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SECTION = "Load"
REQUEST = dict(prompt="a red circle", negative_prompt="", scheduler="DDIM", guidance_scale=5.0, preview_every=0)

_starts: dict[int, float] = {}  # seed -> perf_counter() when the handler reached the pipeline
_seed_lock = threading.Lock()
_next_seed = [1000]


def unique_seed() -> int:
    with _seed_lock:
        _next_seed[0] += 1
        return _next_seed[0]


def _instrument() -> None:
    """Record when each request's generation starts (keyed by its unique seed): queue wait = start - submit."""
    from labapp import engine as eng

    if getattr(eng.stream_generation, "_load_bench", False):
        return
    original = eng.stream_generation

    def stream_generation(settings, *args, **kwargs):
        _starts[int(settings.seed)] = time.perf_counter()
        return original(settings, *args, **kwargs)

    stream_generation._load_bench = True
    eng.stream_generation = stream_generation


def launch_app(model: str | None = None, concurrency_limit: int = 1):
    """(demo, url): the app on 127.0.0.1 with tiny components, or a registry model."""
    import app
    from testkit.app_server import free_port, tiny_engine

    if model:
        from labapp.engine import load_engine

        engine = load_engine(model, "bench_load --model", device="cpu")
    else:
        engine = tiny_engine()
    _instrument()
    demo = app.build_demo(engine, concurrency_limit=concurrency_limit)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_kwargs())
    return demo, f"http://127.0.0.1:{port}/"


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q):
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}


def run_users(url: str, users: int, seconds: float, steps: int) -> dict:
    """``users`` threads, each with its own Client, sending requests back to back for ``seconds``."""
    from gradio_client import Client

    clients = [Client(url, verbose=False) for _ in range(users)]
    latencies, waits, errors = [], [], Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(users + 1)
    window = {}

    def user(client):
        barrier.wait()
        while time.perf_counter() < window["end"]:
            seed = unique_seed()
            sent = time.perf_counter()
            try:
                client.predict(**REQUEST, steps=steps, seed=seed, api_name="/generate")
            except Exception as error:  # broad on purpose: counted by kind
                with lock:
                    errors[f"{type(error).__name__}: {str(error)[:80]}"] += 1
                continue
            done = time.perf_counter()
            with lock:
                latencies.append(done - sent)
                if seed in _starts:
                    waits.append(max(0.0, _starts.pop(seed) - sent))

    threads = [threading.Thread(target=user, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    window["end"] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join(timeout=seconds + 600)
    elapsed = time.perf_counter() - started
    return {"users": users, "seconds": round(elapsed, 1), "completed": len(latencies), "errors": dict(errors),
            "throughput_rps": len(latencies) / elapsed, "latency_s": percentiles(latencies),
            "queue_wait_s": percentiles(waits)}


def burst(url: str, requests: int, steps: int = 20) -> dict:
    """``requests`` simultaneous submissions from one client; returns how many completed, were
    refused by the queue limit (with which message) or failed otherwise, and whether a request
    afterwards works."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    jobs = [client.submit(**REQUEST, steps=steps, seed=unique_seed(), api_name="/generate") for _ in range(requests)]
    completed, refused, other, messages = 0, 0, [], set()
    for job in jobs:
        try:
            job.result(timeout=900)
            completed += 1
        except Exception as error:  # broad on purpose: sorted below
            text = str(error)
            if "Queue is full" in text:
                refused += 1
                messages.add(text)
            else:
                other.append(f"{type(error).__name__}: {text[:120]}")
    try:
        after = Client(url, verbose=False).predict(**REQUEST, steps=2, seed=1, api_name="/generate")
        after_state = "ok" if after[5].startswith("Done") else f"unexpected: {after[5]}"
    except Exception as error:  # broad on purpose: every failure is a result
        after_state = f"{type(error).__name__}: {error}"
    return {"requests": requests, "completed": completed, "refused": refused, "other_errors": len(other),
            "other_error_messages": other[:5], "refusal_messages": messages, "after": after_state}


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(results: list[dict], burst_result: dict, command: str, machine: str, model: str, steps: int) -> str:
    rows = ["| users | window (s) | completed | errors | req/s | latency p50 / p90 / p99 (s) | queue wait p50 / p90 / p99 (s) |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        lat, wait = r["latency_s"], r["queue_wait_s"]
        rows.append(f"| {r['users']} | {r['seconds']} | {r['completed']} | {sum(r['errors'].values())} | "
                    f"{r['throughput_rps']:.2f} | {fmt(lat['p50'])} / {fmt(lat['p90'])} / {fmt(lat['p99'])} | "
                    f"{fmt(wait['p50'])} / {fmt(wait['p90'])} / {fmt(wait['p99'])} |")
    b = burst_result
    return f"""Command: `{command}`
Machine: {machine}; the app in-process on 127.0.0.1, model `{model}`, /generate with {steps} DDIM steps,
CFG, no previews; the app's own settings (pipeline concurrency limit 1, queue limit {b['queue_limit']}).
Each user is a gradio_client Client sending requests back to back. Latency: submit -> final result;
queue wait: submit -> the handler reaches the pipeline (measured in the server).

{chr(10).join(rows)}

Burst of {b['requests']} simultaneous requests (queue limit {b['queue_limit']}): {b['completed']} completed,
{b['refused']} refused with "{next(iter(b['refusal_messages']), '-')}", {b['other_errors']} other errors;
a request afterwards: {b['after']}.

With one pipeline slot, throughput stays flat as users are added and the wait grows with the queue:
latency at N users is about N x the single-user service time. On this shared 2-core CPU (a training
job holds one core) figures vary run to run by tens of percent."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=20.0, help="window per user count")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--model", default=None, help="registry id (e.g. tiny-shapes); default: tiny test components")
    parser.add_argument("--burst", type=int, default=None, help="simultaneous requests (default: queue limit + 10)")
    parser.add_argument("--write", action="store_true", help="write the Load section of BENCHMARKS.md")
    args = parser.parse_args(argv)

    import torch

    import app
    from bench.common import command, machine, update_section

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    demo, url = launch_app(args.model)
    try:
        from gradio_client import Client

        Client(url, verbose=False).predict(**REQUEST, steps=args.steps, seed=1, api_name="/generate")  # warm-up
        results = []
        for users in args.users:
            results.append(run_users(url, users, args.seconds, args.steps))
            print(json.dumps(results[-1]), flush=True)
        burst_result = burst(url, args.burst or app.QUEUE_MAX_SIZE + 10, steps=max(args.steps, 20))
        burst_result["queue_limit"] = app.QUEUE_MAX_SIZE
    finally:
        demo.close()
    report = {"results": results, "burst": {**burst_result, "refusal_messages": sorted(burst_result["refusal_messages"])}}
    print(json.dumps(report, indent=2))
    regenerate = command("load", argv)
    text = markdown(results, burst_result, regenerate, machine(), args.model or "tiny test components", args.steps)
    print(text)
    if args.write:
        update_section(SECTION, text, regenerate=regenerate)
    bad = [r for r in results if r["errors"]] or burst_result["other_errors"] or burst_result["after"] != "ok"
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
