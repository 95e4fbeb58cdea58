"""Helpers of the hostile-input table (testkit/hostile_cases.py): raw HTTP and queue calls (what
gradio_client will not send), hostile files, and the case builders (each returns run(ctx))."""
from __future__ import annotations

import io
import json
import os
import struct
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np



# ----------------------------------------------------------------------------- raw HTTP helpers

# Every /generate argument in the app's order (raw HTTP has to send all of them).
GENERATE_DEFAULTS = dict(
    prompt="a red circle", negative_prompt="", scheduler="DDIM", steps=2, guidance_scale=5.0, seed=3,
    randomize_seed=False, width=16, height=16, num_images=1, guidance_method="cfg", guidance_rescale=0.0,
    guidance_schedule="constant", guidance_interval_start=0.0, guidance_interval_end=1.0, apg_momentum=-0.5,
    apg_norm_threshold=15.0, apg_eta=0.0, cfg_zero_init_steps=1, perp_neg_scale=1.0,
    timestep_spacing="model default", sigmas="default", preview_every=0, preview_decoder="linear", lora="",
    classifier_scale=8.0,
)
CFG_SWEEP_DEFAULTS = dict(prompt="a red circle", negative_prompt="", scales="1, 4", seed=0, steps=2, scheduler="DDIM",
                          adherence_prompts=0)
GUIDANCE_DEFAULTS = dict(prompt="a red circle", negative_prompt="blue", methods=["cfg"], guidance_scale=5, seed=0,
                         steps=2, scheduler="DDIM")
SCHEDULE_DEFAULTS = dict(schedulers=["DDIM"], steps=5, timestep_spacing="model default", sigmas="default")
COMPARE_DEFAULTS = dict(prompt="a red circle", negative_prompt="", schedulers=["DDIM"], steps=2, guidance_scale=5,
                        seed=0)
DEFAULTS = {"/generate": GENERATE_DEFAULTS, "/cfg_sweep": CFG_SWEEP_DEFAULTS, "/compare_guidance": GUIDANCE_DEFAULTS,
            "/schedule": SCHEDULE_DEFAULTS, "/compare_schedulers": COMPARE_DEFAULTS, "/shapes_sample": dict(index=3),
            "/forward_noise": dict(timestep=400, seed=0)}


def read_sse(url: str, timeout: float = 120) -> str:
    import httpx

    with httpx.stream("GET", url, timeout=timeout) as response:
        return "".join(response.iter_text())


def raw_call(base_url: str, api_name: str, data, timeout: float = 120) -> tuple[str, str]:
    """POST /gradio_api/call/<api_name> with json.dumps (which writes NaN and Infinity, unlike
    gradio_client). Returns ("complete" | "error" | "http <code>", the event stream or body)."""
    import httpx

    name = api_name.strip("/")
    response = httpx.post(f"{base_url}gradio_api/call/{name}", content=json.dumps({"data": data}),
                          headers={"content-type": "application/json"}, timeout=timeout)
    if response.status_code != 200:
        return f"http {response.status_code}", response.text
    stream = read_sse(f"{base_url}gradio_api/call/{name}/{response.json()['event_id']}", timeout)
    return ("error" if "event: error" in stream else "complete" if "event: complete" in stream else "other"), stream


def private_event(base_url: str, label: str, trigger: str) -> tuple[int, int]:
    """(fn_index, component id) of ``trigger`` on the component labelled ``label``. Events hidden from
    the API page (api_visibility="private") still run through the queue: the page itself calls them."""
    import httpx

    config = httpx.get(f"{base_url}config", timeout=30).json()
    ids = [c["id"] for c in config["components"] if c.get("props", {}).get("label") == label]
    for index, dep in enumerate(config["dependencies"]):
        for target in dep.get("targets", []):
            if target[0] in ids and target[1] == trigger:
                return dep.get("id", index), target[0]
    raise LookupError(f"no {trigger!r} event on a component labelled {label!r}")


def queue_call(base_url: str, fn_index: int, data: list, trigger_id: int | None = None, timeout: float = 120,
               event_data=None) -> dict:
    """Join the queue as the browser does (``event_data``: what a click sends, e.g. a gallery's
    selection); returns the process_completed message."""
    import httpx

    session = uuid.uuid4().hex[:11]
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": event_data,
            "trigger_id": trigger_id}
    joined = httpx.post(f"{base_url}gradio_api/queue/join", timeout=timeout, content=json.dumps(body),  # NaN passes
                        headers={"content-type": "application/json"})
    if joined.status_code != 200:
        return {"msg": "http", "status": joined.status_code, "text": joined.text}
    stream = read_sse(f"{base_url}gradio_api/queue/data?session_hash={session}", timeout)
    for line in stream.splitlines():
        if line.startswith("data:"):
            msg = json.loads(line[5:])
            if msg.get("msg") in ("process_completed", "unexpected_error"):
                return msg
    return {"msg": "none", "stream": stream}


def upload(base_url: str, name: str, content: bytes):
    import httpx

    return httpx.post(f"{base_url}gradio_api/upload", files={"files": (name, content)}, timeout=60)


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


# ----------------------------------------------------------------------------- hostile files


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decompression_bomb_png(side: int = 20_000) -> bytes:
    """A 1-bit side x side PNG: ~50 kB on disk, 400 M pixels once decoded."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def safetensors_bytes(header, data: bytes = b"") -> bytes:
    encoded = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def torch_save_bytes() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"unet.x.lora_A.weight": torch.zeros(2, 2)}, buf)  # a zip holding a pickle
    return buf.getvalue()


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    where: str  # the endpoint or function under attack
    input: str  # what is sent, in words (for the doc table)
    expected: str  # the behaviour required, in words
    run: Callable  # run(ctx) -> ("error", message) | ("ok", result)
    match: str | None = None  # regex the error must match; None: the call must succeed
    forbid: str | None = None  # regex the error must NOT match (a server path, say)


class Ctx:
    """What the cases need: the gradio_client Client, the base URL, a temp folder, a tiny blender."""

    def __init__(self, client, url, tmp, tiny_pipe_factory):
        self.client, self.url, self.tmp = client, url, tmp
        self._pipe_factory = tiny_pipe_factory
        self._pipe = None

    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = self._pipe_factory()
        return self._pipe

    def path(self, name: str, content: bytes) -> str:
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.write(content)
        return path


def outcome(call) -> tuple[str, object]:
    try:
        return "ok", call()
    except Exception as error:  # broad on purpose: the message is what is checked
        return "error", f"{type(error).__name__}: {error}"


def api(endpoint: str, **override):
    def run(ctx):
        kwargs = DEFAULTS[endpoint] | override
        return outcome(lambda: ctx.client.predict(**kwargs, api_name=endpoint))
    return run


def api_image(content: bytes | None, name: str = "image.png", **override):
    def run(ctx):
        from gradio_client import handle_file

        image = handle_file(ctx.path(name, content() if callable(content) else content))
        return outcome(lambda: ctx.client.predict(image=image, **(DEFAULTS["/forward_noise"] | override),
                                                  api_name="/forward_noise"))
    return run


def raw(endpoint: str, **override):
    def run(ctx):
        values = DEFAULTS[endpoint] | override
        kind, text = raw_call(ctx.url, endpoint, list(values.values()))
        return ("ok", text) if kind == "complete" else ("error", f"{kind}: {text}")
    return run


def raw_data(endpoint: str, data):
    def run(ctx):
        kind, text = raw_call(ctx.url, endpoint, data)
        return ("ok", text) if kind == "complete" else ("error", f"{kind}: {text}")
    return run


def raw_forward_noise(image):
    def run(ctx):
        kind, text = raw_call(ctx.url, "/forward_noise", [image() if callable(image) else image, 400, 0])
        return ("ok", text) if kind == "complete" else ("error", f"{kind}: {text}")
    return run


def in_temp_dir(name: str, make: Callable[[str], None]) -> str:
    """A path inside the app's own temp dir (what an upload would be), made by ``make(path)``."""
    from labapp.uploads import temp_dir

    folder = os.path.join(temp_dir(), "hostile-" + uuid.uuid4().hex[:8])
    os.makedirs(folder)
    path = os.path.join(folder, name)
    make(path)
    return path


def forged(where: Callable[[Ctx], str]):
    """/forward_noise with a FileData dict *without* meta (Gradio's upload check skips it)."""
    def run(ctx):
        return raw_forward_noise({"path": where(ctx)})(ctx)
    return run


def _fifo(path: str) -> str:
    os.mkfifo(path)
    return path


def real_png(ctx) -> str:
    return ctx.path("outside.png", png_bytes(np.full((32, 32, 3), 200, np.uint8)))


def data_url(content: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(content).decode()


def noise_png(side: int) -> bytes:
    """Incompressible: a PNG of about 3 * side**2 bytes."""
    return png_bytes(np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8))


def wide_png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def upload_many(count: int):
    def run(ctx):
        import httpx

        files = [("files", (f"f{i}.png", b"\0" * 1024)) for i in range(count)]
        response = httpx.post(f"{ctx.url}gradio_api/upload", files=files, timeout=60)
        return ("ok", response.text) if response.status_code == 200 else ("error", f"HTTP {response.status_code}: {response.text}")
    return run


def bad_fn_index(ctx):
    msg = queue_call(ctx.url, 99_999, [], None, timeout=30)
    if msg.get("msg") == "http":
        return "error", f"HTTP {msg['status']}: {msg['text']}"
    return "ok", msg


def switch_model(model_id: str):
    def run(ctx):
        fn_index, trigger = private_event(ctx.url, "Model", "input")
        msg = queue_call(ctx.url, fn_index, [model_id], trigger)
        if msg.get("success"):
            return "ok", msg
        return "error", json.dumps(msg.get("output", msg))
    return run


def http_get(path: str):
    def run(ctx):
        import httpx

        response = httpx.get(ctx.url + path, timeout=30)
        return ("ok", response.text[:200]) if response.status_code == 200 else ("error", f"HTTP {response.status_code}")
    return run


def http_upload(name: str, size: int):
    def run(ctx):
        response = upload(ctx.url, name, b"\0" * size)
        return ("ok", response.text) if response.status_code == 200 else ("error", f"HTTP {response.status_code}: {response.text}")
    return run


def call(fn):
    return lambda ctx: outcome(lambda: fn(ctx))


def pipe_call(**kwargs):
    def run(ctx):
        import torch

        args = dict(prompt="a red circle", num_inference_steps=2, height=16, width=16,
                    generator=torch.Generator().manual_seed(0), output_type="np") | kwargs
        return outcome(lambda: ctx.pipe(**args))
    return run


def presets_file(content: str | dict):
    def run(ctx):
        from pipelines.lora.presets import load_presets

        text = content if isinstance(content, str) else json.dumps(content)
        path = ctx.path(f"presets-{uuid.uuid4().hex[:6]}.json", text.encode())
        return outcome(lambda: load_presets(path))
    return run


def preset_entry(**override):
    entry = {"id": "evil", "name": "Evil", "family": "tiny-shapes",
             "source": {"path": "lora_presets/tiny-shapes/evil.safetensors"}, "trigger_words": [],
             "default_weight": 1.0, "description": "a hostile entry"}
    return presets_file({"presets": [entry | override]})


def lora_file(name: str, content: Callable[[], bytes] | bytes):
    def run(ctx):
        from pipelines.lora import LoraBlender

        data = content() if callable(content) else content
        path = ctx.path(name, data)
        return outcome(lambda: LoraBlender(ctx.pipe).load(f"hostile-{uuid.uuid4().hex[:6]}", path))
    return run


def lora_file_mismatched(ctx):
    """A real LoRA file written for a different (wider) UNet: right keys, wrong shapes."""
    from diffusers import UNet2DConditionModel

    from pipelines.lora import LoraBlender
    from testkit.lora_factory import random_lora, save_diffusers_lora

    other = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8,
                                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                 norm_num_groups=2, attention_head_dim=2)
    folder = os.path.join(ctx.tmp, "wrong-shapes")
    os.makedirs(folder, exist_ok=True)
    path = save_diffusers_lora(random_lora(other, seed=1), folder)
    return outcome(lambda: LoraBlender(ctx.pipe).load("wrong-shapes", path))


def lora_file_truncated(ctx):
    """A valid LoRA file with its tensor data cut off after the header."""
    from pipelines.lora import LoraBlender
    from testkit.lora_factory import random_lora, save_diffusers_lora

    folder = os.path.join(ctx.tmp, "truncated")
    os.makedirs(folder, exist_ok=True)
    path = save_diffusers_lora(random_lora(ctx.pipe.unet, seed=2), folder)
    data = open(path, "rb").read()
    (header_len,) = struct.unpack("<Q", data[:8])
    with open(path, "wb") as f:
        f.write(data[: 8 + header_len + 16])
    return outcome(lambda: LoraBlender(ctx.pipe).load("truncated", path))


def build(**override):
    def run(ctx):
        from labapp import engine as eng
        from labapp.generate import build_request

        kwargs = {k: GENERATE_DEFAULTS[k] for k in ("prompt", "negative_prompt", "scheduler", "steps",
                                                       "guidance_scale", "seed", "width", "height")} | override
        return outcome(lambda: build_request(eng.current(), **kwargs))
    return run
