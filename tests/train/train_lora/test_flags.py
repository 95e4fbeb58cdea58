"""train_lora.py's flags: checked, each error naming the flag."""
from __future__ import annotations

import pytest

from testkit.tiny import train_env
from testkit.train_lora import run_train


@pytest.mark.parametrize("extra, flag", [
    (["--rank", "0"], "--rank"),
    (["--lora_dropout", "1.5"], "--lora_dropout"),
    (["--caption_dropout_prob", "-0.1"], "--caption_dropout_prob"),
    (["--lora_alpha", "0"], "--lora_alpha"),
    (["--text_encoder_lr", "1e-4"], "--text_encoder_lr"),  # without --train_text_encoder
    (["--lr_scheduler", "warmup_cosine", "--lr_min", "1"], "--lr_min"),
    (["--lr_warmup_start_factor", "0"], "--lr_warmup_start_factor"),
    (["--snr_gamma", "-5"], "--snr_gamma"),
    (["--shapes_num_samples", "3"], "--shapes_num_samples"),  # without --shapes_style
    (["--report_to", "mlflow"], "--report_to"),
    (["--resume_from_checkpoint", "/nonexistent/checkpoint-3"], "--resume_from_checkpoint"),
    (["--hub_model_id", "me/x"], "--hub_model_id"),  # without --push_to_hub
    (["--push_to_hub", "--hub_token", "t", "--report_to", "wandb"], "--hub_token"),
    (["--target_modules", " , "], "--target_modules"),
    (["--dataset_name", "lambdalabs/naruto-blip-captions"], "exactly one data source"),
])
def test_bad_flags_raise_value_error_naming_the_flag(extra, flag, image_folder):
    from train.lora_args import parse_args

    with pytest.raises(ValueError, match=flag.replace("-", r"\-")):
        parse_args(["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder, *extra])


def test_bad_data_dir_and_choices(tmp_path):
    from train.lora_args import parse_args

    with pytest.raises(ValueError, match="--train_data_dir.*metadata.jsonl"):
        parse_args(["--pretrained_model_name_or_path", "m", "--train_data_dir", str(tmp_path)])
    with pytest.raises(SystemExit):  # argparse choices
        parse_args(["--pretrained_model_name_or_path", "m", "--train_data_dir", str(tmp_path), "--mixed_precision", "fp8"])


@pytest.mark.app_process
def test_cli_reports_bad_flag_in_one_line(image_folder, tmp_path):
    proc = run_train(["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder, "--rank", "-1"],
                     train_env(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "train_lora.py: error: --rank=-1 is invalid" in proc.stderr and "Traceback" not in proc.stderr
