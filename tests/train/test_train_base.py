"""train/train_base.py end to end at toy size: a loadable diffusers model, resumable stages."""
import json
import os

import numpy as np
import torch

from train.lora_checkpoints import MARKER
from train.train_base import batch_indices, latest_checkpoint, main


def _run(tmp_path, **overrides):
    args = {"--output_dir": str(tmp_path / "model"), "--work_dir": str(tmp_path / "work"), "--num_samples": "96",
            "--vae_steps": "3", "--decoder_steps": "2", "--unet_steps": "4", "--vae_batch_size": "8",
            "--unet_batch_size": "8", "--checkpointing_steps": "2", "--warmup_steps": "1", "--threads": "1"}
    args.update(overrides)
    main([x for kv in args.items() for x in kv] + ["--resume"])


def test_toy_run_writes_a_model_stock_diffusers_loads(tmp_path):
    from diffusers import StableDiffusionPipeline

    _run(tmp_path)
    model = tmp_path / "model"
    pipe = StableDiffusionPipeline.from_pretrained(str(model))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr and pipe.scheduler.config.timestep_spacing == "trailing"
    ids = pipe.tokenizer("a large red circle").input_ids
    assert len(ids) == 6  # bos + one token per word + eos: the vocabulary is the shapes world's
    out = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()
    metrics = json.load(open(model / "training.json"))
    assert metrics["unet"]["steps"] == 4 and "decoder_styles" in metrics["vae"]
    # only complete checkpoints count as latest; the final stage marker lets a rerun skip training
    assert latest_checkpoint(str(tmp_path / "work" / "unet")).endswith("checkpoint-2")
    assert os.path.exists(tmp_path / "work" / "unet" / "final" / "done.json")
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "work").rglob("*"))


def test_half_written_checkpoint_is_never_latest(tmp_path):
    folder = tmp_path / "unet"
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / MARKER).write_text("{}")
    (folder / "checkpoint-4").mkdir()  # no marker: a save that was interrupted
    (folder / "checkpoint-6.tmp").mkdir()
    assert latest_checkpoint(str(folder)).endswith("checkpoint-2")


def test_batches_are_a_pure_function_of_seed_and_step():
    a = batch_indices(37, 8, 96, seed=1)
    assert torch.equal(a, batch_indices(37, 8, 96, seed=1))
    epoch = torch.cat([batch_indices(s, 8, 96, seed=1) for s in range(12)])
    assert sorted(epoch.tolist()) == list(range(96))  # every sample once per epoch
