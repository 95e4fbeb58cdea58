"""Server memory (RSS) under many sessions and many maximal requests, this tree against a baseline.

Starts `python app.py` (the embedded tiny-shapes model, CPU, OMP_NUM_THREADS=1) in a child
process for each tree, then from this process:

1. RSS after start-up (and one warm-up /generate);
2. RSS after ``--sessions`` calls of /shapes_sample, each from a new session (the browser's
   queue protocol with a fresh session_hash: Gradio builds per-session state for each);
3. RSS after ``--requests`` maximal /generate calls, each from a new session (steps 150, 4 images,
   twice the native size, CFG, a preview every step): each keeps its trace in session state;
4. RSS after ``--idle`` seconds idle.

The child's RSS is read from /proc/<pid>/status (VmRSS). Both trees run at the same time (one
server each), so they share the machine's load. Prints one table and the ratios (this tree /
baseline). Give the baseline as a plain copy of an older commit, e.g.

    git archive 7b31748 | (mkdir -p /tmp/lab-before && tar -x -C /tmp/lab-before)
    .venv/bin/python -m bench run memory --baseline-root /tmp/lab-before
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

SECTION = 'Memory'  # of BENCHMARKS.md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: str, port: int) -> subprocess.Popen:
    code = ("import torch; torch.set_num_threads(1); import app; "
            f"app.main(['--port', '{port}', '--model', 'tiny-shapes'])")
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    env.pop("GRADIO_TEMP_DIR", None)
    return subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "config", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def queue_call(url: str, fn_index: int, data: list, timeout: float = 600) -> dict:
    """One event from a brand-new session (what a new browser tab does)."""
    import httpx

    session = uuid.uuid4().hex[:11]
    joined = httpx.post(f"{url}gradio_api/queue/join", timeout=timeout,
                        json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                              "trigger_id": None})
    joined.raise_for_status()
    last = {}
    with httpx.stream("GET", f"{url}gradio_api/queue/data?session_hash={session}", timeout=timeout) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                last = json.loads(line[5:])
                if last.get("msg") == "process_completed":
                    break
    if not last.get("success"):
        raise RuntimeError(f"call failed: {str(last)[:500]}")
    return last


def fn_index(url: str, api_name: str) -> int:
    import httpx

    config = httpx.get(url + "config", timeout=30).json()
    for index, dep in enumerate(config["dependencies"]):
        if dep.get("api_name") == api_name:
            return dep.get("id", index)
    raise LookupError(api_name)


def maximal_generate() -> list:
    # prompt .. lora in the app's order: 150 steps, 4 images, 64 px (2x native), CFG, previews every step
    return ["a large red circle in the top left", "", "DDIM", 150, 7.5, 0, False, 64, 64, 4, "cfg", 0.0, "constant",
            0.0, 1.0, -0.5, 15.0, 0.0, 1, 1.0, "model default", "default", 1, "linear", ""]


def measure(root: str, sessions: int, requests: int, idle: float) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = start_server(root, port)
    try:
        wait_up(url, proc)
        sample_fn, generate_fn = fn_index(url, "shapes_sample"), fn_index(url, "generate")
        warm = maximal_generate()
        warm[3], warm[9] = 2, 1
        queue_call(url, generate_fn, warm)
        out = {"start": rss_mb(proc.pid)}
        started = time.perf_counter()
        for i in range(sessions):
            queue_call(url, sample_fn, [i % 1000])
        out["sessions_s"] = time.perf_counter() - started
        out["after_sessions"] = rss_mb(proc.pid)
        started = time.perf_counter()
        for i in range(requests):
            data = maximal_generate()
            data[5] = i
            queue_call(url, generate_fn, data)
            print(f"  {root}: request {i + 1}/{requests}, RSS {rss_mb(proc.pid):.0f} MB", file=sys.stderr, flush=True)
        out["requests_s"] = time.perf_counter() - started
        out["after_requests"] = rss_mb(proc.pid)
        time.sleep(idle)
        out["after_idle"] = rss_mb(proc.pid)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-root", default=None, help="a plain copy of an older tree to compare with")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args(argv)
    roots = {"this tree": ROOT} | ({"baseline": args.baseline_root} if args.baseline_root else {})
    # the trees run side by side (one server each, torch 1 thread each): same machine load for both
    with ThreadPoolExecutor(len(roots)) as pool:
        futures = {name: pool.submit(measure, root, args.sessions, args.requests, args.idle) for name, root in roots.items()}
        results = {name: future.result() for name, future in futures.items()}
    for name, r in results.items():
        print(name, json.dumps({k: round(v, 1) for k, v in r.items()}), flush=True)
    print(f"\nRSS in MB ({args.sessions} new sessions, then {args.requests} maximal /generate from new sessions, "
          f"then {args.idle:g} s idle); torch 1 thread")
    print("| tree | start | +sessions | per session | +requests | per request | idle |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        per_session = (r["after_sessions"] - r["start"]) / max(1, args.sessions)
        per_request = (r["after_requests"] - r["after_sessions"]) / max(1, args.requests)
        print(f"| {name} | {r['start']:.0f} | {r['after_sessions']:.0f} | {per_session:.3f} | {r['after_requests']:.0f} | "
              f"{per_request:.2f} | {r['after_idle']:.0f} |")
    if "baseline" in results:
        new, old = results["this tree"], results["baseline"]
        for key in ("after_sessions", "after_requests", "after_idle"):
            grown_new, grown_old = new[key] - new["start"], old[key] - old["start"]
            print(f"growth over start-up, {key}: this tree {grown_new:.0f} MB vs baseline {grown_old:.0f} MB "
                  f"(ratio {grown_new / grown_old if grown_old else float('nan'):.2f})")


if __name__ == "__main__":
    main()
