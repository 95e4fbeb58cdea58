"""train/train_lora.py: end to end on tiny components (CPU, no network).

The CLI runs in subprocesses (as users run it); the Hub is a local HTTP stand-in that answers
the calls huggingface_hub's real client makes (only the transport is stood in).
"""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from tests.tiny import save_tiny_model, train_env, write_noise_imagefolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train", "train_lora.py")
TOKEN = "hf_TESTtoken0123456789secret"

# One config shared by the reference run and the killed/resumed runs. 10 images at batch 2 and
# accumulation 2 -> 5 batches, 3 optimizer steps per epoch: checkpoints land mid-epoch and at
# accelerate's end-of-epoch sync; every RNG path (flip, crop, caption dropout, LoRA dropout, noise
# offset, timesteps) is on.
TRAIN_ARGS = [
    "--resolution", "16", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
    "--max_train_steps", "16", "--checkpointing_steps", "2", "--checkpoints_total_limit", "3", "--seed", "7",
    "--learning_rate", "5e-3", "--lr_scheduler", "warmup_cosine", "--lr_warmup_steps", "2", "--lr_min", "1e-5",
    "--rank", "4", "--lora_alpha", "8", "--lora_dropout", "0.1", "--random_flip", "--caption_dropout_prob", "0.2",
    "--noise_offset", "0.05", "--snr_gamma", "5", "--train_text_encoder", "--text_encoder_lr", "1e-3",
    "--validation_prompt", "red circle", "--num_validation_images", "2", "--validation_steps", "4",
    "--validation_inference_steps", "2", "--report_to", "tensorboard",
]


# ----------------------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    # non-square and larger than 16 px, so resize + random crop both do something
    captions = ["red circle", "blue square", "green triangle", "a photo of a cat", "a dog"]
    return write_noise_imagefolder(tmp_path_factory.mktemp("images"), 10, (20, 18), captions, seed=0)



def run_train(args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def load_tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubStandIn:
    """Answers what `create_repo` + `upload_folder` send (repo create, README check, preupload,
    commit with inline files) and records the uploaded files and auth headers."""

    def __init__(self):
        self.requests, self.files, self.auth_headers = [], {}, set()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code, payload):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                stand_in.requests.append(("GET", self.path))
                self.reply(404, {"error": "not served by the stand-in"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stand_in.requests.append(("POST", self.path))
                stand_in.auth_headers.add(self.headers.get("Authorization"))
                endpoint = f"http://127.0.0.1:{self.server.server_port}"
                if self.path == "/api/repos/create":
                    data = json.loads(body)
                    repo = f"{data.get('organization') or 'user'}/{data['name']}"
                    return self.reply(200, {"url": f"{endpoint}/{repo}", "name": repo, "id": repo})
                if self.path == "/api/validate-yaml":
                    return self.reply(200, {"errors": [], "warnings": []})
                parts = self.path.split("/")  # /api/models/<owner>/<name>/<preupload|commit>/<rev>
                if len(parts) >= 6 and parts[5] == "preupload":
                    files = json.loads(body)["files"]
                    return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                      for f in files]})
                if len(parts) >= 6 and parts[5] == "commit":
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            stand_in.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    oid = "1" * 40
                    return self.reply(200, {"commitUrl": f"{endpoint}/{parts[3]}/{parts[4]}/commit/{oid}",
                                            "commitOid": oid, "success": True})
                self.reply(404, {"error": "not served by the stand-in"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def assert_token_absent(folder, *texts):
    for text in texts:
        assert TOKEN not in text
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                assert TOKEN.encode() not in f.read(), os.path.join(dirpath, name)


@pytest.fixture(scope="module")
def reference_run(tiny_model, image_folder, tmp_path_factory):
    """One uninterrupted run that also pushes to the Hub stand-in (shared by several tests)."""
    tmp = tmp_path_factory.mktemp("reference")
    out = str(tmp / "out")
    hub = HubStandIn()
    try:
        args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
                *TRAIN_ARGS, "--export_kohya", "--trigger_word", "sks style", "--push_to_hub",
                "--hub_model_id", "me/tiny-lora", "--hub_token", TOKEN]
        started = time.perf_counter()
        proc = run_train(args, train_env(tmp, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint))
        seconds = time.perf_counter() - started
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"out": out, "proc": proc, "hub": hub, "seconds": seconds}


# ----------------------------------------------------------------------------- end to end

def test_end_to_end_adapter_loads_with_stock_pipeline(reference_run, tiny_model):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model

    from train.lora_checkpoints import load_lora_state

    out = reference_run["out"]
    for name in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors", "README.md",
                 "train_result.json", "validation/final-0.png", "validation/step-4-0.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    result = json.load(open(os.path.join(out, "train_result.json")))
    assert result["global_step"] == 16 and np.isfinite(result["final_loss"])
    # --checkpoints_total_limit 3 keeps the newest three complete checkpoints.
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == [
        "checkpoint-12", "checkpoint-14", "checkpoint-16"]

    def images(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("red circle", num_inference_steps=2, height=16, width=16, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    base = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    base_images = images(base)
    base.load_lora_weights(out)  # stock loader, default weight name
    lora_images = images(base)
    # Deterministic: the exported metadata has lora_dropout 0 (diffusers leaves loaded LoRA layers in train mode).
    np.testing.assert_array_equal(images(base), lora_images)
    assert np.abs(lora_images - base_images).max() > 1e-3

    # The same adapter applied by hand from the last checkpoint (peft keys, alpha 8 / rank 4):
    # equality shows the file carries both modules and the alpha/rank scale.
    manual = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    for module, targets, name in ((manual.unet, ["to_q", "to_k", "to_v", "to_out.0"], "unet"),
                                  (manual.text_encoder, ["q_proj", "k_proj", "v_proj", "out_proj"], "text_encoder")):
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=targets), module, adapter_name="default")
        load_lora_state(module, os.path.join(out, "checkpoint-16", f"{name}_lora.safetensors"))
    np.testing.assert_allclose(images(manual), lora_images, atol=1e-5)


def test_kohya_export_and_model_card(reference_run):
    from huggingface_hub import ModelCard

    out = reference_run["out"]
    kohya = load_tensors(os.path.join(out, "pytorch_lora_weights_kohya.safetensors"))
    assert any(k.startswith("lora_unet_") for k in kohya) and any(k.startswith("lora_te1_") for k in kohya)
    alphas = {float(v) for k, v in kohya.items() if k.endswith(".alpha")}
    assert alphas == {8.0}  # --lora_alpha, not the converter's default (= rank)

    card = ModelCard.load(os.path.join(out, "README.md"))
    data = card.data.to_dict()
    assert data["base_model"] and data["library_name"] == "diffusers" and data["license"] == "creativeml-openrail-m"
    assert set(data["tags"]) >= {"stable-diffusion", "text-to-image", "lora", "diffusers-training"}
    assert data["instance_prompt"] == "sks style"
    assert "validation/final-0.png" in card.text and "| `rank` | `4` |" in card.text


def test_push_to_hub_stand_in_receives_outputs_without_token_leak(reference_run):
    hub, proc, out = reference_run["hub"], reference_run["proc"], reference_run["out"]
    assert ("POST", "/api/repos/create") in hub.requests
    uploaded = set(hub.files)
    assert {"pytorch_lora_weights.safetensors", "README.md", "validation/final-0.png"} <= uploaded
    assert not [p for p in uploaded if p.startswith(("checkpoint-", ".tmp-"))]
    with open(os.path.join(out, "pytorch_lora_weights.safetensors"), "rb") as f:
        assert hub.files["pytorch_lora_weights.safetensors"] == f.read()
    assert hub.auth_headers == {f"Bearer {TOKEN}"}  # the token was used...
    assert_token_absent(out, proc.stdout, proc.stderr)  # ...and written nowhere


def test_push_failure_keeps_local_files_and_exits_nonzero(tiny_model, image_folder, tmp_path):
    out = str(tmp_path / "out")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
            "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "1", "--seed", "0",
            "--push_to_hub", "--hub_model_id", "me/unreachable", "--hub_token", TOKEN]
    proc = run_train(args, train_env(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint))
    assert proc.returncode != 0
    assert "--push_to_hub failed" in proc.stderr and endpoint in proc.stderr and "Nothing local was removed" in proc.stderr
    for name in ("pytorch_lora_weights.safetensors", "README.md", "checkpoint-1/checkpoint_complete.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert_token_absent(out, proc.stdout, proc.stderr)


# ----------------------------------------------------------------------------- crash and resume

def test_resume_after_kill_matches_uninterrupted_run(reference_run, tiny_model, image_folder, tmp_path):
    out = str(tmp_path / "out")
    args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
            *TRAIN_ARGS]
    env = train_env(tmp_path)
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = os.path.join(out, "checkpoint-2", "checkpoint_complete.json")
    deadline = time.time() + 240
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "pytorch_lora_weights.safetensors")), "killed too late to test resume"

    resumed = run_train([*args, "--resume_from_checkpoint", "latest"], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resuming from" in resumed.stderr
    final = load_tensors(os.path.join(out, "pytorch_lora_weights.safetensors"))
    reference = load_tensors(os.path.join(reference_run["out"], "pytorch_lora_weights.safetensors"))
    assert final.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(final[key], reference[key], rtol=0, atol=1e-6)


def test_checkpoint_round_trip_restores_lora_weights(tmp_path):
    """The diffusers-script bug this guards against: load_state returned without loading LoRA weights."""
    from accelerate import Accelerator
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from tests.tiny import make_tiny_components
    from train.lora_checkpoints import latest_checkpoint, register_lora_state_hooks, save_checkpoint

    def lora_unet(seed):
        unet = make_tiny_components(seed=0)["unet"]
        unet.requires_grad_(False)
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
        for p in unet.parameters():
            if p.requires_grad:
                p.data.normal_()
        return unet

    accelerator = Accelerator(cpu=True)
    unet = lora_unet(1)
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad])
    unet, optimizer = accelerator.prepare(unet, optimizer)
    register_lora_state_hooks(accelerator, {"unet": accelerator.unwrap_model(unet)})
    saved = {k: v.clone() for k, v in get_peft_model_state_dict(unet).items()}
    save_checkpoint(accelerator, str(tmp_path), 3, {"epoch": 0, "batches_in_epoch": 3, "seed": 0}, None)
    assert sorted(os.listdir(tmp_path / "checkpoint-3")) == [
        "checkpoint_complete.json", "optimizer.bin", "random_states_0.pkl", "unet_lora.safetensors"]

    os.makedirs(tmp_path / "checkpoint-9")  # crashed before its marker: never "latest"
    os.makedirs(tmp_path / ".tmp-checkpoint-11")
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")

    accelerator2 = Accelerator(cpu=True)
    other = lora_unet(2)
    other_opt = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad])
    other, other_opt = accelerator2.prepare(other, other_opt)
    register_lora_state_hooks(accelerator2, {"unet": accelerator2.unwrap_model(other)})
    before = get_peft_model_state_dict(other)
    assert any(not torch.equal(before[k], saved[k]) for k in saved)
    accelerator2.load_state(str(tmp_path / "checkpoint-3"))
    loaded = get_peft_model_state_dict(other)
    assert loaded.keys() == saved.keys()
    for key in saved:
        assert torch.equal(loaded[key], saved[key]), key


# ----------------------------------------------------------------------------- distributed

@pytest.mark.slow
def test_two_cpu_processes_end_with_identical_weights(tiny_model, image_folder, tmp_path):
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(closed_port()),
           SCRIPT, "--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder,
           "--output_dir", out, "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "3",
           "--checkpointing_steps", "2", "--seed", "3", "--learning_rate", "1e-2", "--train_text_encoder",
           "--report_to", "none"]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(tmp_path, ACCELERATE_USE_CPU="true"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.load(open(os.path.join(out, "train_result.json")))
    assert result["num_processes"] == 2 and result["global_step"] == 3
    assert len(result["rank_lora_sha256"]) == 2 and len(set(result["rank_lora_sha256"])) == 1
    assert sorted(os.listdir(os.path.join(out, "checkpoint-2"))) == [
        "checkpoint_complete.json", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl", "scheduler.bin",
        "text_encoder_lora.safetensors", "unet_lora.safetensors"]


# ----------------------------------------------------------------------------- flags

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


def test_cli_reports_bad_flag_in_one_line(image_folder, tmp_path):
    proc = run_train(["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder, "--rank", "-1"],
                     train_env(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "train_lora.py: error: --rank=-1 is invalid" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- math and data

def test_warmup_cosine_schedule_shape():
    from train.lora_optim import warmup_cosine_schedule

    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": params, "lr": 1e-3}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-4}])
    sched = warmup_cosine_schedule(opt, warmup_steps=4, total_steps=14, start_factor=0.1, lr_min=1e-5)
    lrs = []
    for _ in range(15):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    lrs = np.array(lrs)
    np.testing.assert_allclose(lrs[:5, 0], [1e-4, 3.25e-4, 5.5e-4, 7.75e-4, 1e-3], rtol=1e-6)  # linear from 0.1x
    np.testing.assert_allclose(lrs[9, 0], 1e-5 + (1e-3 - 1e-5) / 2, rtol=1e-6)  # cosine midpoint
    np.testing.assert_allclose(lrs[14], [1e-5, 1e-5], rtol=1e-6)  # the floor, for both groups
    np.testing.assert_allclose(lrs[4, 1], 1e-4, rtol=1e-6)  # per-group peak


def test_min_snr_weights_epsilon_and_v():
    from train.lora_optim import min_snr_loss_weights

    snr = torch.tensor([0.0, 0.5, 5.0, 20.0])
    eps = min_snr_loss_weights(snr, 5.0, "epsilon")
    torch.testing.assert_close(eps, torch.tensor([1.0, 1.0, 1.0, 0.25]))  # min(snr, g) / snr, 1 at snr 0
    v = min_snr_loss_weights(snr, 5.0, "v_prediction")
    torch.testing.assert_close(v, torch.tensor([0.0, 0.5 / 1.5, 5.0 / 6.0, 5.0 / 21.0]))  # min(snr, g) / (snr + 1)
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_loss_weights(snr, 5.0, "sample")


def test_data_is_a_function_of_seed_epoch_index(image_folder):
    from train.lora_data import EpochShuffleSampler, build_dataset
    from train.lora_args import parse_args
    from tests.tiny import make_tiny_tokenizer

    args = parse_args(["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder, "--random_flip",
                       "--caption_dropout_prob", "0.5"])
    data = build_dataset(args, make_tiny_tokenizer(), 16, seed=3)
    a, b = data[(2, 5)], data[(2, 5)]
    assert a["pixel_values"].shape == (3, 16, 16) and a["pixel_values"].abs().max() <= 1.0
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert any(not torch.equal(data[(e, 5)]["pixel_values"], a["pixel_values"]) for e in range(3, 8))
    sampler = EpochShuffleSampler(10, seed=3)
    first = list(sampler)
    assert sorted(i for _, i in first) == list(range(10)) and first == list(sampler)
    sampler.set_epoch(1)
    assert [i for _, i in list(sampler)] != [i for _, i in first]


def test_mixed_precision_casts_keep_lora_in_fp32():
    from train.lora_args import parse_args
    from train.train_lora import setup_lora_models
    from tests.tiny import make_tiny_components

    c = make_tiny_components()
    args = parse_args(["--pretrained_model_name_or_path", "m", "--shapes_style", "night", "--train_text_encoder"])
    setup_lora_models(c["unet"], c["vae"], c["text_encoder"], args, torch.device("cpu"), torch.float16)
    for module in (c["unet"], c["text_encoder"]):
        trainable = {p.dtype for p in module.parameters() if p.requires_grad}
        frozen = {p.dtype for p in module.parameters() if not p.requires_grad}
        assert trainable == {torch.float32} and frozen == {torch.float16}
    assert {p.dtype for p in c["vae"].parameters()} == {torch.float16}
    assert not any(p.requires_grad for p in c["vae"].parameters())


def test_gradient_checkpointing_still_trains_both_adapters(image_folder):
    from diffusers import DDPMScheduler

    from train.lora_args import parse_args
    from train.lora_data import build_dataset, collate, keyed_generator
    from train.train_lora import setup_lora_models, training_loss
    from tests.tiny import make_tiny_components

    c = make_tiny_components(prediction_type="v_prediction")
    args = parse_args(["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder, "--train_text_encoder",
                       "--snr_gamma", "5", "--init_lora_weights", "default"])
    setup_lora_models(c["unet"], c["vae"], c["text_encoder"], args, torch.device("cpu"), torch.float32)
    c["unet"].enable_gradient_checkpointing()
    c["text_encoder"].activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    c["unet"].train()
    c["text_encoder"].train()
    data = build_dataset(args, c["tokenizer"], 16, seed=0)
    batch = collate([data[(0, i)] for i in range(2)])
    scheduler = DDPMScheduler.from_config(c["scheduler"].config)
    loss = training_loss(batch, c["unet"], c["text_encoder"], c["vae"], scheduler, args, keyed_generator(0, 0, 0),
                         torch.float32)
    loss.backward()
    for module in (c["unet"], c["text_encoder"]):
        grads = [p.grad for n, p in module.named_parameters() if "lora_B" in n]  # B starts at 0: only its grad is nonzero
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_shapes_style_renders_an_imagefolder(tmp_path):
    from train.lora_data import read_imagefolder, render_shapes_dataset

    folder = render_shapes_dataset(str(tmp_path / "data"), "outline", 3, seed=0, trigger="outline style")
    rows = read_imagefolder(folder)
    assert len(rows) == 3 and all(caption.startswith("outline style") for _, caption in rows)


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = os.path.join(ROOT, "train", "accelerate_configs")
    multi = load_config_from_file(os.path.join(folder, "multi_gpu.yaml"))
    assert str(multi.distributed_type).endswith("MULTI_GPU") and multi.mixed_precision == "fp16"
    zero2 = load_config_from_file(os.path.join(folder, "deepspeed_zero2.yaml"))
    assert str(zero2.distributed_type).endswith("DEEPSPEED") and zero2.deepspeed_config["zero_stage"] == 2


def test_mixed_target_adapter_keeps_every_layer_through_the_stock_loader(tmp_path):
    """Attention + resnet + proj + ff + time-embedding LoRA layers in one file all load with stock
    `load_lora_weights`, and give the images of the adapter applied by hand (peft)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from tests.tiny import make_tiny_components
    from train.lora_export import save_adapter

    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "time_emb_proj"]

    def pipe():
        p = StableDiffusionPipeline(**make_tiny_components(), requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        return p

    def images(p):
        return p("red circle", num_inference_steps=2, height=16, width=16, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images

    manual = pipe()
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian", target_modules=targets),
                            manual.unet, adapter_name="default")
    torch.manual_seed(1)
    for name, param in manual.unet.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)  # B starts at zero: give it weights so the adapter does something
    expected_layers = {n for n, m in manual.unet.named_modules() if isinstance(m, LoraLayer)}
    assert {"to_q", "conv1", "proj_in", "time_emb_proj"} <= {n.rsplit(".", 1)[-1] for n in expected_layers}
    save_adapter(str(tmp_path), manual.unet)

    stock = pipe()
    base = images(stock)
    stock.load_lora_weights(str(tmp_path))
    loaded = {n for n, m in stock.unet.named_modules() if isinstance(m, LoraLayer)}
    assert loaded == expected_layers, sorted(expected_layers - loaded)[:5]
    manual.unet.eval()
    out = images(stock)
    assert np.abs(out - base).max() > 1e-3
    np.testing.assert_allclose(out, images(manual), atol=1e-5)


# ----------------------------------------------------------------------------- partner LoRA

@pytest.fixture(scope="module")
def tiny_partner(tiny_model, tmp_path_factory):
    """A UNet-only LoRA file for the tiny model with nonzero weights: a stand-in for a trained style."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from train.lora_export import save_adapter

    folder = str(tmp_path_factory.mktemp("partner"))
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    unet.add_adapter(LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"]))
    torch.manual_seed(3)
    for name, param in unet.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    save_adapter(folder, unet)
    return os.path.join(folder, "pytorch_lora_weights.safetensors")


def test_partner_lora_is_frozen_and_switches_exactly(tiny_model, tiny_partner):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from train.lora_partner import PartnerLoRA

    def unet_with_trained_adapter():
        unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
        unet.requires_grad_(False)
        torch.manual_seed(0)  # the gaussian init of lora_A draws from the global generator
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.1)
        return unet.eval()

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 16, 16, generator=g)  # (B, tokens, cross_attention_dim of the tiny UNet)

    def predict(unet):
        with torch.no_grad():
            return unet(latents, torch.tensor([10, 500]), text).sample

    alone = unet_with_trained_adapter()
    reference = predict(alone)
    unet = unet_with_trained_adapter()
    trainable_before = {n for n, p in unet.named_parameters() if p.requires_grad}
    partner = PartnerLoRA(unet, tiny_partner, weight=1.0)
    # Only the trained adapter learns; the partner's layers (even ones the trained adapter lacks) are frozen.
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == trainable_before
    assert partner.num_parameters > 0 and any(".conv1." in n and ".partner." in n for n, _ in unet.named_parameters())
    torch.testing.assert_close(predict(unet), reference, rtol=0, atol=0)  # off: exactly the adapter alone
    partner.switch(True)
    on = predict(unet)
    assert (on - reference).abs().max() > 1e-3
    partner.switch(False)
    torch.testing.assert_close(predict(unet), reference, rtol=0, atol=0)
    # What gets saved is the trained adapter only.
    assert not any("partner" in k for k in get_peft_model_state_dict(unet))
    assert set(get_peft_model_state_dict(unet)) == set(get_peft_model_state_dict(alone))


def test_partner_run_trains_both_contexts_and_resumes_exactly(reference_run, tiny_model, tiny_partner, image_folder,
                                                              tmp_path):
    partner_data = tmp_path / "both-styles"
    partner_data.mkdir()
    write_noise_imagefolder(partner_data, 6, (16, 16), ["red circle at night", "blue square at night"], seed=1)
    out = str(tmp_path / "out")
    args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
            *TRAIN_ARGS, "--partner_lora", tiny_partner, "--partner_train_data_dir", str(partner_data),
            "--partner_prob", "0.5"]
    env = train_env(tmp_path)
    proc = run_train(args, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.load(open(os.path.join(out, "train_result.json")))
    micro_steps = 16 * 2  # --max_train_steps 16, --gradient_accumulation_steps 2
    assert 0 < result["partner_micro_steps_this_run"] < micro_steps
    for name in ("validation/step-4-0.png", "validation/step-4-with-partner-0.png", "validation/final-with-partner-0.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "## Composes with" in card and os.path.basename(tiny_partner) in card

    final = load_tensors(os.path.join(out, "pytorch_lora_weights.safetensors"))
    alone = load_tensors(os.path.join(reference_run["out"], "pytorch_lora_weights.safetensors"))
    assert final.keys() == alone.keys()  # the same adapter layout, no partner tensors in the file
    assert max((final[k] - alone[k]).abs().max().item() for k in final) > 1e-4  # the partner steps changed training

    # Resume from a mid-run checkpoint into a fresh folder: the partner steps and their batches are keyed by
    # the micro-step, so the resumed run ends on the same adapter.
    resumed_out = str(tmp_path / "resumed")
    resumed = run_train([*[resumed_out if a == out else a for a in args], "--resume_from_checkpoint",
                         os.path.join(out, "checkpoint-12")], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    again = load_tensors(os.path.join(resumed_out, "pytorch_lora_weights.safetensors"))
    for key in final:
        torch.testing.assert_close(again[key], final[key], rtol=0, atol=1e-6)


def test_partner_flags_are_checked(image_folder, tmp_path):
    from train.lora_args import parse_args

    fake = tmp_path / "partner.safetensors"
    fake.write_bytes(b"")
    base = ["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder]
    cases = [
        (["--partner_shapes_style", "night"], "--partner_shapes_style needs --partner_lora"),
        (["--partner_lora", str(tmp_path / "missing.safetensors"), "--partner_train_data_dir", image_folder],
         "--partner_lora="),
        (["--partner_lora", str(fake)], "--partner_lora needs exactly one of"),
        (["--partner_lora", str(fake), "--partner_shapes_style", "night"], "--partner_shapes_style needs --shapes_style"),
        (["--partner_lora", str(fake), "--partner_train_data_dir", image_folder, "--partner_prob", "0"], "--partner_prob=0.0"),
        (["--partner_lora", str(fake), "--partner_train_data_dir", image_folder, "--partner_weight", "-1"],
         "--partner_weight=-1.0"),
        (["--partner_lora", str(fake), "--partner_train_data_dir", str(tmp_path)], "--partner_train_data_dir="),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_args([*base, *extra])
    with pytest.raises(ValueError, match=re.escape("--partner_shapes_style='night' is invalid: must differ")):
        parse_args(["--pretrained_model_name_or_path", "m", "--shapes_style", "night", "--partner_lora", str(fake),
                    "--partner_shapes_style", "night"])
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(b"")
    args = parse_args([*base, "--partner_lora", str(tmp_path), "--partner_train_data_dir", image_folder])
    assert args.partner_lora == str(tmp_path / "pytorch_lora_weights.safetensors")  # a folder names its weights file


@pytest.mark.slow
def test_two_cpu_processes_with_a_partner_end_with_identical_weights(tiny_model, tiny_partner, image_folder, tmp_path):
    """DDP with a frozen partner adapter: its parameters stay out of the gradient buckets, ranks agree."""
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(closed_port()),
           SCRIPT, "--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder,
           "--partner_lora", tiny_partner, "--partner_train_data_dir", image_folder, "--partner_prob", "0.5",
           "--output_dir", out, "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "4",
           "--checkpointing_steps", "2", "--seed", "3", "--learning_rate", "1e-2", "--report_to", "none"]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(tmp_path, ACCELERATE_USE_CPU="true"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.load(open(os.path.join(out, "train_result.json")))
    assert result["num_processes"] == 2 and result["global_step"] == 4
    assert 0 < result["partner_micro_steps_this_run"] < 4
    assert len(set(result["rank_lora_sha256"])) == 1


# ----------------------------------------------------------------------------- --init_lora and --cfg_loss_scale

def test_init_lora_copies_every_tensor_and_refuses_a_different_adapter(tiny_model, tiny_partner):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from train.lora_init import load_initial_lora

    def unet_with(rank, alpha, targets):
        unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets))
        return unet

    same = ["to_q", "to_k", "to_v", "to_out.0", "conv1"]  # what tiny_partner was saved with (r=2, alpha 4)
    unet = unet_with(2, 4, same)
    assert load_initial_lora(unet, tiny_partner, rank=2, alpha=4.0) > 0
    loaded = get_peft_model_state_dict(unet)
    saved = {k[len("unet."):]: v for k, v in load_tensors(tiny_partner).items()}
    assert loaded.keys() == saved.keys()
    for key in saved:
        torch.testing.assert_close(loaded[key], saved[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match=re.escape("has rank 2, alpha 4")):
        load_initial_lora(unet_with(4, 4, same), tiny_partner, rank=4, alpha=4.0)
    with pytest.raises(ValueError, match=re.escape("does not match --target_modules: 0 LoRA tensor(s) of this run are "
                                                   "not in the file and")):
        load_initial_lora(unet_with(2, 4, ["to_q", "to_k"]), tiny_partner, rank=2, alpha=4.0)


def test_cfg_loss_adds_the_guided_prediction_term(image_folder):
    from diffusers import DDPMScheduler

    from train.lora_args import parse_args
    from train.lora_data import build_dataset, collate, keyed_generator
    from train.train_lora import setup_lora_models, training_loss
    from tests.tiny import make_tiny_components

    c = make_tiny_components(prediction_type="v_prediction")
    args = parse_args(["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder, "--snr_gamma", "5"])
    setup_lora_models(c["unet"], c["vae"], c["text_encoder"], args, torch.device("cpu"), torch.float32)
    scheduler = DDPMScheduler.from_config(c["scheduler"].config)
    batch = collate([build_dataset(args, c["tokenizer"], 16, seed=0)[(0, i)] for i in range(3)])
    empty = c["tokenizer"]("", max_length=c["tokenizer"].model_max_length, padding="max_length",
                           return_tensors="pt").input_ids

    def loss(scale, weight, b=batch):
        args.cfg_loss_scale, args.cfg_loss_weight = scale, weight
        with torch.no_grad():
            return training_loss(b, c["unet"], c["text_encoder"], c["vae"], scheduler, args, keyed_generator(0, 0, 0),
                                 torch.float32, empty).item()

    plain = loss(None, 1.0)
    one, two = loss(3.0, 1.0), loss(3.0, 2.0)
    assert one - plain > 1e-4  # the guided prediction misses the target more than the conditional one
    assert two - plain == pytest.approx(2 * (one - plain), rel=1e-5)  # the term is scaled by --cfg_loss_weight
    # With every caption empty the conditional and unconditional predictions are the same, so the guided
    # prediction is the conditional one at any scale and the term equals the plain loss.
    blank = {**batch, "input_ids": empty.expand_as(batch["input_ids"]).clone()}
    assert loss(3.0, 1.0, blank) == pytest.approx(2 * loss(None, 1.0, blank), rel=1e-5)


def test_run_from_init_lora_with_cfg_loss(tiny_model, tiny_partner, image_folder, tmp_path):
    out = str(tmp_path / "out")
    args = ["--pretrained_model_name_or_path", tiny_model, "--train_data_dir", image_folder, "--output_dir", out,
            "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "3", "--seed", "5",
            "--learning_rate", "1e-3", "--rank", "2", "--lora_alpha", "4", "--caption_dropout_prob", "0.2",
            "--target_modules", "to_q,to_k,to_v,to_out.0,conv1", "--init_lora", os.path.dirname(tiny_partner),
            "--cfg_loss_scale", "3", "--report_to", "none"]
    proc = run_train(args, train_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = load_tensors(os.path.join(out, "pytorch_lora_weights.safetensors"))
    start = load_tensors(tiny_partner)
    assert final.keys() == start.keys()
    moved = max((final[k] - start[k]).abs().max().item() for k in final)
    size = max(start[k].abs().max().item() for k in start)
    assert 0 < moved < 0.1 * size  # trained on from the file's weights, not from a fresh init
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "`init_lora`" in card and "`cfg_loss_scale` | `3.0`" in card


def test_init_lora_and_cfg_loss_flags_are_checked(image_folder, tmp_path):
    from train.lora_args import parse_args

    base = ["--pretrained_model_name_or_path", "m", "--train_data_dir", image_folder]
    for extra, message in [
        (["--init_lora", str(tmp_path / "missing.safetensors")], "--init_lora="),
        (["--cfg_loss_scale", "1"], "--cfg_loss_scale=1.0 is invalid: must be > 1"),
        (["--cfg_loss_scale", "3", "--cfg_loss_weight", "0"], "--cfg_loss_weight=0.0"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_args([*base, *extra])
