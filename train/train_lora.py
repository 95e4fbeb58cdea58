#!/usr/bin/env python
"""Fine-tune LoRA adapters on a Stable Diffusion 1.x/2.x model (diffusers format) with accelerate.

    accelerate launch train/train_lora.py --pretrained_model_name_or_path models/tiny-shapes \
        --shapes_style outline --trigger_word "outline style" --output_dir outputs/lora-outline \
        --max_train_steps 500 --checkpointing_steps 100 --validation_prompt "outline style, a red circle"
    python train/train_lora.py ...                       # one process, no launcher
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 train/train_lora.py ...   # 2 CPU processes (gloo)

Flags follow diffusers' train_text_to_image_lora.py (see train/lora_args.py for the differences).
Output: <output_dir>/pytorch_lora_weights.safetensors (stock `load_lora_weights`), README.md model
card, validation/*.png, checkpoint-N/ folders, train_result.json. See train/README.md.

Reproducibility: every random draw is keyed by the seed and a position (data: seed, epoch, index;
noise and timesteps: seed, rank, micro-step), so a run resumed from a checkpoint continues
exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F

from train.common import finish_process
from train.lora_args import parse_args, public_config
from train.redact import install_log_redaction
from train.lora_checkpoints import (
    latest_checkpoint, read_marker, register_lora_state_hooks, remove_stale_partials, save_checkpoint,
)
from train.lora_data import (
    EpochShuffleSampler, build_dataset, collate, keyed_generator, render_shapes_dataset,
)
from train.lora_optim import (
    build_lr_scheduler, build_optimizer, lora_param_groups, min_snr_loss_weights, snr_of_timesteps,
)
from train.lora_init import load_initial_lora
from train.lora_partner import PARTNER_ADAPTER, PartnerLoRA, partner_batch, partner_step
from train.lora_dial import AdapterScales, DialAnchor, DialRenderer, anchored_step, dial_partner, dial_weight
from train.lora_validation import run_validation

WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def load_components(args):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    src = dict(pretrained_model_name_or_path=args.pretrained_model_name_or_path, revision=args.revision,
               cache_dir=args.cache_dir)
    tokenizer = CLIPTokenizer.from_pretrained(subfolder="tokenizer", **src)
    text_encoder = CLIPTextModel.from_pretrained(subfolder="text_encoder", variant=args.variant, **src)
    vae = AutoencoderKL.from_pretrained(subfolder="vae", variant=args.variant, **src)
    unet = UNet2DConditionModel.from_pretrained(subfolder="unet", variant=args.variant, **src)
    noise_scheduler = DDPMScheduler.from_pretrained(subfolder="scheduler", **src)
    if args.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=args.prediction_type)
    return tokenizer, text_encoder, vae, unet, noise_scheduler


def add_lora_adapters(unet, text_encoder, args) -> None:
    """Inject a "default" LoRA adapter into the UNet and, with --train_text_encoder, the text encoder.

    peft's `inject_adapter_in_model` is used for the text encoder rather than transformers'
    `add_adapter`, which refuses peft < 0.22 (transformers 5.24 vs our pinned peft 0.21.2).
    """
    from peft import LoraConfig, inject_adapter_in_model

    init = "gaussian" if args.init_lora_weights == "gaussian" else True
    for flag, module, targets in (("--target_modules", unet, args.target_modules),
                                  ("--text_encoder_target_modules", text_encoder, args.text_encoder_target_modules)):
        if module is text_encoder and not args.train_text_encoder:
            continue
        names = [m.strip() for m in targets.split(",") if m.strip()]
        config = LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                            init_lora_weights=init, target_modules=names)
        try:
            if module is unet:
                unet.add_adapter(config)  # diffusers' PeftAdapterMixin: also marks the adapter as loaded
            else:
                inject_adapter_in_model(config, module, adapter_name="default")
        except ValueError as err:
            if "not found in the base model" in str(err) or "Target modules" in str(err):
                raise ValueError(f"{flag}={targets!r} matches no layer of the {type(module).__name__}") from None
            raise


def setup_lora_models(unet, vae, text_encoder, args, device, weight_dtype) -> None:
    """Freeze the base, cast it to the compute dtype, add LoRA, keep LoRA parameters in fp32.

    fp32 trainable parameters are what lets the fp16 grad scaler work at all ("Attempting to
    unscale FP16 gradients" otherwise) and keep small LoRA updates from rounding away.
    """
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        # Only cast when needed: diffusers warns on any dtype cast of a loaded model, even to fp32.
        module.to(device, **({"dtype": weight_dtype} if weight_dtype != torch.float32 else {}))
    add_lora_adapters(unet, text_encoder, args)
    for module in (unet, text_encoder):
        for p in trainable(module):
            p.data = p.data.float()


def trainable(module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def training_loss(batch, unet, text_encoder, vae, noise_scheduler, args, generator, weight_dtype, empty_ids=None,
                  teacher=None, fit_latents_steps: int = 0):
    """One denoising-score-matching loss: encode, noise at a random t, predict, weighted MSE.

    With --cfg_loss_scale G the guided prediction u + G (c - u) is held to the same target too
    (u: the prediction for the empty caption ``empty_ids``, through the same adapter), weighted by
    --cfg_loss_weight: the adapter then also has to be right where classifier-free guidance at G
    takes the sampler, not only along the conditional prediction it is trained on.

    ``teacher`` (a context manager factory, --dial_anchor_lora on an anchored step): inside it the UNet
    predicts as the anchor does; the prediction on the same noisy latents, timesteps and captions is a
    second target, weighted by --dial_anchor_weight.

    ``fit_latents_steps`` (--latent_fit_steps): the posterior mean is first fitted to the images through
    the frozen decoder (train/lora_latent_fit.py), so the target latents are ones the decoder draws right.
    """
    pixel_values = batch["pixel_values"].to(dtype=weight_dtype)  # (B, 3, H, W)
    with torch.no_grad():
        posterior = vae.encode(pixel_values).latent_dist
        mean = posterior.mean
        if fit_latents_steps:
            from train.lora_latent_fit import fit_latents

            mean = fit_latents(vae, pixel_values, mean, fit_latents_steps, args.latent_fit_lr)
        latents = mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=generator).to(posterior.mean)
        latents = latents.float() * vae.config.scaling_factor  # (B, 4, h, w)
    bsz, channels = latents.shape[:2]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    if args.noise_offset:
        # Crosslabs' offset noise: a per-channel constant lets the model shift mean brightness.
        noise = noise + args.noise_offset * torch.randn((bsz, channels, 1, 1), generator=generator).to(latents)
    num_t = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_t, (bsz,), generator=generator).to(latents.device)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)

    encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]  # (B, L, D)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"prediction_type={prediction_type!r} (scheduler config or --prediction_type) is not supported")
    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
    weights = (None if args.snr_gamma is None else
               min_snr_loss_weights(snr_of_timesteps(noise_scheduler.alphas_cumprod, timesteps), args.snr_gamma,
                                    prediction_type))

    pixel_weights = (None if not args.foreground_loss_weight else
                     foreground_weights(pixel_values, latents.shape[-2:], args.foreground_loss_weight))

    def weighted_mse(pred: torch.Tensor, goal: torch.Tensor = target, where=None) -> torch.Tensor:
        err = F.mse_loss(pred.float(), goal.float(), reduction="none")
        per_sample = err.mean(dim=(1, 2, 3)) if where is None else (err * where).mean(dim=(1, 2, 3))  # (B,)
        return per_sample.mean() if weights is None else (per_sample * weights).mean()

    loss = weighted_mse(model_pred, where=pixel_weights)
    if teacher is not None:
        with torch.no_grad(), teacher():
            anchor_pred = unet(noisy_latents, timesteps, encoder_hidden_states.detach(), return_dict=False)[0]
        loss = loss + args.dial_anchor_weight * weighted_mse(model_pred, anchor_pred)
    if args.cfg_loss_scale is not None:
        empty_states = text_encoder(empty_ids.to(batch["input_ids"].device), return_dict=False)[0]  # (1, L, D)
        uncond_pred = unet(noisy_latents, timesteps, empty_states.expand(bsz, -1, -1), return_dict=False)[0]
        guided = uncond_pred + args.cfg_loss_scale * (model_pred - uncond_pred)
        loss = loss + args.cfg_loss_weight * weighted_mse(guided)
    return loss


def foreground_weights(pixel_values: torch.Tensor, latent_size, weight: float) -> torch.Tensor:
    """(B, 1, h, w) loss weights at latent resolution for --foreground_loss_weight: 1 + ``weight`` x the share
    of each latent pixel's image pixels that differ from the image's border color (the subject on a plain
    background), normalised to mean 1 per image so the loss keeps its scale."""
    x = pixel_values.float()
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # (B, 3, 4W)
    background = border.median(dim=-1).values[..., None, None]  # (B, 3, 1, 1)
    subject = ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).float()  # (B, 1, H, W)
    share = F.adaptive_avg_pool2d(subject, tuple(latent_size))
    w = 1.0 + weight * share
    return w / w.mean(dim=(2, 3), keepdim=True)


def lora_fingerprint(modules) -> str:
    """sha256 of every LoRA tensor's bytes, in key order: equal across ranks iff the weights are identical."""
    from peft.utils import get_peft_model_state_dict

    digest = hashlib.sha256()
    for module in modules:
        for key, value in sorted(get_peft_model_state_dict(module).items()):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.utils import DistributedType, ProjectConfiguration, broadcast_object_list, gather_object, set_seed
    from tqdm.auto import tqdm

    from train.lora_export import HubPushError, push_output_folder, save_adapter, write_model_card

    report_to = args.report_to if args.report_to != "none" else None
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=report_to.split(",") if report_to and report_to != "all" else report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    install_log_redaction(args.hub_token)  # any token (flag, HF_TOKEN, login) masked in every log line
    logger = get_logger("train_lora", log_level="INFO")
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and args.train_text_encoder:
        raise ValueError("--train_text_encoder is not supported under DeepSpeed (it takes one model); "
                         "use train/accelerate_configs/multi_gpu.yaml or drop the flag")
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True

    # 1. Resolve the resume point and seed: all ranks must share one seed (sampler order).
    resume_dir = args.resume_from_checkpoint
    if resume_dir == "latest":
        resume_dir = latest_checkpoint(args.output_dir)
        if resume_dir is None:
            logger.info("--resume_from_checkpoint=latest: no complete checkpoint yet, starting fresh")
    position = read_marker(resume_dir) if resume_dir else {}
    seed = position.get("seed", args.seed)
    if args.seed is not None and seed != args.seed:
        logger.warning(f"--seed={args.seed} ignored: {resume_dir} was trained with seed {seed}")
    if seed is None:
        seed = [int(torch.randint(0, 2**31 - 1, (1,)))]
        seed = broadcast_object_list(seed)[0]
    args.seed = seed
    set_seed(seed)  # LoRA init; LoRA dropout (whose RNG state checkpoints carry)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        remove_stale_partials(args.output_dir)
        if args.shapes_style:
            args.train_data_dir = render_shapes_dataset(os.path.join(args.output_dir, "data"), args.shapes_style,
                                                        args.shapes_num_samples or 200, seed, args.trigger_word)
            if args.partner_shapes_style and not args.dial:  # --dial renders its partner batches per step
                from shapesworld.world import join_styles  # lazy, like render_shapes_dataset's import

                render_shapes_dataset(os.path.join(args.output_dir, "partner_data"),
                                      join_styles(args.shapes_style, args.partner_shapes_style),
                                      args.shapes_num_samples or 200, seed + 1, args.trigger_word)
    accelerator.wait_for_everyone()
    if args.shapes_style:
        args.train_data_dir = os.path.join(args.output_dir, "data")
    if args.partner_shapes_style and not args.dial:
        args.partner_train_data_dir = os.path.join(args.output_dir, "partner_data")

    # 2. Models: frozen base in the compute dtype, LoRA parameters in fp32 (so the fp16 grad scaler
    #    never sees half-precision gradients: "Attempting to unscale FP16 gradients").
    weight_dtype = WEIGHT_DTYPES.get(accelerator.mixed_precision, torch.float32)
    tokenizer, text_encoder, vae, unet, noise_scheduler = load_components(args)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if args.resolution is None:
        args.resolution = unet.config.sample_size * vae_factor
    if args.resolution % vae_factor:
        raise ValueError(f"--resolution={args.resolution} must be a multiple of the VAE factor {vae_factor}")
    setup_lora_models(unet, vae, text_encoder, args, accelerator.device, weight_dtype)
    if args.init_lora:
        count = load_initial_lora(unet, args.init_lora, args.rank, args.lora_alpha)
        logger.info(f"Adapter starts from {args.init_lora} ({count} tensors)")
    partners = [PartnerLoRA(unet, path, args.partner_weight, name=PARTNER_ADAPTER if i == 0 else f"{PARTNER_ADAPTER}_{i}")
                for i, path in enumerate(args.partner_loras)]
    partner = partners[0] if partners else None
    for p_, path in zip(partners, args.partner_loras):
        logger.info(f"Partner LoRA {path}: {p_.num_parameters} frozen parameters, on for "
                    f"{args.partner_prob / len(partners):.0%} of the steps at "
                    + ("drawn weights (--dial)" if args.dial else f"weight {args.partner_weight}"))
    dial_scales = AdapterScales(unet, ["default"]) if args.dial else None
    anchor = None
    if args.dial_anchor_lora:
        partner_anchors = {args.partner_shapes_styles.index(st): f
                           for st, f in zip(args.dial_anchor_pair_styles, args.dial_anchor_partner_files)}
        anchor = DialAnchor(unet, args.dial_anchor_lora, partner_anchors)
        logger.info(f"Dial anchor {args.dial_anchor_lora}: weight-1 steps (alone"
                    + "".join(f", with {st} at 1" for st in args.dial_anchor_pair_styles)
                    + f") held to its prediction (x{args.dial_anchor_weight})")
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if args.train_text_encoder:
            text_encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    # 3. Data: (epoch, index) keys in a seeded order; our own generator keeps DataLoader off the global RNG.
    dataset = build_dataset(args, tokenizer, args.resolution, seed)
    sampler = EpochShuffleSampler(len(dataset), seed)
    partner_data = build_dataset(args, tokenizer, args.resolution, seed, partner=True) if partner and not args.dial else None
    renderer = (DialRenderer(tokenizer, args.resolution, seed, args.trigger_word, args.caption_dropout_prob)
                if args.dial else None)
    empty_ids = dataset.tokenize("")[None] if args.cfg_loss_scale is not None else None  # (1, L): the empty caption
    train_dataloader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=args.train_batch_size, collate_fn=collate,
        num_workers=args.dataloader_num_workers, generator=torch.Generator().manual_seed(seed))

    # 4. Optimizer and schedule.
    lr_scale = (args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
                if args.scale_lr else 1.0)
    te_params = trainable(text_encoder) if args.train_text_encoder else []
    optimizer = build_optimizer(lora_param_groups(trainable(unet), te_params, args, lr_scale), args)
    batches_per_process = math.ceil(len(train_dataloader) / accelerator.num_processes)
    updates_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * updates_per_epoch
    lr_scheduler = build_lr_scheduler(optimizer, args, args.max_train_steps, accelerator.num_processes)

    if args.train_text_encoder:
        unet, text_encoder, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, text_encoder, optimizer, train_dataloader, lr_scheduler)
    else:
        unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, optimizer, train_dataloader, lr_scheduler)
    lora_modules = {"unet": accelerator.unwrap_model(unet)}
    if args.train_text_encoder:
        lora_modules["text_encoder"] = accelerator.unwrap_model(text_encoder)
    register_lora_state_hooks(accelerator, lora_modules)
    args.num_train_epochs = math.ceil(args.max_train_steps / math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))

    config = public_config(args)
    if accelerator.is_main_process and report_to:
        accelerator.init_trackers("train_lora", config=config)

    # 5. Resume: LoRA weights (checked key by key), optimizer, scheduler, RNG, accelerate's step counter.
    global_step, first_epoch, skip_batches = 0, 0, 0
    if resume_dir:
        logger.info(f"Resuming from {resume_dir}")
        accelerator.load_state(resume_dir)
        global_step = position["global_step"]
        first_epoch, skip_batches = position["epoch"], position["batches_in_epoch"]

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"{len(dataset)} examples, {args.max_train_steps} optimizer steps of {total_batch} examples "
                f"({accelerator.num_processes} process(es)), resolution {args.resolution}, dtype {weight_dtype}")
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps",
                    disable=not accelerator.is_local_main_process)
    models_to_accumulate = [unet, text_encoder] if args.train_text_encoder else [unet]
    params_to_clip = [p for group in optimizer.param_groups for p in group["params"]]
    loss_sum, loss_count, samples_seen, loop_start = 0.0, 0, 0, time.perf_counter()
    last_loss, epoch, partner_steps, anchored_steps, fitted_steps = float("nan"), first_epoch, 0, 0, 0

    def validate(model, tag: str) -> None:
        """Validation images of the adapter alone and, with a partner, of the two together."""
        text_encoder_now = accelerator.unwrap_model(text_encoder)
        full_weights()
        for on in ((False, True) if partner else (False,)):
            if partner:
                partner.switch(on)
            run_validation(accelerator, args, model, text_encoder_now, vae, tokenizer, weight_dtype,
                           tag=f"{tag}-with-partner" if on else tag)

    def full_weights() -> None:
        """The adapter at weight 1 and every partner off: how it is validated and saved (--dial moves both)."""
        if dial_scales:
            dial_scales.set({"default": 1.0})
        for p_ in partners:
            p_.switch(False)

    # 6. Training loop.
    unet.train()
    if args.train_text_encoder:
        text_encoder.train()
    for epoch in range(first_epoch, args.num_train_epochs):
        if global_step >= args.max_train_steps:
            break
        sampler.set_epoch(epoch)
        train_dataloader.set_epoch(epoch)
        skip = skip_batches if epoch == first_epoch else 0
        epoch_loader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        for batch_in_epoch, batch in enumerate(epoch_loader, start=skip):
            micro_step = epoch * len(train_dataloader) + batch_in_epoch
            generator = keyed_generator(seed, accelerator.process_index, micro_step)
            teacher, fit = None, args.latent_fit_steps
            if args.dial:  # the adapter (and maybe one partner) at drawn weights, on images drawn at them
                weight = dial_weight(seed, micro_step, args.dial_min_weight, args.dial_full_prob)
                style, strengths = args.shapes_style, {args.shapes_style: weight}
                partner_weights = [0.0] * len(partners)
                if partners and partner_step(seed, micro_step, args.partner_prob):
                    from shapesworld.world import join_styles
                    which, partner_weights[which] = dial_partner(seed, micro_step, weight, len(partners),
                                                                 args.dial_min_weight, args.dial_partner_equal_prob)
                    other = args.partner_shapes_styles[which]
                    style, strengths[other] = join_styles(args.shapes_style, other), partner_weights[which]
                    partner_steps += 1
                dial_scales.set({"default": weight})
                for p_, w_ in zip(partners, partner_weights):
                    p_.set_weight(w_)
                batch = renderer.batch(style, strengths, accelerator.process_index, micro_step,
                                       batch["pixel_values"].shape[0])
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                if anchor and anchored_step(weight, partner_weights, args.partner_shapes_styles,
                                            args.dial_anchor_pair_styles):
                    teacher = partial(anchor.in_place, dial_scales, partners)
                    anchored_steps += 1
                if weight == 1.0 and not any(partner_weights):  # the style alone at full strength: round-trips well
                    fit = 0
            elif partner:
                with_partner = partner_step(seed, micro_step, args.partner_prob)
                partner.switch(with_partner)
                if with_partner:  # the main batch is set aside, so the data stream stays keyed as without a partner
                    batch = partner_batch(partner_data, seed, accelerator.process_index, micro_step,
                                          batch["pixel_values"].shape[0])
                    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                    partner_steps += 1
            with accelerator.accumulate(*models_to_accumulate):
                loss = training_loss(batch, unet, text_encoder, vae, noise_scheduler, args, generator, weight_dtype,
                                     empty_ids, teacher, fit)
                fitted_steps += bool(fit)
                # Mean over all processes, for logging only (a collective: every rank reaches it).
                loss_sum += accelerator.gather(loss.detach().repeat(args.train_batch_size)).mean().item()
                loss_count += 1
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params_to_clip, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            samples_seen += batch["pixel_values"].shape[0] * accelerator.num_processes

            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            last_loss = loss_sum / loss_count
            logs = {"loss": last_loss, **{f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}}
            loss_sum, loss_count = 0.0, 0
            progress.set_postfix(loss=f"{last_loss:.4f}")
            accelerator.log(logs, step=global_step)

            if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                saved = save_checkpoint(accelerator, args.output_dir, global_step,
                                        {"epoch": epoch, "batches_in_epoch": batch_in_epoch + 1, "seed": seed},
                                        args.checkpoints_total_limit)
                logger.info(f"Saved {saved}")
            if (args.validation_prompt and global_step % args.validation_steps == 0
                    and accelerator.is_main_process):
                validate(accelerator.unwrap_model(unet), f"step-{global_step}")
            if global_step >= args.max_train_steps:
                break
    elapsed = time.perf_counter() - loop_start
    progress.close()

    # 7. Save: every rank must agree on the weights; the main process writes them.
    accelerator.wait_for_everyone()
    unet = accelerator.unwrap_model(unet)
    text_encoder = accelerator.unwrap_model(text_encoder)
    full_weights()
    fingerprints = gather_object([lora_fingerprint(lora_modules.values())])
    exit_code = 0
    if accelerator.is_main_process:
        save_adapter(args.output_dir, unet, text_encoder if args.train_text_encoder else None, args.export_kohya)
        samples = []
        if args.validation_prompt:
            samples = run_validation(accelerator, args, unet, accelerator.unwrap_model(text_encoder), vae, tokenizer,
                                     weight_dtype, tag="final", lora_dir=args.output_dir)
            if partner:
                samples += run_validation(accelerator, args, unet, accelerator.unwrap_model(text_encoder), vae,
                                          tokenizer, weight_dtype, tag="final-with-partner", lora_dir=args.output_dir,
                                          partner=(args.partner_loras[0], args.partner_weight))
        dataset_name = args.dataset_name or (f"shapes-world ({args.shapes_style})" if args.shapes_style
                                             else os.path.basename(os.path.abspath(args.train_data_dir)))
        write_model_card(args.output_dir, config, args.pretrained_model_name_or_path, dataset_name, samples,
                         accelerator.num_processes)
        result = {"global_step": global_step, "epoch": epoch, "final_loss": last_loss, "seed": seed,
                  "num_processes": accelerator.num_processes, "rank_lora_sha256": fingerprints,
                  "partner_micro_steps_this_run": partner_steps if partner else None,
                  "anchored_micro_steps_this_run": anchored_steps if anchor else None,
                  "latent_fitted_micro_steps_this_run": fitted_steps if args.latent_fit_steps else None,
                  "samples_per_second": samples_seen / elapsed if elapsed > 0 else None,
                  "train_loop_seconds": elapsed}
        with open(os.path.join(args.output_dir, "train_result.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        if len(set(fingerprints)) != 1:
            logger.error(f"LoRA weights differ between ranks: {fingerprints}")
            exit_code = 3
        if args.push_to_hub and exit_code == 0:
            try:
                repo_id = push_output_folder(args.output_dir, args.hub_model_id, args.hub_token, args.hub_private)
                logger.info(f"Pushed {args.output_dir} to {repo_id}")
            except HubPushError as err:
                logger.error(str(err))
                exit_code = 2
    accelerator.end_training()
    return finish_process(accelerator, exit_code)  # never returns in a multi-process run


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:  # bad flags or data: one clear line, not a traceback
        print(f"train_lora.py: error: {err}", file=sys.stderr)
        sys.exit(2)
