#!/usr/bin/env python
"""Train the noise-aware shapes-world classifier that classifier guidance needs (pipelines/classifier.py).

    python train/train_classifier.py --pretrained_model_name_or_path models/tiny-shapes \
        --output_dir outputs/classifier --max_train_steps 4000 --seed 0
    accelerate launch train/train_classifier.py ...              # same flags

Data: shapes-world renders (no style) encoded by the model's own VAE encoder, times its
scaling_factor; the posterior mean and std are cached once, and every step draws a fresh latent
from the posterior (as train_base.py does). Noise: the model's own scheduler (its config:
v-prediction, zero terminal SNR), ``add_noise`` at uniform integer t in [0, T). Loss: the sum of
the five attributes' cross-entropies.

Reproducible: every draw (batch indices, posterior noise, timesteps, diffusion noise) comes from a
generator keyed by (seed, step), so a run resumed from a checkpoint ends with the same weights as
the uninterrupted one. Checkpoints are accelerate states written atomically (train/lora_checkpoints.py).

Output (<output_dir>): classifier/ (config.json, model.safetensors in fp16, training.json),
accuracy_vs_t.json and accuracy_vs_t.png (held-out accuracy per attribute at 11 noise levels),
checkpoint-N/, logs/ (tensorboard).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch
import torch.nn.functional as F

from pipelines.classifier import HEADS, NoiseAwareClassifier, save_classifier
from train.common import finish_process, resume_step, warmup_cosine
from train.lora_checkpoints import latest_checkpoint, read_marker, remove_stale_partials, save_checkpoint
from train.lora_data import keyed_generator

EVAL_TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
EVAL_SEED_BASE = 70_000_000  # held-out renders, far from the training seeds (seed * 1_000_003 + i)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pretrained_model_name_or_path", default="models/tiny-shapes",
                   help="diffusers model folder whose vae/ and scheduler/ define the latents and the noise")
    p.add_argument("--output_dir", default="outputs/classifier")
    p.add_argument("--num_samples", type=int, default=24000, help="rendered training images")
    p.add_argument("--num_eval_samples", type=int, default=1500, help="held-out images for accuracy vs t")
    p.add_argument("--max_train_steps", type=int, default=4000)
    p.add_argument("--train_batch_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--lr_warmup_steps", type=int, default=100)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--channels", default="64,96", help="widths of the two stages (params grow ~ width^2)")
    p.add_argument("--checkpointing_steps", type=int, default=500)
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument("--resume_from_checkpoint", default=None, help='a checkpoint-N folder or "latest"')
    p.add_argument("--report_to", default="tensorboard", choices=("tensorboard", "none"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    for name in ("num_samples", "num_eval_samples", "max_train_steps", "train_batch_size", "checkpointing_steps"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name}={getattr(args, name)} must be > 0")
    text = args.channels
    try:
        args.channels = tuple(int(c) for c in text.split(","))
        assert len(args.channels) == 2 and all(c > 0 and c % 16 == 0 for c in args.channels)
    except (ValueError, AssertionError):
        raise ValueError(f"--channels={text!r} must be two multiples of 16, e.g. 64,96") from None
    if not os.path.isdir(os.path.join(args.pretrained_model_name_or_path, "vae")):
        raise ValueError(f"--pretrained_model_name_or_path={args.pretrained_model_name_or_path!r} has no vae/ folder")
    return args


@torch.no_grad()
def encode_renders(vae, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render the seeds, encode them: (posterior mean, posterior std) x scaling_factor, (N, 4, h, w)
    each, and labels (N, len(HEADS)) as class indices."""
    from shapesworld.world import images_array

    images, _, attrs = images_array(seeds, style=None, empty_prob=0.0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, 3, H, W) in [-1, 1]
    means, stds = [], []
    for i in range(0, len(x), 250):
        post = vae.encode(x[i:i + 250]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    scale = vae.config.scaling_factor
    labels = torch.tensor([[HEADS[k].index(getattr(a, k)) for k in HEADS] for a in attrs])
    return torch.cat(means) * scale, torch.cat(stds) * scale, labels


def load_data(args, vae, cache_path: str, seeds: list[int]):
    """Encoded renders, cached in the output folder (keyed by model and seeds)."""
    key = {"model": os.path.abspath(args.pretrained_model_name_or_path), "first": seeds[0], "n": len(seeds),
           "vae_mtime": os.path.getmtime(os.path.join(args.pretrained_model_name_or_path, "vae"))}
    if os.path.isfile(cache_path):
        blob = torch.load(cache_path, weights_only=True)  # our own tensors and a dict of plain values
        if blob.get("key") == key:
            return blob["mean"], blob["std"], blob["labels"]
    mean, std, labels = encode_renders(vae, seeds)
    tmp = cache_path + ".tmp"
    torch.save({"key": key, "mean": mean, "std": std, "labels": labels}, tmp)
    os.replace(tmp, cache_path)
    return mean, std, labels


def noised_batch(mean, std, labels, scheduler, batch_size: int, generator: torch.Generator):
    """One training batch: x_t from a fresh posterior draw at uniform t, its t and labels."""
    idx = torch.randint(0, len(mean), (batch_size,), generator=generator)
    x0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    return scheduler.add_noise(x0, noise, t), t, labels[idx]


def classification_loss(model, x_t, t, labels) -> torch.Tensor:
    logits = model(x_t, t)
    return sum(F.cross_entropy(logits[name], labels[:, i]) for i, name in enumerate(HEADS))


@torch.no_grad()
def accuracy_vs_t(model, mean, labels, scheduler, seed: int) -> dict[str, dict[str, float]]:
    """Held-out accuracy per attribute at each of EVAL_TIMESTEPS (posterior mean, fixed noise)."""
    model.eval()
    out = {}
    for t_value in EVAL_TIMESTEPS:
        g = keyed_generator(seed, 999_999, t_value)
        t = torch.full((len(mean),), t_value, dtype=torch.long)
        x_t = scheduler.add_noise(mean, torch.randn(mean.shape, generator=g), t)
        hits = {name: [] for name in HEADS}
        for i in range(0, len(mean), 500):
            logits = model(x_t[i:i + 500], t[i:i + 500])
            for j, name in enumerate(HEADS):
                hits[name].append((logits[name].argmax(-1) == labels[i:i + 500, j]).float())
        out[str(t_value)] = {name: round(float(torch.cat(v).mean()), 4) for name, v in hits.items()}
    model.train()
    return out


def plot_accuracy(table: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [int(t) for t in table]
    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=90)
    for name, classes in HEADS.items():
        ax.plot(ts, [table[str(t)][name] for t in ts], marker="o", ms=3, label=name)
        ax.axhline(1 / len(classes), ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xlabel("timestep t (999: zero SNR)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("noise-aware classifier: accuracy vs t (dotted: chance)", fontsize=9)
    ax.legend(fontsize=7, ncol=5, loc="lower left")
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers import AutoencoderKL, DDPMScheduler
    from tqdm.auto import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    log = logging.getLogger("train_classifier")
    accelerator = Accelerator(
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
    )
    os.makedirs(args.output_dir, exist_ok=True)
    if accelerator.is_main_process:
        remove_stale_partials(args.output_dir)
    resume_dir = args.resume_from_checkpoint
    if resume_dir == "latest":
        resume_dir = latest_checkpoint(args.output_dir)
        if resume_dir is None:
            log.info("--resume_from_checkpoint=latest: no complete checkpoint yet, starting fresh")
    if resume_dir:
        read_marker(resume_dir)  # an incomplete checkpoint is refused here, before any work

    # 1. Data: the model's own VAE latents and noise schedule
    src = args.pretrained_model_name_or_path
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae").eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler")  # only add_noise: same betas as DDIM's config
    t0 = time.time()
    train_seeds = [args.seed * 1_000_003 + i for i in range(args.num_samples)]
    eval_seeds = [EVAL_SEED_BASE + i for i in range(args.num_eval_samples)]
    mean, std, labels = load_data(args, vae, os.path.join(args.output_dir, "latents_train.pt"), train_seeds)
    eval_mean, _, eval_labels = load_data(args, vae, os.path.join(args.output_dir, "latents_eval.pt"), eval_seeds)
    log.info(f"encoded {len(mean)} + {len(eval_mean)} renders to latents {tuple(mean.shape[1:])} in {time.time() - t0:.0f}s")

    # 2. Model, optimizer, warmup + cosine LR
    torch.manual_seed(args.seed)
    model = NoiseAwareClassifier(in_channels=mean.shape[1], sample_size=mean.shape[-1], channels=args.channels,
                                 num_train_timesteps=scheduler.config.num_train_timesteps)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)

    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(args.lr_warmup_steps, args.max_train_steps, floor=0.05))
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    global_step = resume_step(accelerator, resume_dir)
    if resume_dir:
        log.info(f"resumed from {resume_dir} at step {global_step}")
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("train_classifier", config={k: str(v) for k, v in vars(args).items()})

    # 3. Train
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process)
    t_train = time.time()
    loss_avg = None
    while global_step < args.max_train_steps:
        g = keyed_generator(args.seed, accelerator.process_index, global_step)
        x_t, t, y = noised_batch(mean, std, labels, scheduler, args.train_batch_size, g)
        loss = classification_loss(model, x_t.to(accelerator.device), t.to(accelerator.device), y.to(accelerator.device))
        accelerator.backward(loss)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1
        loss_avg = float(loss.detach()) if loss_avg is None else 0.98 * loss_avg + 0.02 * float(loss.detach())
        progress.update()
        progress.set_postfix(loss=f"{loss_avg:.3f}")
        accelerator.log({"loss": float(loss.detach()), "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
        if global_step % args.checkpointing_steps == 0 and global_step < args.max_train_steps:
            save_checkpoint(accelerator, args.output_dir, global_step, {}, args.checkpoints_total_limit)
    train_seconds = time.time() - t_train

    # 4. Evaluate and save
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        table = accuracy_vs_t(final, eval_mean, eval_labels, scheduler, args.seed)
        for t_value, row in table.items():
            accelerator.log({f"accuracy/{k}": v for k, v in row.items()}, step=int(t_value))
        folder = os.path.join(args.output_dir, "classifier")
        save_classifier(final, folder)
        with open(os.path.join(args.output_dir, "accuracy_vs_t.json"), "w", encoding="utf-8") as f:
            json.dump(table, f, indent=2)
        plot_accuracy(table, os.path.join(args.output_dir, "accuracy_vs_t.png"))
        record = {
            "command": "python train/train_classifier.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
            "parameters": num_params, "final_loss_ema": round(loss_avg, 4) if loss_avg is not None else None,
            "train_seconds_this_run": round(train_seconds, 1), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "accuracy_vs_t": table,
        }
        with open(os.path.join(folder, "training.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        log.info(f"saved {folder} ({num_params} parameters); accuracy at t=0: {table['0']}, t=999: {table['999']}")
    accelerator.end_training()
    return finish_process(accelerator, 0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:  # bad flags or data: one clear line, not a traceback
        print(f"train_classifier.py: error: {err}", file=sys.stderr)
        sys.exit(2)
