"""GPU benchmark, one prepared script: full-size SD 1.5 architecture with random weights, fp16, 512x512.

No download: UNet (860M-class), VAE and CLIP ViT-L text encoder are built from the configs in
testkit/configs/sd15/, the tokenizer from local BPE files (shapesworld.tokenizer). Measured side by
side in one run, each figure the median of interleaved repeats after a warm-up:

1. generation, 25 DDIM steps, CFG 7.5, batch 1: diffusers' StableDiffusionPipeline vs ours
   (TracingStableDiffusionPipeline, record="off"), ours with previews off and on (every 5 steps,
   linear decoder); ratio ours / diffusers.
2. LoRA blends (3 random rank-16 adapters on UNet attention + text encoder, via LoraBlender):
   no LoRA vs unfused vs fused, plus the cost of entering/leaving a fused blend.
3. one LoRA training step of train/train_lora.py's loss (VAE encode, noise, UNet fwd + bwd, AdamW
   on the LoRA parameters; base fp16, LoRA fp32, autocast + grad scaler): steps/s and samples/s.
4. peak GPU memory of each phase (torch.cuda.max_memory_allocated).

Prints a JSON report and a markdown table; with a GPU it writes BENCHMARKS.md "GPU". Without a GPU
(or with --reduced) it runs a reduced mode on CPU: tiny components, 16x16, 2 steps, so the script
itself is tested here (tests/bench/test_gpu_bench.py); reduced figures are never written.

    .venv/bin/python -m bench run gpu                 # on the GPU machine (~3-5 min on an H100)
    OMP_NUM_THREADS=1 .venv/bin/python -m bench run gpu --reduced
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SECTION = "GPU"
PROMPT = "a photo of a red circle on a light background"
TOKENIZER_WORDS = ["a", "photo", "of", "red", "circle", "on", "light", "background", "cat", "dog", "blue", "square"]


# ----------------------------------------------------------------------------- components


def local_tokenizer(max_length: int):
    from transformers import CLIPTokenizer

    from shapesworld.tokenizer import build_clip_tokenizer_files

    vocab, merges = build_clip_tokenizer_files(TOKENIZER_WORDS, tempfile.mkdtemp(prefix="bench-tok-"))
    return CLIPTokenizer(vocab, merges, model_max_length=max_length)  # transformers 5 needs it explicit


def sd15_components(device: torch.device, dtype: torch.dtype) -> dict:
    """SD 1.5 shapes, random weights, created directly on ``device`` (an 860M UNet inits in seconds there)."""
    from testkit.components import sd15_components as random_sd15

    parts = random_sd15(device, dtype, tokenizer=local_tokenizer(77))
    return {k: parts[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}


def tiny_components(device: torch.device, dtype: torch.dtype) -> dict:
    from testkit.tiny import make_tiny_components

    parts = make_tiny_components()
    return {k: (v.to(device, dtype) if isinstance(v, torch.nn.Module) else v) for k, v in parts.items()
            if k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}


def pipelines(components: dict):
    from diffusers import StableDiffusionPipeline

    from pipelines import TracingStableDiffusionPipeline
    from pipelines.previews import SD15_LATENT_RGB_FACTORS

    extra = dict(safety_checker=None, feature_extractor=None)
    theirs = StableDiffusionPipeline(**components, **extra, requires_safety_checker=False)
    ours = TracingStableDiffusionPipeline(**components, **extra)
    ours.preview_factors = SD15_LATENT_RGB_FACTORS.clone()
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
    return theirs, ours


# ----------------------------------------------------------------------------- timing


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def peak_memory(device, into: dict, key: str):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    yield
    if device.type == "cuda":
        into[key] = round(torch.cuda.max_memory_allocated() / 2**30, 2)


def interleaved(variants: dict, repeats: int, device) -> dict:
    """Median seconds of each variant, run round-robin after one warm-up each (a background load hits all alike)."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ----------------------------------------------------------------------------- phases


def bench_generation(theirs, ours, size, steps, repeats, device) -> dict:
    def call(pipe, **extra):
        def run():
            generator = torch.Generator(device).manual_seed(0)
            pipe(PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
                 generator=generator, output_type="pil", **extra)
        return run

    seconds = interleaved({
        "diffusers": call(theirs),
        "ours": call(ours, record="off"),
        "ours_previews": call(ours, record="off", preview_every=5, preview_decoder="linear"),
    }, repeats, device)
    return {"seconds": seconds, "steps_per_second": {k: steps / v for k, v in seconds.items()},
            "ratio_ours": seconds["ours"] / seconds["diffusers"],
            "ratio_ours_previews": seconds["ours_previews"] / seconds["diffusers"]}


def bench_lora(ours, size, steps, repeats, device, rank: int) -> dict:
    from pipelines.lora import Blend, LoraBlender
    from testkit.lora_factory import random_lora, save_diffusers_lora

    blender = LoraBlender(ours)
    folder = tempfile.mkdtemp(prefix="bench-lora-")
    started = time.perf_counter()
    for i, name in enumerate(("a", "b", "c")):
        sub = os.path.join(folder, name)
        os.makedirs(sub)
        lora = random_lora(ours.unet, ours.text_encoder, seed=i, rank=rank, std=0.01)
        blender.load(name, save_diffusers_lora(lora, sub))
    load_seconds = (time.perf_counter() - started) / 3
    weights = {"a": 0.8, "b": -0.4, "c": 0.5}

    def generate(blend):
        def run():
            with blender.apply(blend) as pipe:
                pipe(PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
                     generator=torch.Generator(device).manual_seed(0), output_type="pil", record="off")
        return run

    def enter_exit_fused():
        with blender.apply(Blend.of(weights, fuse=True)):
            sync(device)

    seconds = interleaved({"none": generate(None), "unfused_3": generate(Blend.of(weights)),
                           "fused_3": generate(Blend.of(weights, fuse=True))}, repeats, device)
    switch = interleaved({"fuse_enter_exit": enter_exit_fused}, repeats, device)
    return {"seconds": seconds, "ratio_unfused": seconds["unfused_3"] / seconds["none"],
            "ratio_fused": seconds["fused_3"] / seconds["none"], "fuse_enter_exit_seconds": switch["fuse_enter_exit"],
            "load_seconds_per_adapter": load_seconds, "rank": rank}


def bench_training(components, size, batch, steps, device, dtype) -> dict:
    """train_lora's own setup and loss on the same architecture; the optimizer steps LoRA params only."""
    import copy

    from diffusers import DDPMScheduler

    from train.lora_args import build_parser
    from train.train_lora import setup_lora_models, trainable, training_loss

    args = build_parser().parse_args(["--pretrained_model_name_or_path", "random", "--rank", "4"])
    args.lora_alpha = 4.0
    unet = copy.deepcopy(components["unet"])
    vae, text_encoder = components["vae"], components["text_encoder"]
    setup_lora_models(unet, vae, text_encoder, args, device, dtype)
    unet.train()
    params = trainable(unet)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    tokenizer = components["tokenizer"]
    ids = tokenizer([PROMPT] * batch, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    pixels = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    batch_data = {"pixel_values": pixels, "input_ids": ids}

    def step(i):
        generator = torch.Generator().manual_seed(i)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = training_loss(batch_data, unet, text_encoder, vae, noise_scheduler, args, generator, dtype)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    step(0)  # warm-up
    sync(device)
    started = time.perf_counter()
    for i in range(steps):
        loss = step(i + 1)
    sync(device)
    seconds = (time.perf_counter() - started) / steps
    unet = optimizer = None  # frees them (step() holds them) before the next phase measures memory
    return {"seconds_per_step": seconds, "steps_per_second": 1 / seconds, "samples_per_second": batch / seconds,
            "batch": batch, "resolution": size, "lora_params": sum(p.numel() for p in params),
            "final_loss_finite": bool(torch.isfinite(loss).item())}


# ----------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    g, lo, tr, mem = report["generation"], report["lora"], report["training"], report["peak_memory_gib"]
    s = g["seconds"]
    rows = [
        "| measurement | value |", "|---|---|",
        f"| diffusers StableDiffusionPipeline, {report['steps']} steps, {report['size']}x{report['size']} | "
        f"{s['diffusers']:.3f} s ({g['steps_per_second']['diffusers']:.1f} steps/s) |",
        f"| ours, record off, no previews | {s['ours']:.3f} s (x{g['ratio_ours']:.3f} diffusers) |",
        f"| ours, record off, previews every 5 steps (linear) | {s['ours_previews']:.3f} s "
        f"(x{g['ratio_ours_previews']:.3f} diffusers) |",
        f"| no LoRA (LoraBlender, empty blend) | {lo['seconds']['none']:.3f} s |",
        f"| 3 LoRAs rank {lo['rank']}, unfused | {lo['seconds']['unfused_3']:.3f} s (x{lo['ratio_unfused']:.3f}) |",
        f"| 3 LoRAs rank {lo['rank']}, fused | {lo['seconds']['fused_3']:.3f} s (x{lo['ratio_fused']:.3f}) |",
        f"| fuse + restore a 3-LoRA blend | {lo['fuse_enter_exit_seconds']:.3f} s |",
        f"| LoRA load (per adapter, once) | {lo['load_seconds_per_adapter']:.2f} s |",
        f"| LoRA training step (rank 4, batch {tr['batch']}, {tr['resolution']} px) | "
        f"{tr['seconds_per_step']:.3f} s ({tr['samples_per_second']:.1f} samples/s) |",
    ]
    rows += [f"| peak memory, {k} | {v} GiB |" for k, v in mem.items()]
    return (f"Command: `{report['command']}`\nMachine: {report['machine']}; {report['mode']} mode, {report['dtype']}, "
            f"random weights ({'testkit/configs/sd15' if report['mode'] == 'full' else 'testkit/tiny.py'}; UNet {report['unet_params_m']:.1f} M params), DDIM, CFG 7.5, "
            f"batch 1; medians of {report['repeats']} interleaved repeats after a warm-up.\n\n" + "\n".join(rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="small configs on CPU (the default without CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (25 full, 2 reduced)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (3 full, 1 reduced)")
    parser.add_argument("--train_steps", type=int, default=None, help="timed training steps (20 full, 2 reduced)")
    parser.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md even on a GPU")
    parser.add_argument("--json", default=None, help="also write the JSON report to this file")
    args = parser.parse_args(argv)

    from bench.common import command, machine, update_section

    full = torch.cuda.is_available() and not args.reduced
    device = torch.device("cuda" if full else "cpu")
    dtype = torch.float16 if full else torch.float32
    if full:
        torch.backends.cuda.matmul.allow_tf32 = True
    steps = args.steps or (25 if full else 2)
    repeats = args.repeats or (3 if full else 1)
    size = 512 if full else 16
    started = time.perf_counter()
    components = sd15_components(device, dtype) if full else tiny_components(device, dtype)
    report = {"mode": "full" if full else "reduced", "machine": machine(), "dtype": str(dtype).replace("torch.", ""),
              "size": size, "steps": steps, "repeats": repeats,
              "unet_params_m": sum(p.numel() for p in components["unet"].parameters()) / 1e6,
              "command": "python -m bench run gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
              "peak_memory_gib": {}}
    report["build_seconds"] = time.perf_counter() - started
    theirs, ours = pipelines(components)
    with peak_memory(device, report["peak_memory_gib"], "generation"):
        report["generation"] = bench_generation(theirs, ours, size, steps, repeats, device)
    print(json.dumps({"generation": report["generation"]}), flush=True)
    with peak_memory(device, report["peak_memory_gib"], "lora blends"):
        report["lora"] = bench_lora(ours, size, steps, repeats, device, rank=16 if full else 4)
    print(json.dumps({"lora": report["lora"]}), flush=True)
    del theirs, ours
    with peak_memory(device, report["peak_memory_gib"], "LoRA training"):
        report["training"] = bench_training(tiny_components(device, dtype) if not full else components, size,
                                            batch=4 if full else 2, steps=args.train_steps or (20 if full else 2),
                                            device=device, dtype=dtype)
    report["total_seconds"] = time.perf_counter() - started
    print(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, default=str)
    if full and not args.no_write:
        update_section(SECTION, text, regenerate=command('gpu'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
