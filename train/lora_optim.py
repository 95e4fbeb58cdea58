"""Optimizer (one param group per LoRA'd module) and learning-rate schedules for the LoRA trainer."""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


def lora_param_groups(unet_params, text_encoder_params, args, lr_scale: float = 1.0) -> list[dict]:
    """UNet LoRA and text-encoder LoRA as separate groups: each has its own lr and weight decay."""
    groups = [{"name": "unet", "params": list(unet_params), "lr": args.learning_rate * lr_scale,
               "weight_decay": args.adam_weight_decay}]
    text_encoder_params = list(text_encoder_params or [])
    if text_encoder_params:
        te_lr = args.text_encoder_lr if args.text_encoder_lr is not None else args.learning_rate
        te_wd = args.text_encoder_weight_decay if args.text_encoder_weight_decay is not None else args.adam_weight_decay
        groups.append({"name": "text_encoder", "params": text_encoder_params, "lr": te_lr * lr_scale,
                       "weight_decay": te_wd})
    return groups


def build_optimizer(param_groups: list[dict], args) -> torch.optim.Optimizer:
    if args.use_8bit_adam:
        import bitsandbytes as bnb  # checked in validate_args

        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(param_groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


def warmup_cosine_schedule(optimizer, warmup_steps: int, total_steps: int, start_factor: float, lr_min: float):
    """Linear warmup from `start_factor * lr` to `lr` over `warmup_steps`, then cosine decay to `lr_min`.

    lr(t) = lr * (f0 + (1 - f0) * t / W)                              for t < W
    lr(t) = lr_min + (lr - lr_min) * (1 + cos(pi * (t - W) / (T - W))) / 2   for W <= t <= T
    (Loshchilov & Hutter 2017, "SGDR", without restarts.)
    """
    decay_steps = max(1, total_steps - warmup_steps)
    cosine = CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=lr_min)
    if warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, schedulers=[warmup, cosine], milestones=[warmup_steps])


def build_lr_scheduler(optimizer, args, max_train_steps: int, num_processes: int):
    """Scheduler lengths count scheduler.step() calls: accelerate's wrapped scheduler steps once per
    process per optimizer step (batches are not split), hence the `* num_processes`."""
    warmup_steps = args.lr_warmup_steps * num_processes
    total_steps = max_train_steps * num_processes
    if args.lr_scheduler == "warmup_cosine":
        return warmup_cosine_schedule(optimizer, warmup_steps, total_steps, args.lr_warmup_start_factor, args.lr_min)
    from diffusers.optimization import get_scheduler

    return get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=total_steps, num_cycles=args.lr_num_cycles, power=args.lr_power)


def min_snr_loss_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via
    Min-SNR Weighting Strategy", eq. 8 and its v-prediction form).

    The paper's x0-loss weight is min(SNR, gamma). An epsilon-MSE equals the x0-MSE times SNR, and a
    v-MSE equals the x0-MSE times (SNR + 1), so the weight on the loss we compute is
        epsilon:       min(SNR, gamma) / SNR        (= 1 where SNR <= gamma, finite at SNR = 0)
        v_prediction:  min(SNR, gamma) / (SNR + 1)
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return torch.where(snr > gamma, gamma / snr.clamp(min=gamma), torch.ones_like(snr))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    raise ValueError(f"prediction_type={prediction_type!r} is not one of 'epsilon', 'v_prediction'")


def snr_of_timesteps(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) of each timestep (pipelines.forward.snr, float64), cast to float32."""
    from pipelines.forward import snr

    return snr(alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)[timesteps]).float()
