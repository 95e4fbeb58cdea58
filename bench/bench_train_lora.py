"""Training throughput of train/train_lora.py (samples/s of the training loop), side by side.

    python -m bench run train_lora                          # tiny test components, CPU
    python -m bench run train_lora --model models/tiny-shapes  # the embedded model, CPU
    python -m bench run train_lora --sd15-gpu               # SD 1.5 architecture, random weights, fp16, CUDA

Each variant is a real `train_lora.main()` run (data loading, VAE encode, text encoder, UNet
forward/backward, AdamW, accelerate); samples/s is measured by the script over its training loop
(train_result.json), so model loading and saving are excluded. Ratios are against the first row,
measured in the same process. Results: BENCHMARKS.md, "LoRA training".
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

SECTION = 'LoRA training'  # of BENCHMARKS.md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")



def write_images(folder: str, n: int, size: int, seed: int = 0) -> str:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    captions = ["a red circle", "a blue square", "a green triangle", "a photo of a cat"]
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
            f.write(json.dumps({"file_name": f"{i}.png", "text": captions[i % len(captions)]}) + "\n")
    return folder


def save_sd15_random(folder: str) -> str:
    """SD 1.5's architecture (testkit/configs/sd15) with random weights; a small BPE tokenizer stands in
    for CLIP's vocabulary (no download), its ids fit the 49408-entry embedding."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from testkit.components import sd15_components
    from testkit.tiny import make_tiny_tokenizer

    parts = sd15_components(tokenizer=make_tiny_tokenizer(max_length=77), scheduler_cls=DDPMScheduler)
    parts.pop("image_encoder")
    pipe = StableDiffusionPipeline(**parts, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def run_variant(model: str, data: str, out: str, common: list[str], extra: list[str]) -> dict:
    """One training run in its own process (clean accelerate state; logs captured, shown on failure)."""
    cmd = [sys.executable, "-m", "train.train_lora", "--pretrained_model_name_or_path", model,
           "--train_data_dir", data, "--output_dir", out, "--report_to", "none", "--seed", "0",
           "--checkpointing_steps", "100000", *common, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"variant {extra} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "train_result.json"), encoding="utf-8") as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a diffusers-format folder (e.g. models/tiny-shapes)")
    p.add_argument("--sd15-gpu", action="store_true", help="SD 1.5 architecture, random weights, fp16 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default 30; 20 with --sd15-gpu)")
    p.add_argument("--batch_size", type=int, default=None, help="default 8 (4 with --sd15-gpu)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best round counts (default 2)")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="bench-train-lora-")
    if args.sd15_gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--sd15-gpu needs a CUDA device")
        model, label, resolution = save_sd15_random(os.path.join(work, "sd15")), "SD 1.5 architecture, random weights", 512
        precision = ["--mixed_precision", "fp16"]
    elif args.model:
        if not os.path.isdir(args.model):
            raise SystemExit(f"--model={args.model!r} is not a folder")
        from diffusers import AutoencoderKL, UNet2DConditionModel

        unet_cfg = UNet2DConditionModel.load_config(os.path.join(args.model, "unet"))
        vae_cfg = AutoencoderKL.load_config(os.path.join(args.model, "vae"))
        model, label = args.model, args.model
        resolution = unet_cfg["sample_size"] * 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        precision = ["--mixed_precision", "no"]
    else:
        from testkit.tiny import save_tiny_model

        model, label, resolution = save_tiny_model(os.path.join(work, "tiny")), "tiny test components", 16
        precision = ["--mixed_precision", "no"]
    steps = args.steps or (20 if args.sd15_gpu else 30)
    batch = args.batch_size or (4 if args.sd15_gpu else 8)
    data = write_images(os.path.join(work, "data"), n=max(64, 4 * batch), size=resolution)
    common = ["--resolution", str(resolution), "--train_batch_size", str(batch), "--max_train_steps", str(steps),
              "--learning_rate", "1e-4", *precision]

    variants = [
        ("UNet LoRA r4 (to_q,k,v,out)", []),
        ("+ gradient checkpointing", ["--gradient_checkpointing"]),
        ("+ text-encoder LoRA", ["--train_text_encoder"]),
        ("rank 16", ["--rank", "16"]),
        ("+ min-SNR 5 + noise offset", ["--snr_gamma", "5", "--noise_offset", "0.05"]),
        ("+ guided-prediction loss (--cfg_loss_scale 3)", ["--cfg_loss_scale", "3"]),
    ]
    device = torch.cuda.get_device_name() if args.sd15_gpu else f"CPU, {os.cpu_count()} cores"
    print(f"# {label}, {resolution}px, batch {batch}, {steps} steps; {device}; torch {torch.__version__}, "
          f"python {platform.python_version()}")
    best = [0.0] * len(variants)
    for round_ in range(args.repeats):  # interleaved, so slow phases of a shared machine hit every variant
        for i, (name, extra) in enumerate(variants):
            out = os.path.join(work, f"out-{i}")
            shutil.rmtree(out, ignore_errors=True)
            best[i] = max(best[i], run_variant(model, data, out, common, extra)["samples_per_second"])
    print("| variant | samples/s (best of %d) | ratio |\n|---|---|---|" % args.repeats)
    for (name, _), sps in zip(variants, best):
        print(f"| {name} | {sps:.1f} | {sps / best[0]:.2f} |")


if __name__ == "__main__":
    main()
