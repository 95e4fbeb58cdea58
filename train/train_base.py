"""Train the embedded tiny Stable Diffusion ("tiny-shapes") from scratch on the shapes world.

    python train/train_base.py --output_dir models/tiny-shapes           # both stages, ~1 h on 2 CPU cores
    python train/train_base.py --output_dir models/tiny-shapes --resume  # continue after a stop

Stage 1 trains an AutoencoderKL (32x32 RGB -> 8x8x4 latents, f=4), then fine-tunes its decoder, encoder
frozen, on the LoRA styles too (so style LoRAs have something to decode to). Stage 2 encodes the data set
once and trains a UNet2DConditionModel jointly with a small CLIPTextModel whose tokenizer is built
from the shapes-world vocabulary. Every component is a stock diffusers/transformers class, saved in
diffusers format, so stock `StableDiffusionPipeline.from_pretrained` loads the result.

Why zero terminal SNR + v-prediction: with SD's default scaled_linear schedule the noisiest training
input still carries the image's low frequencies (alpha_bar(T) ~ 0.0047), so a small model learns to
read the layout from x_T instead of from the prompt and ignores position words. Rescaling the betas
to alpha_bar(T) = 0 (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
Flawed") removes that leak; epsilon prediction is undefined at SNR 0, hence v-prediction, and
sampling must start at t = T, hence "trailing" timestep spacing. All three go into the saved
scheduler config, so any diffusers scheduler built from it samples the model correctly.

Every batch, noise draw and timestep is a function of (seed, step), so a resumed run continues
exactly where the stopped one was; checkpoints are train/lora_checkpoints.py's (written to a temporary
folder, marked complete, renamed), so a stop during a save never leaves a broken latest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm


from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from shapesworld import STYLES, VOCABULARY, images_array
from shapesworld.tokenizer import build_clip_tokenizer_files
from train.common import finish_process, resume_step, warmup_cosine
from train.lora_checkpoints import latest_checkpoint, remove_stale_partials, save_checkpoint

MAX_TOKENS = 32  # longest shapes caption + a LoRA trigger phrase is ~14 tokens


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="models/tiny-shapes", help="final diffusers-format model folder")
    p.add_argument("--work_dir", default="runs/tiny-shapes", help="checkpoints, data cache and tensorboard logs")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--num_samples", type=int, default=20000, help="size of the rendered training set")
    p.add_argument("--vae_steps", type=int, default=700)
    p.add_argument("--vae_batch_size", type=int, default=32)
    p.add_argument("--vae_lr", type=float, default=1e-3)
    p.add_argument("--decoder_steps", type=int, default=400, help="decoder fine-tune on the LoRA styles (encoder frozen)")
    p.add_argument("--unet_steps", type=int, default=3000)
    p.add_argument("--unet_batch_size", type=int, default=48)
    p.add_argument("--unet_lr", type=float, default=6e-4)
    p.add_argument("--warmup_steps", type=int, default=200)
    p.add_argument("--ema_decay", type=float, default=0.999)
    p.add_argument("--caption_dropout", type=float, default=0.05, help="extra empty captions on top of the data's 10%")
    p.add_argument("--checkpointing_steps", type=int, default=250)
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.add_argument("--stage", choices=["all", "vae", "unet"], default="all")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    for name in ("num_samples", "vae_steps", "unet_steps", "vae_batch_size", "unet_batch_size", "checkpointing_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


# ----------------------------------------------------------------------------- components

def build_tokenizer(folder: str) -> CLIPTokenizer:
    vocab, merges = build_clip_tokenizer_files(VOCABULARY, folder)
    return CLIPTokenizer(vocab, merges, model_max_length=MAX_TOKENS)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
    )


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
    )


def noise_schedule_kwargs() -> dict:
    return dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                rescale_betas_zero_snr=True, prediction_type="v_prediction")


# ----------------------------------------------------------------------------- helpers

class EMA:
    """Exponential moving average of parameters (kept on the side, saved with checkpoints)."""

    def __init__(self, params, decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, params):
        torch._foreach_lerp_(self.shadow, [p.detach() for p in params], 1 - self.decay)

    def copy_to(self, params):
        for s, p in zip(self.shadow, params):
            p.data.copy_(s)

    def state_dict(self):
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state):
        self.decay = state["decay"]
        self.shadow = [t.clone() for t in state["shadow"]]


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """The indices of batch ``step``: epoch-wise permutations, a pure function of (seed, step)."""
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size]


def resume_checkpoint(args, accelerator: Accelerator, folder: str) -> int:
    """A stage's start step: with --resume its latest complete checkpoint loaded, else 0 (half-written
    ones from a stop during a save are removed either way)."""
    if accelerator.is_main_process:
        remove_stale_partials(folder)
    return resume_step(accelerator, latest_checkpoint(folder) if args.resume else None)


def publish_dir(tmp: str, final: str) -> None:
    """Move a completely written folder into place (a crash before this leaves only ``*.tmp``)."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def load_data(args) -> tuple[torch.Tensor, list[str]]:
    """Render (or read back) the training set: uint8 images (N, 32, 32, 3) and captions."""
    cache = os.path.join(args.work_dir, f"data-{args.seed}-{args.num_samples}.npz")
    if os.path.exists(cache):
        data = np.load(cache)
        return torch.from_numpy(data["images"]), [str(c) for c in data["captions"]]
    seeds = np.arange(args.num_samples) + args.seed * 1_000_000
    images, captions, _ = images_array(tqdm(seeds, desc="render shapes", leave=False))
    tmp = cache + ".tmp.npz"
    np.savez(tmp, images=images, captions=np.array(captions))
    os.replace(tmp, cache)
    return torch.from_numpy(images), captions


def to_model_space(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (B, 3, H, W) in [-1, 1]


# ----------------------------------------------------------------------------- stages

def train_vae(args, accelerator: Accelerator, images: torch.Tensor) -> AutoencoderKL:
    folder = os.path.join(args.work_dir, "vae")
    final = os.path.join(folder, "final")
    if os.path.exists(os.path.join(final, "config.json")):
        return AutoencoderKL.from_pretrained(final)
    torch.manual_seed(args.seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(args.warmup_steps, args.vae_steps, floor=0.1))
    vae, opt, sched = accelerator.prepare(vae, opt, sched)
    start = resume_checkpoint(args, accelerator, folder)
    bar = tqdm(range(start, args.vae_steps), initial=start, total=args.vae_steps, desc="vae",
               disable=not accelerator.is_local_main_process)
    for step in bar:
        x = to_model_space(images[batch_indices(step, args.vae_batch_size, len(images), args.seed)])
        posterior = vae.encode(x).latent_dist
        g = torch.Generator().manual_seed(args.seed * 7919 + step)
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = mse + 1e-4 * kl  # a light KL keeps the latent near N(0, I) without blurring
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0:
            accelerator.log({"vae/mse": mse.item(), "vae/kl": kl.item(), "vae/lr": sched.get_last_lr()[0]}, step=step)
            bar.set_postfix(mse=f"{mse.item():.4f}")
        if (step + 1) % args.checkpointing_steps == 0 and step + 1 < args.vae_steps:
            save_checkpoint(accelerator, folder, step + 1, {"stage": "vae", "mse": mse.item()}, args.checkpoints_total_limit)
    vae = accelerator.unwrap_model(vae).eval()
    # SD convention: latents are multiplied by scaling_factor so that they have unit variance
    with torch.no_grad():
        sample = torch.cat([vae.encode(to_model_space(images[i:i + 256])).latent_dist.sample()
                            for i in range(0, min(2048, len(images)), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / sample.std()))
    tmp = final + ".tmp"
    vae.save_pretrained(tmp)
    with open(os.path.join(tmp, "metrics.json"), "w") as f:
        json.dump({"final_mse": mse.item(), "latent_std": float(sample.std()), "steps": args.vae_steps}, f)
    publish_dir(tmp, final)
    accelerator.free_memory()
    return vae


def finetune_decoder_on_styles(args, accelerator: Accelerator, vae: AutoencoderKL, images: torch.Tensor) -> AutoencoderKL:
    """Teach the decoder the LoRA styles (outline, night, pastel) with the encoder frozen.

    The UNet is trained on plain images only, but the style LoRAs must produce latents that decode
    to dark backgrounds, hollow shapes and washed-out colors, which a VAE that never saw them cannot
    reconstruct (measured: night images came back with light backgrounds, MSE ~1.0). Freezing the
    encoder keeps the latent space, and so the UNet, exactly as it was; plain images stay in the mix
    so their reconstructions do not degrade.
    """
    folder = os.path.join(args.work_dir, "vae")
    final = os.path.join(folder, "final-styles")
    if os.path.exists(os.path.join(final, "config.json")):
        return AutoencoderKL.from_pretrained(final)
    styled = [images_array(np.arange(min(2000, args.num_samples)) + (args.seed + k) * 1_000_000 + 500_000, style=style)[0]
              for k, style in enumerate(STYLES, start=1)]
    pool = torch.cat([images[:6000]] + [torch.from_numpy(x) for x in styled])  # (12000, 32, 32, 3)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p_ in vae.post_quant_conv.parameters():
        p_.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=3e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(20, args.decoder_steps, floor=0.1))
    bar = tqdm(range(args.decoder_steps), desc="decoder (styles)", disable=not accelerator.is_local_main_process)
    for step in bar:
        x = to_model_space(pool[batch_indices(step, args.vae_batch_size, len(pool), args.seed + 2)])
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
        g = torch.Generator().manual_seed(args.seed * 31 + step)
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        loss = F.mse_loss(vae.decode(z).sample, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0:
            accelerator.log({"decoder/mse": loss.item()}, step=step)
            bar.set_postfix(mse=f"{loss.item():.4f}")
    vae.requires_grad_(False)
    vae.eval()
    tmp = final + ".tmp"
    vae.save_pretrained(tmp)
    with open(os.path.join(tmp, "metrics.json"), "w") as f:
        json.dump({"final_mse": loss.item(), "steps": args.decoder_steps}, f)
    publish_dir(tmp, final)
    return vae


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, images: torch.Tensor, cache: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every training image, computed once (stage 2 samples from them)."""
    if os.path.exists(cache):
        d = torch.load(cache, weights_only=True)
        return d["mean"], d["std"]
    means, stds = [], []
    for i in tqdm(range(0, len(images), 500), desc="encode", leave=False):
        post = vae.encode(to_model_space(images[i:i + 500])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    mean, std = torch.cat(means), torch.cat(stds)
    torch.save({"mean": mean, "std": std}, cache + ".tmp")
    os.replace(cache + ".tmp", cache)
    return mean, std


def train_unet(args, accelerator: Accelerator, vae: AutoencoderKL, images, captions, tokenizer):
    folder = os.path.join(args.work_dir, "unet")
    os.makedirs(folder, exist_ok=True)
    final = os.path.join(folder, "final")
    if os.path.exists(os.path.join(final, "done.json")):  # stage already finished: EMA weights saved
        done = json.load(open(os.path.join(final, "done.json")))
        return (UNet2DConditionModel.from_pretrained(final, subfolder="unet").eval(),
                CLIPTextModel.from_pretrained(final, subfolder="text_encoder").eval(), done["loss"])
    lat_mean, lat_std = encode_dataset(vae, images, os.path.join(args.work_dir, "latents.pt"))
    scale = vae.config.scaling_factor
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids

    torch.manual_seed(args.seed + 1)
    unet, text_encoder = build_unet(), build_text_encoder(tokenizer)
    noise_scheduler = DDPMScheduler(**noise_schedule_kwargs())
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(args.warmup_steps, args.unet_steps, floor=0.1))
    unet, text_encoder, opt, sched = accelerator.prepare(unet, text_encoder, opt, sched)
    ema = EMA(params, args.ema_decay)
    accelerator.register_for_checkpointing(ema)
    start = resume_checkpoint(args, accelerator, folder)

    bar = tqdm(range(start, args.unet_steps), initial=start, total=args.unet_steps, desc="unet",
               disable=not accelerator.is_local_main_process)
    for step in bar:
        idx = batch_indices(step, args.unet_batch_size, len(images), args.seed + 1)
        g = torch.Generator().manual_seed(args.seed * 104_729 + step)
        latents = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)) * scale  # (B, 4, 8, 8)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        drop = torch.rand(len(idx), generator=g) < args.caption_dropout
        batch_ids = torch.where(drop[:, None], empty_ids, ids[idx])
        noisy = noise_scheduler.add_noise(latents, noise, t)
        target = noise_scheduler.get_velocity(latents, noise, t)  # v = sqrt(ab) eps - sqrt(1 - ab) x0
        cond = text_encoder(batch_ids)[0]  # (B, 32, 64)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, target)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema.update(params)
        if step % 20 == 0:
            accelerator.log({"unet/loss": loss.item(), "unet/lr": sched.get_last_lr()[0]}, step=step)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % args.checkpointing_steps == 0 and step + 1 < args.unet_steps:
            save_checkpoint(accelerator, folder, step + 1, {"stage": "unet", "loss": loss.item()}, args.checkpoints_total_limit)

    unet, text_encoder = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
    ema.copy_to(list(unet.parameters()) + list(text_encoder.parameters()))
    if accelerator.is_main_process:
        tmp = final + ".tmp"
        unet.save_pretrained(os.path.join(tmp, "unet"))
        text_encoder.save_pretrained(os.path.join(tmp, "text_encoder"))
        with open(os.path.join(tmp, "done.json"), "w") as f:
            json.dump({"loss": float(loss.item()), "steps": args.unet_steps}, f)
        publish_dir(tmp, final)
    return unet.eval(), text_encoder.eval(), float(loss.item())


def save_model(args, vae, unet, text_encoder, tokenizer, metrics: dict):
    scheduler = DDIMScheduler(**noise_schedule_kwargs(), clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, timestep_spacing="trailing")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = args.output_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    with open(os.path.join(tmp, "training.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    # keep files other tools add to the model folder (preview factors, model card)
    if os.path.isdir(args.output_dir):
        for name in ("preview_factors.json", "README.md"):
            if os.path.exists(os.path.join(args.output_dir, name)) and not os.path.exists(os.path.join(tmp, name)):
                shutil.copy(os.path.join(args.output_dir, name), os.path.join(tmp, name))
        shutil.rmtree(args.output_dir)
    os.replace(tmp, args.output_dir)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    accelerator = Accelerator(log_with="tensorboard",
                              project_config=ProjectConfiguration(project_dir=args.work_dir, logging_dir=os.path.join(args.work_dir, "logs")))
    accelerator.init_trackers("tiny-shapes", config={k: v for k, v in vars(args).items()})
    t0 = time.time()
    images, captions = load_data(args)
    vae = train_vae(args, accelerator, images)
    vae_metrics = json.load(open(os.path.join(args.work_dir, "vae", "final", "metrics.json")))
    vae = finetune_decoder_on_styles(args, accelerator, vae, images)
    vae_metrics["decoder_styles"] = json.load(open(os.path.join(args.work_dir, "vae", "final-styles", "metrics.json")))
    if args.stage == "vae":
        accelerator.end_training()
        finish_process(accelerator)
        return
    tokenizer = build_tokenizer(os.path.join(args.work_dir, "tokenizer"))
    unet, text_encoder, final_loss = train_unet(args, accelerator, vae, images, captions, tokenizer)
    metrics = {"seed": args.seed, "vae": vae_metrics, "unet": {"final_loss": final_loss, "steps": args.unet_steps,
               "batch_size": args.unet_batch_size}, "wall_seconds_this_run": round(time.time() - t0, 1),
               "command": "python train/train_base.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    if accelerator.is_main_process:
        save_model(args, vae, unet, text_encoder, tokenizer, metrics)
    accelerator.end_training()
    print(json.dumps(metrics, indent=2))
    finish_process(accelerator)


if __name__ == "__main__":
    main()
