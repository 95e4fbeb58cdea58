"""Tracing pipeline vs diffusers' StableDiffusionPipeline: same components, seed and steps.

Runs are interleaved (each repeat runs every variant once, in rotating order) and reported as
medians over repeats; each variant's ratio is the median of its per-repeat ratio to the stock
run of the same repeat, so slow drift on a shared machine cancels.

    OMP_NUM_THREADS=1 python bench/bench_pipeline.py                 # mid-size random UNet, CPU
    python bench/bench_pipeline.py --model models/tiny-shapes        # the embedded model
    python bench/bench_pipeline.py --sd15-gpu                        # SD 1.5 architecture, random
                                                                     # weights, fp16, 512 px, 30 steps

Variants: off (record="off"; target <= 1.03x), light (record="light" + linear previews of x0_guided
every step; target <= 1.10x), full (record="full" + linear previews of x0_guided/cond/uncond).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from pipelines import TracingStableDiffusionPipeline  # noqa: E402

CONFIGS = os.path.join(ROOT, "bench", "configs", "sd15")
PROMPT = "a red circle"


def midsize_components(seed: int = 0) -> dict:
    """Random mid-size SD-shaped components: UNet (64, 128, 128) ~6 M params, 8x8x4 latents."""
    from tests.tiny import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                scheduler=scheduler, safety_checker=None, feature_extractor=None, image_encoder=None)


def sd15_components(device: str, dtype: torch.dtype) -> dict:
    """SD 1.5's architecture from bench/configs/sd15 with random weights (no download)."""
    torch.manual_seed(0)
    with torch.device(device):  # initialize on the device: 1 B parameters
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(os.path.join(CONFIGS, "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(CONFIGS, "vae")))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(os.path.join(CONFIGS, "text_encoder")))
    scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(os.path.join(CONFIGS, "scheduler")))
    return dict(unet=unet.to(dtype).eval(), vae=vae.to(dtype).eval(), text_encoder=text_encoder.to(dtype).eval(),
                tokenizer=None, scheduler=scheduler, safety_checker=None, feature_extractor=None, image_encoder=None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a local diffusers folder (e.g. models/tiny-shapes)")
    p.add_argument("--sd15-gpu", action="store_true", help="SD 1.5 architecture, random weights, fp16 on CUDA")
    p.add_argument("--device", default=None, help="default: cuda for --sd15-gpu, else cpu")
    p.add_argument("--steps", type=int, default=None, help="default 25 (30 with --sd15-gpu)")
    p.add_argument("--size", type=int, default=None, help="image size in pixels (default: the model's)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    args = p.parse_args()

    device = args.device or ("cuda" if args.sd15_gpu else "cpu")
    torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.sd15_gpu and device == "cuda" else torch.float32
    if args.sd15_gpu:
        components, label = sd15_components(device, dtype), "SD 1.5 architecture, random weights"
        steps, size = args.steps or 30, args.size or 512
    elif args.model:
        stock = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None,
                                                        requires_safety_checker=False)
        components, label = dict(stock.components), args.model
        steps, size = args.steps or 25, args.size
    else:
        components, label = midsize_components(), "random UNet (64, 128, 128), 8x8x4 latents"
        steps, size = args.steps or 25, args.size
    ours = TracingStableDiffusionPipeline(**components).to(device)
    stock = StableDiffusionPipeline(**components, requires_safety_checker=False).to(device)
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
    size = size or ours.unet.config.sample_size * ours.vae_scale_factor

    call = dict(num_inference_steps=steps, guidance_scale=args.guidance, height=size, width=size, output_type="np")
    if components["tokenizer"] is None:  # no tokenizer files without a download: random text features
        g = torch.Generator().manual_seed(1)
        dim = components["text_encoder"].config.hidden_size
        call["prompt_embeds"] = torch.randn(1, 77, dim, generator=g).to(device, dtype)
        call["negative_prompt_embeds"] = torch.randn(1, 77, dim, generator=g).to(device, dtype)
    else:
        call["prompt"] = PROMPT
    x0s = ("x0_guided", "x0_cond", "x0_uncond")
    variants = {
        "stock": (stock, {}),
        "off": (ours, dict(record="off")),
        "light+previews": (ours, dict(record="light", preview_every=1, preview_targets=("x0_guided",))),
        "full+3 previews": (ours, dict(record="full", preview_every=1, preview_targets=x0s)),
    }

    def run(name):
        """(wall seconds, process CPU seconds). On a shared CPU box the CPU time is the steadier
        measure of the work done (OMP_NUM_THREADS=1: one thread computes); on CUDA, wall only."""
        pipe, extra = variants[name]
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        pipe(generator=torch.Generator(device="cpu").manual_seed(0), **call, **extra)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu_start

    names = list(variants)
    for name in names:  # warm-up
        run(name)
    times = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(run(name))

    print(f"# bench_pipeline: {label}; {steps} steps, {size}x{size} px, guidance {args.guidance}, "
          f"{args.repeats} interleaved repeats")
    print(f"# machine: {platform.machine()} {os.cpu_count()} cpus (load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
          + f", torch threads {torch.get_num_threads()}, dtype {str(dtype).split('.')[-1]}")
    measures = ("wall",) if device == "cuda" else ("wall", "cpu")
    print(f"{'variant':<18}" + "".join(f"{m + ' s':>10}{m + ' ratio':>12}" for m in measures))
    for name in names:
        line = f"{name:<18}"
        for k, m in enumerate(measures):
            mine = [t[k] for t in times[name]]
            ratios = [a[k] / b[k] for a, b in zip(times[name], times["stock"])]
            line += f"{statistics.median(mine):>10.3f}{statistics.median(ratios):>11.3f}x"
        print(line)

if __name__ == "__main__":
    main()
