"""Multi-LoRA blending costs, measured side by side in one run.

1. Switching between blends of already-loaded adapters (``LoraBlender.apply`` enter + exit),
   with every file open counted (must stay 0: adapters are read once, at load).
2. Generation time, 25 steps with CFG: no LoRA vs 3 unfused adapters vs the same 3 fused.
   Runs are interleaved (none, unfused, fused, none, ...) and the median is reported, so a
   background load hits all three alike. Times are this process's CPU time
   (``time.process_time``, one thread), which a busy shared machine disturbs far less than
   wall time; wall-clock medians are printed beside them.

Default model: a random mid-size UNet (block_out_channels (64, 128, 128), 8x8 latents) with a
2-layer 64-wide CLIP text encoder; ``--model models/tiny-shapes`` uses the trained embedded
model instead. Random LoRAs: rank ``--rank`` on to_q/to_k/to_v/to_out.0 and the text encoder's
attention. ``--write`` puts the table into BENCHMARKS.md ("Multi-LoRA blending").

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_lora.py [--model models/tiny-shapes] [--write]
"""
from __future__ import annotations

import argparse
import builtins
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import machine, update_section  # noqa: E402
from pipelines import TracingStableDiffusionPipeline  # noqa: E402
from pipelines.lora import AdapterSetting, Blend, LoraBlender  # noqa: E402
from tests.lora_factory import random_lora, save_diffusers_lora  # noqa: E402

SECTION = "Multi-LoRA blending"


def mid_size_pipeline() -> TracingStableDiffusionPipeline:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.tiny import make_tiny_components

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


def model_pipeline(path: str) -> TracingStableDiffusionPipeline:
    pipe = TracingStableDiffusionPipeline.from_pretrained(path, safety_checker=None, feature_extractor=None,
                                                          local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class OpenCounter:
    """Counts builtins.open and safetensors reads while active."""

    def __init__(self):
        self.count = 0

    def __enter__(self):
        import safetensors
        import safetensors.torch

        self._saved = [(builtins, "open", builtins.open), (safetensors, "safe_open", safetensors.safe_open),
                       (safetensors.torch, "load_file", safetensors.torch.load_file)]
        for owner, name, real in self._saved:
            setattr(owner, name, self._counting(real))
        return self

    def _counting(self, real):
        def wrapper(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)
        return wrapper

    def __exit__(self, *exc):
        for owner, name, real in self._saved:
            setattr(owner, name, real)


def time_switches(blender: LoraBlender, blends: list[Blend], rounds: int) -> tuple[list[float], list[float], int]:
    """CPU and wall milliseconds of each apply() enter + exit, and the files opened meanwhile."""
    cpu, wall = [], []
    with OpenCounter() as opens:
        for _ in range(rounds):
            for blend in blends:
                start, start_wall = time.process_time(), time.perf_counter()
                with blender.apply(blend):
                    pass
                cpu.append((time.process_time() - start) * 1e3)
                wall.append((time.perf_counter() - start_wall) * 1e3)
    return cpu, wall, opens.count


def main():
    torch.set_num_threads(1)  # process_time == compute time of this one thread
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="diffusers model folder (e.g. models/tiny-shapes)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prompt", default="a red circle")
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()

    pipe = model_pipeline(args.model) if args.model else mid_size_pipeline()
    model_label = args.model or "random UNet (64, 128, 128), 8x8 latents, 2-layer 64-wide CLIP"
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    latent = pipe.unet.config.sample_size
    height = latent * pipe.vae_scale_factor

    # 3 random adapters, written and loaded once
    blender = LoraBlender(pipe)
    folder = tempfile.mkdtemp(prefix="bench-lora-")
    names = ["style_a", "style_b", "style_c"]
    start = time.perf_counter()
    for seed, name in enumerate(names):
        lora = random_lora(pipe.unet, pipe.text_encoder, seed=seed, rank=args.rank, std=0.05)
        blender.load(name, save_diffusers_lora(lora, folder, f"{name}.safetensors"))
    load_ms = (time.perf_counter() - start) * 1e3 / len(names)
    lora_params = sum(p.numel() for n, p in pipe.unet.named_parameters() if "lora_" in n and names[0] in n) / 1e6

    # 1. switching
    blends = [Blend.of({"style_a": 0.8, "style_b": -0.4, "style_c": 1.2}),
              Blend.of({"style_a": 0.3}),
              Blend((AdapterSetting("style_b", 1.0, block_weights={"up": 0.5}), AdapterSetting("style_c", 0.7))),
              Blend.of({"style_a": 1.5, "style_c": -1.0}),
              Blend()]
    time_switches(blender, blends, rounds=1)  # first use of each stacked rank allocates its slot
    switch_ms, switch_wall, switch_opens = time_switches(blender, blends, rounds=20)
    fused_blend = Blend.of({"style_a": 0.8, "style_b": -0.4, "style_c": 1.2}, fuse=True)
    fuse_ms, _, fuse_opens = time_switches(blender, [fused_blend], rounds=5)

    # 2. generation, interleaved
    cases = {"none": Blend(), "3 unfused": Blend(fused_blend.adapters), "3 fused": fused_blend}
    times = {k: [] for k in cases}
    walls = {k: [] for k in cases}
    call = dict(num_inference_steps=args.steps, guidance_scale=7.5, height=height, width=height, output_type="latent")
    for name, blend in cases.items():  # warm-up
        with blender.apply(blend) as p:
            p(args.prompt, generator=torch.Generator().manual_seed(0), **dict(call, num_inference_steps=2))
    for _ in range(args.repeats):
        for name, blend in cases.items():
            with blender.apply(blend) as p:
                start, start_wall = time.process_time(), time.perf_counter()
                p(args.prompt, generator=torch.Generator().manual_seed(0), **call)
                times[name].append(time.process_time() - start)
                walls[name].append(time.perf_counter() - start_wall)
    median = {k: statistics.median(v) for k, v in times.items()}
    wall = {k: statistics.median(v) for k, v in walls.items()}

    rows = [
        ("switch blend (apply enter+exit), CPU median / p95", f"{statistics.median(switch_ms):.2f} / "
         f"{statistics.quantiles(switch_ms, n=20)[-1]:.2f} ms",
         f"{len(switch_ms)} switches over 5 blends; file opens: {switch_opens}; "
         f"wall median {statistics.median(switch_wall):.2f} ms"),
        ("fused apply (merge + exact restore), CPU", f"{statistics.median(fuse_ms):.1f} ms", f"file opens: {fuse_opens}"),
        ("load one adapter from disk (once)", f"{load_ms:.0f} ms", "safetensors, UNet + text encoder"),
        (f"generate, no LoRA ({args.steps} steps, CFG), CPU s", f"{median['none']:.2f} s",
         f"1.00x (wall {wall['none']:.2f} s)"),
        ("generate, 3 adapters unfused, CPU s", f"{median['3 unfused']:.2f} s",
         f"**{median['3 unfused'] / median['none']:.2f}x** (target <= 1.3x; wall {wall['3 unfused']:.2f} s)"),
        ("generate, 3 adapters fused, CPU s", f"{median['3 fused']:.2f} s",
         f"**{median['3 fused'] / median['none']:.2f}x** (target <= 1.05x; wall {wall['3 fused']:.2f} s)"),
    ]
    table = "| measure | value | note |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/bench_lora.py" + (f" --model {args.model}" if args.model else "")
    header = (f"Model: {model_label}; UNet {params:.1f} M params, {latent}x{latent} latents. "
              f"3 random LoRAs, rank {args.rank} on attention (UNet + text encoder), {lora_params:.2f} M UNet "
              f"LoRA params each. Medians of {args.repeats} interleaved runs.\n"
              f"Machine: {machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.\n"
              f"Command: `{command}`")
    print(header + "\n\n" + table)
    if args.write:
        label = f"`{args.model}`" if args.model else "Random mid-size UNet"
        write_subsection(label, header + "\n\n" + table)


def write_subsection(label: str, body: str) -> None:
    """Replace (or add) ``### label`` inside this script's BENCHMARKS.md section, keeping the others."""
    import re

    from bench.report import BENCHMARKS

    text = open(BENCHMARKS, encoding="utf-8").read() if os.path.exists(BENCHMARKS) else ""
    found = re.search(rf"^## {re.escape(SECTION)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    current = found.group(1) if found else ""
    parts = {m.group(1): m.group(2).strip() for m in re.finditer(r"^### (.+?)\n(.*?)(?=^### |\Z)", current, re.S | re.M)}
    parts[label] = body.strip()
    update_section(SECTION, "\n\n".join(f"### {k}\n\n{v}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
