"""Fit the linear latent->RGB preview factors of a model and save them beside it.

    python train/fit_preview_factors.py models/tiny-shapes

Least squares from shapes-world images (all styles, so LoRA previews look right too) to their
latents; the result goes to <model>/preview_factors.json, which the pipeline's "linear" preview
decoder reads.
"""
import argparse
import os

import numpy as np
import torch


from diffusers import AutoencoderKL

from pipelines.previews import fit_linear_factors, save_linear_factors
from shapesworld import STYLES, images_array


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model_dir")
    p.add_argument("--num_images", type=int, default=512)
    args = p.parse_args()
    vae = AutoencoderKL.from_pretrained(args.model_dir, subfolder="vae").eval()
    per_style = args.num_images // (len(STYLES) + 1)
    arrays = [images_array(np.arange(per_style) + 90_000_000 + 10_000 * k, style=s)[0]
              for k, s in enumerate((None, *STYLES))]
    images = torch.from_numpy(np.concatenate(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
    with torch.no_grad():
        factors = fit_linear_factors(vae, images)
    path = save_linear_factors(factors, os.path.join(args.model_dir, "preview_factors.json"))
    print(f"wrote {path}: {factors.shape[0] - 1} latent channels + bias -> RGB")


if __name__ == "__main__":
    main()
