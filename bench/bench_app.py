"""Time to first preview and total time: through the server (gradio_client) vs a direct call.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench run app [--steps 25] [--repeats 5] [--tiny]

Uses the embedded model (models/tiny-shapes) when present, else the tiny test components.
Both sides run the same work: record="full", x_t + x0 previews every `--preview-every` steps with
the model's own preview decoder (engine.previews: the VAE on the embedded model), or `--decoder`.
Also prints the direct run with linear previews, so the cost of the chosen decoder shows beside it.
Prints the medians and the server/direct ratios (target: total <= 1.2x): wall time, the median of the
per-repeat (paired) ratios, and CPU time (server process + this process, from /proc and
time.process_time), which a shared machine's load disturbs far less than wall time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

SECTION = 'App'  # of BENCHMARKS.md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc/<pid>/stat, fields 14-15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def direct(engine, settings, preview_every, decoder):
    """The pipeline alone: time to the first record carrying previews, to the images, and CPU seconds."""
    cpu = time.process_time()
    start = time.perf_counter()
    first = None
    for item in engine.pipe.iter_steps(**settings.call_kwargs(engine.device), record="full", preview_every=preview_every,
                                       preview_decoder=decoder, preview_targets=("x_t", "x0_guided")):
        if first is None and getattr(item, "previews", None):
            first = time.perf_counter() - start
    return first, time.perf_counter() - start, time.process_time() - cpu


def through_server(client, kwargs, server_pid):
    cpu = time.process_time() + cpu_seconds(server_pid)
    start = time.perf_counter()
    job = client.submit(**kwargs, api_name="/generate")
    first = None
    while not job.done():
        if first is None and job.outputs():
            first = time.perf_counter() - start
        time.sleep(0.005)
    job.result()
    total = time.perf_counter() - start
    return first if first is not None else total, total, time.process_time() + cpu_seconds(server_pid) - cpu


def serve(tiny: bool):
    """Server process: launch the app, print its URL, serve until stdin closes."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from testkit.app_server import launch

    demo, url = launch(make_engine(tiny), concurrency_limit=1)
    print(url, flush=True)
    sys.stdin.read()
    demo.close()


def make_engine(tiny: bool):
    from labapp import engine as eng
    from testkit.app_server import tiny_engine

    if os.path.isfile(os.path.join(eng.EMBEDDED_DIR, "model_index.json")) and not tiny:
        return eng.load_engine(eng.EMBEDDED_MODEL, "benchmark", "cpu")
    return tiny_engine()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--preview-every", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="use the tiny test components even if the embedded model exists")
    parser.add_argument("--decoder", default=None, help="preview decoder (default: the model's own choice)")
    args = parser.parse_args()
    if args.serve:
        return serve(args.tiny)

    import subprocess

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from gradio_client import Client

    from labapp import engine as eng
    from labapp.generate import build_request

    engine = make_engine(args.tiny)
    eng.install(engine)
    # the server in its own process, as in real use (no GIL shared with the client or the direct runs)
    server = subprocess.Popen([sys.executable, __file__, "--serve"] + (["--tiny"] if args.tiny else []),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    # download_files=False: time the stream of updates, not the transfer of each preview file
    client = Client(url, verbose=False, download_files=False)
    decoder = args.decoder or engine.previews.default
    kwargs = dict(prompt="a large red circle in the top left", negative_prompt="", scheduler="DDIM",
                  steps=args.steps, guidance_scale=7.5, seed=0, preview_every=args.preview_every, preview_decoder=decoder)
    settings = build_request(engine, **{k: v for k, v in kwargs.items() if not k.startswith("preview_")})

    direct(engine, settings, args.preview_every, decoder), through_server(client, kwargs, server.pid)  # warm-up
    rows = {"direct": [], "server": [], "direct, linear previews": []}
    for _ in range(args.repeats):  # interleaved, so background load hits every side alike
        rows["direct"].append(direct(engine, settings, args.preview_every, decoder))
        rows["server"].append(through_server(client, kwargs, server.pid))
        rows["direct, linear previews"].append(direct(engine, settings, args.preview_every, "linear"))
    server.stdin.close()
    server.wait(timeout=60)

    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in rows.items()}
    paired = [statistics.median(s[i] / d[i] for s, d in zip(rows["server"], rows["direct"])) for i in range(3)]
    print(f"model: {engine.model_id} ({engine.native_size}x{engine.native_size}), {args.steps} steps DDIM, CFG 7.5, "
          f"previews (x_t + x0, {decoder}) every {args.preview_every} steps, record=full, {args.repeats} runs, medians; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'':30} {'first preview':>14} {'total (wall)':>13} {'CPU':>10}")
    for name, (first, total, cpu) in med.items():
        print(f"{name:30} {first * 1000:11.0f} ms {total * 1000:10.0f} ms {cpu * 1000:7.0f} ms")
    print(f"{'server / direct (of medians)':30} {med['server'][0] / med['direct'][0]:13.2f}x "
          f"{med['server'][1] / med['direct'][1]:12.2f}x {med['server'][2] / med['direct'][2]:9.2f}x")
    print(f"{'server / direct (paired)':30} {paired[0]:13.2f}x {paired[1]:12.2f}x {paired[2]:9.2f}x")
    linear = med["direct, linear previews"]
    print(f"{decoder + ' / linear (direct)':30} {med['direct'][0] / linear[0]:13.2f}x {med['direct'][1] / linear[1]:12.2f}x "
          f"{med['direct'][2] / linear[2]:9.2f}x")

if __name__ == "__main__":
    main()
