"""A fault scenario run both in the test process and in a subprocess (tests/train/test_faults.py):
LoRA files that vanish or change under a loaded blender."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch


def lora_vanish_scenario(mode: str, folder: str) -> None:
    """Load two LoRA files into a blender, generate with several blends, make the files go away
    (``mode``: "delete" = unlink, "replace" = os.replace by garbage, "overwrite" = truncate and write
    garbage in place, as `cp` does), generate again: the loaded blends must give the same images."""
    from pipelines import TracingStableDiffusionPipeline
    from pipelines.lora import Blend, LoraBlender
    from testkit.lora_factory import random_lora, save_diffusers_lora
    from testkit.tiny import make_tiny_components

    pipe = TracingStableDiffusionPipeline(**make_tiny_components())
    pipe.set_progress_bar_config(disable=True)
    paths = {}
    for i, name in enumerate(("a", "b")):
        sub = os.path.join(folder, name)
        os.makedirs(sub, exist_ok=True)
        paths[name] = save_diffusers_lora(random_lora(pipe.unet, pipe.text_encoder, seed=10 + i), sub)
    blender = LoraBlender(pipe)
    for name, path in paths.items():
        blender.load(name, path)
    blends = [Blend.of({"a": 0.8, "b": -0.5}), Blend.of({"a": 0.8, "b": -0.5}, fuse=True), Blend.of({"b": 1.0}), None]

    def run_all():
        images = []
        for blend in blends:
            with blender.apply(blend) as p:
                images.append(p("a red circle", num_inference_steps=2, height=16, width=16, output_type="np",
                                generator=torch.Generator().manual_seed(0)).images)
        return images

    before = run_all()
    for path in paths.values():
        if mode == "delete":
            os.remove(path)
        elif mode == "replace":
            with open(path + ".new", "wb") as f:
                f.write(b"not a safetensors file")
            os.replace(path + ".new", path)
        else:
            with open(path, "wb") as f:
                f.write(b"not a safetensors file")
    after = run_all()
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(before[0], before[3]), "the blend should change the image"
    # the same adapter again does not touch the file; a new name for a vanished file is a clear error
    assert blender.load("a", paths["a"]).name == "a"
    with pytest.raises((FileNotFoundError, ValueError), match="does not exist|not a safetensors file"):
        blender.load("a2", paths["a"])
