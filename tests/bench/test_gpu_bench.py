"""bench/gpu_bench.py: the reduced (CPU) mode end to end, and the full-size configs' shapes (on the
meta device: no memory, no weights). The GPU figures themselves come from a GPU machine."""
from __future__ import annotations

import json
import math
import os

import pytest

torch = pytest.importorskip("torch")


def test_reduced_mode_reports_every_phase_and_writes_nothing(tmp_path):
    from bench import gpu_bench
    from bench.common import BENCHMARKS

    torch.set_num_threads(1)
    before = open(BENCHMARKS, encoding="utf-8").read() if os.path.exists(BENCHMARKS) else None
    out = tmp_path / "report.json"
    assert gpu_bench.main(["--reduced", "--steps", "1", "--repeats", "1", "--train_steps", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "reduced"
    for value in (report["generation"]["ratio_ours"], report["generation"]["ratio_ours_previews"],
                  report["lora"]["ratio_unfused"], report["lora"]["ratio_fused"],
                  report["training"]["samples_per_second"]):
        assert math.isfinite(value) and value > 0
    assert report["training"]["final_loss_finite"] and report["training"]["lora_params"] > 0
    assert "| 3 LoRAs rank 4, fused |" in gpu_bench.markdown(report)
    after = open(BENCHMARKS, encoding="utf-8").read() if os.path.exists(BENCHMARKS) else None
    assert before == after, "reduced figures must never reach BENCHMARKS.md"


def test_full_size_components_have_sd15_shapes():
    from bench.gpu_bench import sd15_components

    parts = sd15_components(torch.device("meta"), torch.float16)
    millions = {k: sum(p.numel() for p in v.parameters()) / 1e6 for k, v in parts.items()
                if isinstance(v, torch.nn.Module)}
    assert 855 < millions["unet"] < 865, millions  # SD 1.5 UNet: 859.5 M
    assert 80 < millions["vae"] < 88, millions  # 83.7 M
    assert 120 < millions["text_encoder"] < 126, millions  # CLIP ViT-L/14 text tower: 123.1 M
    assert parts["unet"].dtype == torch.float16 and parts["tokenizer"].model_max_length == 77
    assert parts["unet"].config.sample_size * 2 ** (len(parts["vae"].config.block_out_channels) - 1) == 512
