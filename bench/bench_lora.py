"""Multi-LoRA blending costs on the shipped presets, measured side by side in one run.

Two pipelines with the same weights: one that never loaded a LoRA (the baseline of every
ratio) and one whose ``LoraBlender`` holds three adapters; a third one runs stock diffusers
(``load_lora_weights`` + ``set_adapters``), the obvious alternative. Each round runs every case
once, 25 steps with CFG, in a rotated order; a case's figure is the median over rounds of its
time divided by the baseline's time of the same round (paired ratios, so a background load
that hits one round hits its baseline too). Times are this process's CPU time with one torch
thread (``time.process_time``), which a shared machine disturbs far less than wall time; every
LoRA case is timed from ``apply`` enter to exit, so switching, merging and restoring count.

Cases: idle (adapters loaded, ``Blend()``, after a blend ran), 1 and 3 adapters unfused (the
blender's default: dense ``W + B A`` copies within the memory budget), 3 unfused in the
low-rank form only (``dense_budget_mb=0``), 3 through the app engine's path (fused: merge +
exact restore per request), 3 with stock diffusers.

Models: ``models/tiny-shapes`` (default) with its three shipped presets (outline, night, pastel:
rank 16 on attention, proj, ff, resnet conv and time-embedding layers); ``--mid-size``: the
random mid-size UNet (block_out_channels (64, 128, 128)) with three random rank-16 LoRAs on the
same kinds of layers. ``--threads``: wall time of single generations with 1 vs 2 torch threads,
with and without a competing busy process (the choice behind app.py's CPU thread count).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench run lora [--mid-size] [--threads] [--write]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bench.common import command, interleaved, machine, update_section
from pipelines import TracingStableDiffusionPipeline
from pipelines.lora import Blend, LoraBlender

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECTION = "Multi-LoRA blending"
EMBEDDED = os.path.join(ROOT, "models", "tiny-shapes")
PRESETS = ("outline", "night", "pastel")
# the kinds of layers the shipped presets train (train/train_lora.py's default targets)
PRESET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                  "conv1", "conv2", "time_emb_proj")
WEIGHTS = (0.8, 0.6, 0.7)


def mid_size_pipeline() -> TracingStableDiffusionPipeline:
    """The bench's mid-size model: random UNet (64, 128, 128), 8x8 latents, 2-layer 64-wide CLIP."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from testkit.tiny import make_tiny_components

    parts = make_tiny_components()  # tokenizer, VAE (factor 2), DDIM scheduler
    tokenizer = parts["tokenizer"]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128, 128), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
    ).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
    )).eval()
    pipe = TracingStableDiffusionPipeline(vae=parts["vae"], text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=parts["scheduler"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_pipeline(path: str = EMBEDDED) -> TracingStableDiffusionPipeline:
    pipe = TracingStableDiffusionPipeline.from_pretrained(path, safety_checker=None, feature_extractor=None,
                                                          local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_files(mid_size: bool) -> dict[str, str]:
    """name -> .safetensors: the shipped presets, or random preset-like LoRAs for the mid-size UNet."""
    if not mid_size:
        from pipelines.lora.presets import get_preset, preset_file

        return {name: str(preset_file(get_preset(name), offline=True)) for name in PRESETS}
    from testkit.lora_factory import random_lora, save_diffusers_lora

    unet = mid_size_pipeline().unet
    folder = tempfile.mkdtemp(prefix="bench-lora-")
    return {name: save_diffusers_lora(random_lora(unet, None, seed=seed, rank=16, std=0.05, unet_targets=PRESET_TARGETS),
                                      folder, f"{name}.safetensors")
            for seed, name in enumerate(("style_a", "style_b", "style_c"))}


def time_applies(blender: LoraBlender, blends: list[Blend], rounds: int) -> list[float]:
    """CPU milliseconds of each apply() enter + exit."""
    cpu = []
    for _ in range(rounds):
        for blend in blends:
            start = time.process_time()
            with blender.apply(blend):
                pass
            cpu.append((time.process_time() - start) * 1e3)
    return cpu


def measure(args) -> str:
    make = mid_size_pipeline if args.mid_size else model_pipeline
    plain, pipe, lowrank_pipe, stock = make(), make(), make(), make()
    files = lora_files(args.mid_size)
    names = list(files)
    start = time.perf_counter()
    blender = LoraBlender(pipe)
    for name, path in files.items():
        blender.load(name, path)
    load_ms = (time.perf_counter() - start) * 1e3 / len(names)
    lowrank = LoraBlender(lowrank_pipe, dense_budget_mb=0)  # every layer in the low-rank form
    for name, path in files.items():
        lowrank.load(name, path)
    for name, path in files.items():
        stock.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), adapter_name=name)
    stock.set_adapters(names, list(WEIGHTS))
    layers = {n: blender.adapters[n].num_layers for n in names}
    params = sum(p.numel() for p in plain.unet.parameters()) / 1e6
    latent = plain.unet.config.sample_size
    height = latent * plain.vae_scale_factor

    three = dict(zip(names, WEIGHTS))
    # apply() costs: a new blend (stacked for the first time), a cached one, the fused path
    first_ms = time_applies(blender, [Blend.of({names[0]: 0.5, names[1]: 0.4})], rounds=1)[0]
    switch_ms = time_applies(blender, [Blend.of(three), Blend.of({names[0]: 0.3}), Blend()], rounds=10)
    fuse_ms = time_applies(blender, [Blend.of(three, fuse=True)], rounds=10)
    merge_ms = time_applies(lowrank, [Blend.of(three, fuse=True)], rounds=10)

    call = dict(num_inference_steps=args.steps, guidance_scale=7.5, height=height, width=height, output_type="latent")

    def with_blend(blend, owner=blender):
        def run():
            with owner.apply(blend) as p:
                p(args.prompt, generator=torch.Generator().manual_seed(0), **call)
        return run

    cases = {
        "none": lambda: plain(args.prompt, generator=torch.Generator().manual_seed(0), **call),
        "idle": with_blend(Blend()),
        "1 unfused": with_blend(Blend.of({names[0]: WEIGHTS[0]})),
        "3 unfused": with_blend(Blend.of(three)),
        "3 unfused, low-rank only": with_blend(Blend.of(three), lowrank),
        "3 fused, low-rank only (merge + restore)": with_blend(Blend.of(three, fuse=True), lowrank),
        "3 engine path (fused)": with_blend(Blend.of(three, fuse=True)),
        "3 stock diffusers": lambda: stock(args.prompt, generator=torch.Generator().manual_seed(0), **call),
    }
    times = interleaved(cases, args.repeats)  # CPU seconds; the warm-up stacks every blend once
    ratio = {k: [t / b for t, b in zip(v, times["none"])] for k, v in times.items()}

    targets = {"idle": 1.03, "3 unfused": 1.30, "3 engine path (fused)": 1.05}
    # the fastest run of a case is the one least disturbed by other jobs: its ratio beside the median
    rows = [(f"generate, {k} ({args.steps} steps, CFG)", f"{statistics.median(times[k]):.3f} s",
             f"**{statistics.median(ratio[k]):.3f}x**" if k in targets else f"{statistics.median(ratio[k]):.3f}x",
             f"{min(times[k]) / min(times['none']):.3f}x",
             f"{statistics.quantiles(ratio[k], n=4)[0]:.3f}-{statistics.quantiles(ratio[k], n=4)[2]:.3f}x"
             + (f"; target <= {targets[k]:.2f}x" if k in targets else ""))
            for k in cases]
    rows += [
        ("apply(), new blend of 2 (layer forms built the first time)", f"{first_ms:.1f} ms", "", "", "once per new blend"),
        ("apply(), switch among 3 cached blends", f"{statistics.median(switch_ms):.1f} ms", "", "",
         f"p95 {statistics.quantiles(switch_ms, n=20)[-1]:.1f} ms"),
        ("apply(), fused (dense layers stay as they are)", f"{statistics.median(fuse_ms):.1f} ms", "", "",
         f"p95 {statistics.quantiles(fuse_ms, n=20)[-1]:.1f} ms; counted in the engine-path row"),
        ("apply(), fused, low-rank only: merge + exact restore", f"{statistics.median(merge_ms):.1f} ms", "", "",
         f"p95 {statistics.quantiles(merge_ms, n=20)[-1]:.1f} ms"),
        ("load one adapter from disk (once)", f"{load_ms:.0f} ms", "", "", "safetensors, peft injection"),
    ]
    table = ("| measure | CPU time (median) | paired ratio to no LoRA (median) | ratio of fastest runs | "
             "ratio quartiles; note |\n|---|---|---|---|---|\n"
             + "\n".join(f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows))
    label = ("random UNet (64, 128, 128), 8x8 latents, 2-layer 64-wide CLIP; 3 random rank-16 LoRAs on the presets' "
             "kinds of layers" if args.mid_size else "models/tiny-shapes with the shipped presets outline, night, pastel")
    command = "OMP_NUM_THREADS=1 .venv/bin/python -m bench run lora" + (" --mid-size" if args.mid_size else "")
    header = (f"Model: {label}; UNet {params:.1f} M params, {latent}x{latent} latents; LoRA layers per adapter: "
              f"{', '.join(f'{n} {c}' for n, c in layers.items())}; weights {WEIGHTS}. {args.repeats} rounds.\n"
              f"Machine: {machine()}, 1 torch thread, shared with other jobs.\n"
              f"Command: `{command}`")
    return header + "\n\n" + table


BUSY = "import torch; torch.set_num_threads(1); a = torch.randn(256, 256)\nwhile True: a @ a"


def measure_threads(args) -> str:
    """Wall seconds of single generations, 1 vs 2 torch threads, with and without a busy process."""
    pipe = model_pipeline()
    call = dict(num_inference_steps=args.steps, guidance_scale=7.5, output_type="latent")

    def generate(threads):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        pipe(args.prompt, generator=torch.Generator().manual_seed(0), **call)
        return time.perf_counter() - start

    results = {}
    for load in ("no added load",) + (() if args.no_busy else ("1 busy process",)):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load != "no added load" else None
        try:
            generate(1), generate(2)  # warm-up
            walls = {1: [], 2: []}
            for r in range(args.repeats):
                for threads in ((1, 2) if r % 2 == 0 else (2, 1)):
                    walls[threads].append(generate(threads))
                    print(f"{load}: {threads} thread(s) {walls[threads][-1]:.2f} s", flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        results[load] = walls
    torch.set_num_threads(1)
    rows = []
    for load, walls in results.items():
        for threads, w in walls.items():
            q = statistics.quantiles(w, n=10)
            rows.append(f"| {load} | {threads} | {statistics.median(w):.3f} s | {q[-1]:.3f} s | {max(w):.3f} s |")
    return (f"Single generations on models/tiny-shapes, {args.steps} steps, CFG, wall time; {args.repeats} runs each, "
            f"1 and 2 threads alternated. Machine: {machine()}, shared with other jobs.\n"
            f"Command: `.venv/bin/python -m bench run lora --threads --steps {args.steps} --repeats {args.repeats}"
            f"{' --no-busy' if args.no_busy else ''}`\n\n"
            "| competing load | torch threads | median | p90 | max |\n|---|---|---|---|---|\n" + "\n".join(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mid-size", action="store_true", help="the random mid-size UNet instead of tiny-shapes")
    parser.add_argument("--threads", action="store_true", help="1 vs 2 torch threads under load (wall time)")
    parser.add_argument("--no-busy", action="store_true", help="--threads without the added busy process")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--prompt", default="a red circle")
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()
    if args.threads:
        body, label = measure_threads(args), "CPU threads under load"
    else:
        torch.set_num_threads(1)  # process_time == compute time of this one thread
        body = measure(args)
        label = "Random mid-size UNet" if args.mid_size else "`models/tiny-shapes`, shipped presets"
    print(body)
    if args.write:
        write_subsection(label, body)


def write_subsection(label: str, body: str) -> None:
    """Replace (or add) ``### label`` inside this script's BENCHMARKS.md section, keeping the others."""
    import re

    from bench.common import BENCHMARKS

    text = open(BENCHMARKS, encoding="utf-8").read() if os.path.exists(BENCHMARKS) else ""
    found = re.search(rf"^## {re.escape(SECTION)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    current = found.group(1) if found else ""
    parts = {m.group(1): m.group(2).strip() for m in re.finditer(r"^### (.+?)\n(.*?)(?=^### |\Z)", current, re.S | re.M)}
    parts[label] = body.strip()
    update_section(SECTION, "\n\n".join(f"### {k}\n\n{v}" for k, v in parts.items()), regenerate=command('lora'))


if __name__ == "__main__":
    main()
