"""Validation images for the LoRA trainer: generate, save as PNG, log to tensorboard / wandb."""
from __future__ import annotations

import os
import re

import torch


def run_validation(accelerator, args, unet, text_encoder, vae, tokenizer, weight_dtype, tag: str, lora_dir=None,
                   partner=None):
    """Generate --num_validation_images for --validation_prompt, save PNGs, log them to the trackers.

    `partner` (path, weight), with `lora_dir` only: load that LoRA too and generate with both, the
    way users combine adapters. In memory, the caller switches its partner adapter on or off.
    """
    import numpy as np
    from diffusers import StableDiffusionPipeline

    common = dict(revision=args.revision, variant=args.variant, cache_dir=args.cache_dir, dtype=weight_dtype,
                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if lora_dir is None:  # the adapters being trained, in memory
        pipe = StableDiffusionPipeline.from_pretrained(args.pretrained_model_name_or_path, unet=unet,
                                                       text_encoder=text_encoder, vae=vae, tokenizer=tokenizer, **common)
    else:  # final check: a fresh base model plus the written file, loaded the way users will load it
        pipe = StableDiffusionPipeline.from_pretrained(args.pretrained_model_name_or_path, vae=vae, tokenizer=tokenizer,
                                                       **common)
        pipe.load_lora_weights(lora_dir, adapter_name="trained")
        if partner is not None:
            pipe.load_lora_weights(partner[0], adapter_name="partner")
            pipe.set_adapters(["trained", "partner"], [1.0, partner[1]])
    pipe = pipe.to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    pipe.unet.eval()
    pipe.text_encoder.eval()
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    # fork_rng: validation must not move the global RNG (LoRA dropout), or resumed runs would diverge.
    with torch.random.fork_rng(devices=[]), torch.autocast(accelerator.device.type, enabled=weight_dtype != torch.float32):
        images = pipe([args.validation_prompt] * args.num_validation_images, generator=generator,
                      num_inference_steps=args.validation_inference_steps,
                      height=args.resolution, width=args.resolution).images
    if was_training and lora_dir is None:
        unet.train()
        if args.train_text_encoder:
            text_encoder.train()
    folder = os.path.join(args.output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(os.path.join("validation", f"{tag}-{i}.png"))
        image.save(os.path.join(args.output_dir, paths[-1]))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            stacked = np.stack([np.asarray(im) for im in images])  # (N, H, W, 3)
            step = re.match(r"step-(\d+)", tag)  # "step-300", "step-300-with-partner"; "final..." logs at 0
            tracker.writer.add_images(f"validation/{tag}", stacked, int(step.group(1)) if step else 0,
                                      dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({f"validation/{tag}": [wandb.Image(im, caption=f"{i}: {args.validation_prompt}")
                                               for i, im in enumerate(images)]})
    del pipe
    return paths
