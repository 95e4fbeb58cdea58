"""Bring your own LoRA: load, first blend and unload of a rank-128 user adapter, with the RSS.

On the bench's random mid-size model (bench/bench_lora.py ``mid_size_pipeline``: UNet (64, 128,
128), 2-layer 64-wide CLIP) with a rank-128 kohya LoCon built in code (every attention, proj,
ff, resnet conv and time-embedding layer of the UNet, and the text encoder's attention). Measures,
each against the obvious alternative in the same run:

- checked load (``UserAdapterStore.add``: header, format, NaN/Inf and fit checks, SHA-256, then
  ``LoraBlender.load``) vs a plain ``LoraBlender.load`` of the same file (the preset path);
- the first generation with the new adapter (builds its blend) vs a second one (cached) vs a
  generation without LoRA;
- RSS before load, after load, after unload (glibc ``malloc_trim`` after ``gc.collect`` so freed
  memory goes back to the OS), over several load/unload cycles.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench run user_lora [--cycles 3] [--steps 25] [--write]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import tempfile
import time

import torch

from bench.bench_lora import PRESET_TARGETS, mid_size_pipeline
from bench.common import command, machine, update_section
from pipelines.lora import Blend, LoraBlender
from pipelines.lora.user_store import UserAdapterStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECTION = "Bring your own LoRA"
# the reading of the last run on the 2-core machine (edit when the figures say otherwise)
NOTE = "Reading: the adapter costs its weights in memory (+28 MB for 28.3 MB of fp32 A/B weights) and unloading gives them back (RSS returns to the level before the load, cycle after cycle; the first cycle keeps ~7 MB of one-time allocations). The fused blend runs at the base model's cost: first and cached generations sit at 0.87-1.62x the no-LoRA run measured in the same cycle, inside this shared machine's noise band (no-LoRA itself ranged 1.32-1.70 s). The checks (header, NaN/Inf scan, diffusers key conversion, fit, SHA-256) read the file once more than a plain load, which is what the 3x on load is."


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def settle() -> float:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return rss_mb()


def generate(pipe_or_blended, steps: int) -> float:
    start = time.perf_counter()
    pipe_or_blended("a red circle", num_inference_steps=steps, height=16, width=16, guidance_scale=5.0,
                    generator=torch.Generator().manual_seed(0), output_type="np", record="off")
    return time.perf_counter() - start


def measure(args) -> str:
    from testkit.lora_factory import TEXT_ENCODER_TARGETS, random_lora, save_kohya_lora

    torch.set_num_threads(1)
    pipe = mid_size_pipeline()
    folder = tempfile.mkdtemp(prefix="bench-byo-")
    lora = random_lora(pipe.unet, pipe.text_encoder, seed=0, rank=args.rank, alpha=args.rank / 2, std=0.02,
                       unet_targets=PRESET_TARGETS, text_encoder_targets=TEXT_ENCODER_TARGETS)
    path = save_kohya_lora(lora, os.path.join(folder, f"rank{args.rank}.safetensors"))
    size_mb = os.path.getsize(path) / 2**20
    del lora
    blender = LoraBlender(pipe)
    store = UserAdapterStore(blender, max_adapters=4, max_bytes=8 * 2**30)

    with blender.apply(Blend()) as p:
        generate(p, args.steps)  # warm-up

    rows, plain_loads = [], []
    for cycle in range(args.cycles):
        before = settle()
        start = time.perf_counter()
        adapter = store.add("bench-session", path, {"kind": "upload", "filename": os.path.basename(path)})
        checked_load = time.perf_counter() - start
        after_load = settle()
        blend = Blend.of({adapter.name: 0.8}, fuse=True)  # what the app's engine does for a full-range blend
        with blender.apply(blend) as p:
            first = generate(p, args.steps)
        with blender.apply(blend) as p:
            second = generate(p, args.steps)
        with blender.apply(Blend()) as p:  # the alternative, in the same cycle (the machine is shared)
            no_lora = min(generate(p, args.steps) for _ in range(2))
        store.remove("bench-session", adapter.name)
        after_unload = settle()
        # the preset path on the same file, for the cost of the checks
        start = time.perf_counter()
        blender.load("plain", path)
        plain_loads.append(time.perf_counter() - start)
        blender.unload("plain")
        rows.append((cycle + 1, before, after_load, after_unload, checked_load, first, second, adapter.nbytes, no_lora))
        settle()

    layers = adapter.num_layers
    plain = statistics.median(plain_loads)
    lines = [f"Machine: {machine()}, 1 torch thread, shared with other jobs. Model: the random mid-size UNet of "
             f"bench/bench_lora.py (64, 128, 128) with its 2-layer CLIP. Adapter: rank {args.rank} kohya LoCon "
             f"(alpha {args.rank / 2:g}), {layers} layers (UNet attention, proj, ff, resnet convs, time embedding; "
             f"text-encoder attention), file {size_mb:.1f} MB, {rows[0][7] / 2**20:.1f} MB of weights in memory. "
             f"{args.steps} steps, 16x16 px, guidance 5.", "",
             "| cycle | RSS before load | after load | after unload | checked load | first blend + generation | "
             "second (cached) | no LoRA |", "|---|---|---|---|---|---|---|---|"]
    for cycle, before, after_load, after_unload, load, first, second, _, no_lora in rows:
        lines.append(f"| {cycle} | {before:.0f} MB | {after_load:.0f} MB (+{after_load - before:.0f}) | "
                     f"{after_unload:.0f} MB ({after_unload - before:+.0f}) | {load:.2f} s | {first:.2f} s "
                     f"({first / no_lora:.2f}x no LoRA) | {second:.2f} s ({second / no_lora:.2f}x) | {no_lora:.2f} s |")
    checked = statistics.median(r[4] for r in rows)
    lines += ["", f"Checked load (store.add) median {checked:.2f} s vs plain `LoraBlender.load` of the same file "
                  f"{plain:.2f} s: the checks cost {checked / plain:.2f}x the plain load.",
              "", NOTE,
              "", f"Command: `OMP_NUM_THREADS=1 .venv/bin/python -m bench run user_lora --rank {args.rank} "
                  f"--cycles {args.cycles} --steps {args.steps}`"]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of BENCHMARKS.md")
    args = parser.parse_args()
    body = measure(args)
    print(body)
    if args.write:
        update_section(SECTION, body, regenerate=command('user_lora'))


if __name__ == "__main__":
    main()
