"""Helpers of the train/train_lora.py tests: the shared training config, the CLI in a subprocess, and a
local HTTP stand-in for the Hub that answers the calls huggingface_hub's real client makes (only
the transport is stood in)."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from testkit.paths import ROOT
# Run as a module from the repository root (cwd), so the packages import with or without an install.
MODULE = "train.train_lora"
TRAIN_LORA = [sys.executable, "-m", MODULE]
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


def run_train(args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAIN_LORA, *args], cwd=ROOT, env=env, capture_output=True, text=True,
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
