"""Cost of a CLIP-guided step against a CFG step (and the trained classifier's CG step).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench run clip_guidance [--steps 25] [--repeats 5] [--clip-size 32]

On the embedded model (models/tiny-shapes, 32x32 images) with a tiny random CLIP built in code
(tests/tiny.make_tiny_clip_guide: 2-layer towers, width 16, --clip-size input): what the CLIP term
costs in model calls and seconds, not what it buys (a random CLIP steers toward nothing in
particular). Every kind runs the same prompt, seed and scheduler (DDIM, the model's own config).
Counts are exact (hooks on the UNet, the VAE decoder and CLIP's image tower); seconds are medians
of --repeats runs. Prints each kind's ratio against CFG (w = 3) measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

SECTION = 'CLIP guidance: cost of a step'  # of BENCHMARKS.md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Counter:
    """Forward calls and batch rows of a module (a forward hook); backward passes through it are
    counted by a tensor hook on its output."""

    def __init__(self, module):
        self.calls = self.rows = self.backward = 0
        module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        import torch

        self.calls += 1
        self.rows += (args[0] if args else next(iter(kwargs.values()))).shape[0]
        out = output[0] if isinstance(output, tuple) else next(iter(output.values()), None) if isinstance(output, dict) \
            else output
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._backward)

    def _backward(self, grad):
        self.backward += 1

    def reset(self):
        self.calls = self.rows = self.backward = 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clip-size", type=int, default=32, help="the tiny CLIP's input size (default 32)")
    parser.add_argument("--prompt", default="a small red circle in the top left")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from pipelines.guidance import GuidanceConfig
    from pipelines.models import load_pipeline
    from testkit.tiny import make_tiny_clip_guide

    pipe = load_pipeline("tiny-shapes")
    pipe.set_progress_bar_config(disable=True)
    classifier = pipe.classifier
    clip = make_tiny_clip_guide(image_size=args.clip_size)
    counters = {"unet": Counter(pipe.unet), "vae_decoder": Counter(pipe.vae.decoder), "clip": Counter(clip.vision)}

    kinds = {  # name: (guidance_scale, GuidanceConfig or None, which guide the pipeline has)
        "uncond": (1.0, None, None, ""),
        "cfg w=3": (3.0, None, None, args.prompt),
        "classifier CG s=16": (1.0, GuidanceConfig(method="classifier", classifier_scale=16.0), "classifier", args.prompt),
        "CLIP CG s=16": (1.0, GuidanceConfig(method="classifier", classifier_scale=16.0), "clip", args.prompt),
        "CLIP CG + cfg w=3": (3.0, GuidanceConfig(method="classifier+cfg", classifier_scale=16.0), "clip", args.prompt),
    }
    results = {}
    for name, (w, guidance, guide, prompt) in kinds.items():
        pipe.classifier = classifier if guide == "classifier" else None
        pipe.clip_guide = clip if guide == "clip" else None
        times = []
        for repeat in range(args.repeats + 1):  # the first run warms up and is dropped
            for c in counters.values():
                c.reset()
            start = time.perf_counter()
            pipe(prompt, num_inference_steps=args.steps, guidance_scale=w, guidance=guidance, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
            if repeat:
                times.append(time.perf_counter() - start)
        counts = {k: (c.calls, c.rows, c.backward) for k, c in counters.items()}
        results[name] = (statistics.median(times), counts)

    base = results["cfg w=3"][0]
    print(f"tiny-shapes, DDIM {args.steps} steps, 1 image, tiny random CLIP at {args.clip_size} px, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread, median of {args.repeats}")
    print("| kind | UNet calls (rows) | UNet backward | VAE decoder fwd / bwd | CLIP image fwd | s/image | vs CFG |")
    print("|---|---|---|---|---|---|---|")
    for name, (seconds, counts) in results.items():
        u, v, c = counts["unet"], counts["vae_decoder"], counts["clip"]
        print(f"| {name} | {u[0]} ({u[1]}) | {u[2]} | {v[0]} / {v[2]} | {c[0]} | {seconds:.3f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
