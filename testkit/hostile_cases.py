"""The hostile-input table: every row is one case run by tests/labapp/test_hostile_inputs.py and one row of
docs/hostile-inputs.md (`.venv/bin/python -m tests.labapp.test_hostile_inputs --write-doc`)."""
from __future__ import annotations

import json
import os
import struct
import uuid

import numpy as np

from testkit.paths import ROOT
from testkit.hostile_helpers import (
    COMPARE_DEFAULTS, Case, _fifo, api, api_image,
    bad_fn_index, build, call, data_url, decompression_bomb_png, file_data,
    forged, http_get, in_temp_dir, lora_file, lora_file_mismatched,
    lora_file_truncated, noise_png, outcome, pipe_call, png_bytes, preset_entry,
    presets_file, raw, raw_data, raw_forward_noise, real_png, safetensors_bytes,
    switch_model, torch_save_bytes, upload_many, wide_png,
)


# (the raw-HTTP rows read the event stream, where the message's quotes are JSON-escaped: \\?")
FILE_RE = r'is not allowed: a file uploaded to this app, sent as \{\\?"path\\?": <what /gradio_api/upload returned>, \\?"meta'



def named(field: str) -> str:
    return f"error naming `{field}` and its range (our check: events take raw inputs, Gradio's preprocess never runs)"

def raw_inpaint(**override):
    """/inpaint over raw HTTP (NaN and forged payloads pass), its 11 inputs in order; image and mask
    are small data: URLs unless overridden (a callable value is called first)."""
    def run(ctx):
        from testkit.hostile_helpers import raw_call

        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 255
        values = dict(image={"url": data_url(png_bytes(np.full((32, 32, 3), 90, np.uint8)))},
                      mask={"url": data_url(png_bytes(mask))}, prompt="a red circle", negative_prompt="", strength=1.0,
                      method="auto", scheduler="DDIM", steps=2, guidance_scale=3.0, seed=0, mask_drawing=None)
        values |= {k: v() if callable(v) else v for k, v in override.items()}
        kind, text = raw_call(ctx.url, "/inpaint", list(values.values()))
        return ("ok", text) if kind == "complete" else ("error", f"{kind}: {text}")
    return run


def _many_layers(ctx):
    from gradio_client import handle_file

    layer = handle_file(ctx.path("layer.png", png_bytes(np.zeros((32, 32, 4), np.uint8))))
    image = handle_file(ctx.path("in.png", png_bytes(np.full((32, 32, 3), 90, np.uint8))))
    drawing = {"background": None, "composite": None, "layers": [layer] * 9}
    return outcome(lambda: ctx.client.predict(image=image, mask=None, mask_drawing=drawing, steps=2, api_name="/inpaint"))


def _lora_upload(name: str, content):
    def run(ctx):
        from gradio_client import handle_file

        file = handle_file(ctx.path(name, content() if callable(content) else content))
        return outcome(lambda: ctx.client.predict(file=file, hub_id="", api_name="/lora_inspect"))
    return run


def _settings_upload(name: str, content):
    def run(ctx):
        from gradio_client import handle_file

        file = handle_file(ctx.path(name, content() if callable(content) else content))
        return outcome(lambda: ctx.client.predict(file=file, api_name="/read_settings"))
    return run


def _private_call(find, data, event_data=None):
    """A private event (the page's own), called through the queue with forged values."""
    def run(ctx):
        from testkit.hostile_helpers import queue_call

        fn_index, trigger = find(ctx)
        msg = queue_call(ctx.url, fn_index, data, trigger, event_data=event_data)
        return ("ok", msg) if msg.get("success") else ("error", json.dumps(msg.get("output", msg)))
    return run


def _fill_form_event(ctx):
    """The event that fills Generate's form from a settings document (chained after /read_settings)."""
    import httpx

    config = httpx.get(f"{ctx.url}config", timeout=30).json()
    ids = [c["id"] for c in config["components"] if c.get("props", {}).get("label") == "Read from the file"]
    for index, dep in enumerate(config["dependencies"]):
        if dep.get("inputs") == ids and len(dep.get("outputs", [])) > 20:
            return dep.get("id", index), None
    raise LookupError("no fill-form event")


def _gallery_select(ctx):
    import httpx

    config = httpx.get(f"{ctx.url}config", timeout=30).json()
    ids = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "gallery"]
    for index, dep in enumerate(config["dependencies"]):
        if any(t[0] in ids and t[1] == "select" for t in dep.get("targets", [])):
            return dep.get("id", index), ids[0]
    raise LookupError("no select event on the gallery")


def _crop_event(ctx):
    """The forward tool's crop view (runs on every new image)."""
    import httpx

    config = httpx.get(f"{ctx.url}config", timeout=30).json()
    ids = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "noise-crop"]
    for index, dep in enumerate(config["dependencies"]):
        if ids and ids[0] in dep.get("outputs", []):
            return dep.get("id", index), None
    raise LookupError("no crop-view event")


def _chip_event(ctx):
    from testkit.hostile_helpers import private_event

    return private_event(ctx.url, "LoRA", "input")


def _many_tensors() -> bytes:
    import torch
    from safetensors.torch import save

    return save({f"lora_unet_x{i}.alpha": torch.tensor(1.0) for i in range(10_000)})


def _sdxl_bytes() -> bytes:
    import tempfile

    from testkit.lora_factory import sdxl_like_kohya

    with tempfile.TemporaryDirectory() as folder:
        path = sdxl_like_kohya(os.path.join(folder, "sdxl.safetensors"))
        with open(path, "rb") as f:
            return f.read()


CASES: list[Case] = [
    # --- /generate through gradio_client: types and ranges
    Case("steps-zero", "API /generate", "steps=0", named("steps"), api("/generate", steps=0),
         r"steps=0 is not allowed: an integer in \[1, 150\]"),
    Case("steps-huge", "API /generate", "steps=10000", named("steps"), api("/generate", steps=10000),
         r"steps=10000 is not allowed: an integer in \[1, 150\]"),
    Case("steps-fraction", "API /generate", "steps=2.5", "error naming `steps`: an integer in [1, 150]",
         api("/generate", steps=2.5), r"steps=2\.5 is not allowed: an integer in \[1, 150\]"),
    Case("steps-text", "API /generate", 'steps="abc"', "error naming `steps`: a number, not text (never converted)",
         api("/generate", steps="abc"), r"steps='abc' is not allowed: an integer in \[1, 150\]"),
    Case("seed-negative", "API /generate", "seed=-1", named("seed"), api("/generate", seed=-1),
         r"seed=-1 is not allowed: an integer in \[0, 4294967295\]"),
    Case("seed-2^40", "API /generate", "seed=2**40", named("seed") + ", the bound printed as 4294967295",
         api("/generate", seed=2**40), r"seed=1099511627776 is not allowed: an integer in \[0, 4294967295\]"),
    Case("guidance-negative", "API /generate", "guidance_scale=-1", named("guidance_scale"),
         api("/generate", guidance_scale=-1), r"guidance_scale=-1(\.0)? is not allowed: a finite number in \[0, 30\]"),
    Case("width-odd", "API /generate", "width=17 (not a multiple of the VAE factor)",
         "error naming `width`: a multiple of the VAE factor in range", api("/generate", width=17),
         r"width=17 is not allowed: a multiple of 2"),
    Case("images-99", "API /generate", "num_images=99", named("num_images"), api("/generate", num_images=99),
         r"num_images=99 is not allowed: an integer in \[1, 4\]"),
    Case("cfg-zero-steps", "API /generate", "cfg_zero_init_steps=10 with steps=2",
         "error naming `cfg_zero_init_steps`: at most `steps`", api("/generate", cfg_zero_init_steps=10),
         r"cfg_zero_init_steps=10 is not allowed: .*\[0, 2\]"),
    Case("interval-reversed", "API /generate", "guidance_interval_start=0.8, guidance_interval_end=0.2",
         "error naming `guidance_interval_start`: less than the end",
         api("/generate", guidance_interval_start=0.8, guidance_interval_end=0.2),
         r"guidance_interval_start=0\.8 is not allowed: less than guidance_interval_end=0\.2"),
    Case("perp-neg-no-negative", "API /generate", "guidance_method='perp-neg', empty negative_prompt",
         "error naming `negative_prompt`: needed by perp-neg", api("/generate", guidance_method="perp-neg"),
         r"negative_prompt='' is not allowed: a non-empty negative prompt"),
    # --- unknown names, path-like names
    Case("scheduler-unknown", "API /generate", "scheduler='Nope 3M'", "error naming `scheduler`, listing the valid ones",
         api("/generate", scheduler="Nope 3M"), r"scheduler='Nope 3M' is not allowed: one of \['DDIM'"),
    Case("scheduler-path", "API /generate", "scheduler='../../etc/passwd'", "error naming `scheduler`; never used as a path",
         api("/generate", scheduler="../../etc/passwd"), r"scheduler='\.\./\.\./etc/passwd' is not allowed: one of"),
    Case("decoder-unknown", "API /generate", "preview_decoder='pickle'", "error naming `preview_decoder`",
         api("/generate", preview_decoder="pickle"), r"preview_decoder='pickle' is not allowed: one of \['linear'"),
    Case("method-code", "API /generate", "guidance_method=\"__import__('os')\"", "error naming `guidance_method`",
         api("/generate", guidance_method="__import__('os')"), r"guidance_method=.*is not allowed: one of \['cfg'"),
    Case("lora-path", "API /generate", "lora='../../etc/passwd:0.5'",
         "error naming `lora name`: not a registered preset (registry lookup, never a path)",
         api("/generate", lora="../../etc/passwd:0.5"), r"lora name='\.\./\.\./etc/passwd' is not allowed"),
    Case("lora-abs-path", "API /generate", 'lora=\'[{"name": "/srv/diffusion-lab/lora_presets/x.safetensors"}]\'',
         "error naming `lora name`: not a registered preset",
         api("/generate", lora='[{"name": "/srv/diffusion-lab/lora_presets/x.safetensors"}]'), r"lora name='/srv/diffusion-lab/lora_presets/x\.safetensors' is not allowed"),
    Case("lora-weight", "API /generate", "lora='outline:9'", "error naming `lora[outline].weight`: in [-2, 2]",
         api("/generate", lora="outline:9"), r"lora\[outline\]\.weight=9.* is not allowed: a finite number in \[-2, 2\]"),
    Case("lora-bad-json", "API /generate", "lora='[not json'", "error naming `lora`: shows the accepted forms",
         api("/generate", lora="[not json"), r"lora='\[not json' is not allowed: a JSON list"),
    Case("lora-blocks", "API /generate", 'lora=[{"name": "x", "block_weights": {"evil": 1}}]',
         "error naming `lora[x].block_weights`", api("/generate", lora='[{"name": "x", "block_weights": {"evil": 1}}]'),
         r"lora\[x\]\.block_weights=.* is not allowed"),
    Case("lora-step-range", "API /generate", 'lora=[{"name": "x", "step_range": [0.9, 0.1]}]',
         "error naming `lora[x].step_range`: start < end",
         api("/generate", lora='[{"name": "x", "step_range": [0.9, 0.1]}]'), r"lora\[x\]\.step_range=.*start < end"),
    Case("lora-huge", "API /generate", "lora = 'a:1,' * 50000 (200 kB)", "error naming `lora`: at most 4000 characters, value shortened",
         api("/generate", lora="a:1," * 50_000), r"lora='a:1,a:1.*\(200000 characters\) is not allowed: at most 4000 characters"),
    Case("lora-deep-json", "API /generate", "lora = '[' * 3000 (nesting bomb under the length cap)",
         "error naming `lora` (a JSON list), not a RecursionError", api("/generate", lora="[" * 3000),
         r"lora='\[\[\[.*is not allowed"),
    # --- prompts: size, unicode, empties
    Case("prompt-huge", "API /generate", "prompt = 'x' * 20000", "error naming `prompt`: at most 2000 characters",
         api("/generate", prompt="x" * 20_000), r"prompt='xxx.*at most 2000 characters \(got 20000\)"),
    Case("negative-huge", "API /generate", "negative_prompt = 'x' * 5000",
         "error naming `negative_prompt`: at most 2000 characters", api("/generate", negative_prompt="x" * 5000),
         r"negative_prompt=.*at most 2000 characters"),
    Case("prompt-unicode", "API /generate", "CJK, emoji, RTL override, NUL, zero-width space in the prompt",
         "works: an image", api("/generate", prompt="猫 🐱 \u202eevil\u202c \x00 zero\u200bwidth é"), None),
    Case("prompt-empty", "API /generate", "prompt='' (unconditional)", "works: an image", api("/generate", prompt=""), None),
    Case("prompt-null", "API /generate", "prompt=None", "works: treated as the empty prompt",
         api("/generate", prompt=None), None),
    Case("prompt-number", "API /generate", "prompt=123", "error naming `prompt`: text (not converted to '123')",
         api("/generate", prompt=123), r"prompt=123 is not allowed: text \(a JSON string\), not int"),
    # --- raw HTTP: what JSON clients can send and gradio_client cannot
    Case("guidance-nan", "HTTP /generate", "guidance_scale=NaN", "error naming `guidance_scale`: a finite number",
         raw("/generate", guidance_scale=float("nan")), r"guidance_scale=nan is not allowed: a finite number in \[0, 30\]"),
    Case("guidance-inf", "HTTP /generate", "guidance_scale=Infinity", named("guidance_scale"),
         raw("/generate", guidance_scale=float("inf")), r"guidance_scale=inf is not allowed: a finite number in \[0, 30\]"),
    Case("rescale-nan", "HTTP /generate", "guidance_rescale=NaN", "error naming `guidance_rescale`",
         raw("/generate", guidance_rescale=float("nan")), r"guidance_rescale=nan is not allowed"),
    Case("steps-minus-inf", "HTTP /generate", "steps=-Infinity", named("steps"), raw("/generate", steps=float("-inf")),
         r"steps=-inf is not allowed: an integer in \[1, 150\]"),
    Case("seed-nan", "HTTP /generate", "seed=NaN", "a clear error (no crash), server keeps serving",
         raw("/generate", seed=float("nan")), r"seed|nan|NaN"),
    Case("data-short", "HTTP /generate", "2 values instead of 25", "Gradio refuses: wrong number of inputs",
         raw_data("/generate", ["a", ""]), r"(?i)expected.*25|needed|arguments|inputs"),
    Case("data-not-list", "HTTP /generate", 'data = "DROP TABLE"', "HTTP 422 (request validation)",
         raw_data("/generate", "DROP TABLE"), r"http 422.*Input should be a valid list"),
    # --- other endpoints
    Case("scales-nan", "API /cfg_sweep", "scales='1, nan'", "error naming `scales`: finite numbers",
         api("/cfg_sweep", scales="1, nan"), r"scales=nan is not allowed: a finite number"),
    Case("scales-overflow", "API /cfg_sweep", "scales='1e309'", "error naming `scales` (1e309 is inf)",
         api("/cfg_sweep", scales="1e309"), r"scales=inf is not allowed"),
    Case("scales-code", "API /cfg_sweep", "scales=\"__import__('os').system('id')\"", "error naming `scales`: numbers",
         api("/cfg_sweep", scales="__import__('os').system('id')"), r"scales=.* numbers in \[0, 30\] separated by commas"),
    Case("scales-many", "API /cfg_sweep", "scales = 9 values (amplification)", "error naming `scales`: 1 to 8 numbers",
         api("/cfg_sweep", scales="1,2,3,4,5,6,7,8,9"), r"scales=.*1 to 8 numbers"),
    Case("methods-empty", "API /compare_guidance", "methods=[]", "error naming `methods`: between 1 and 8",
         api("/compare_guidance", methods=[]), r"methods=\[\] is not allowed: between 1 and 8"),
    Case("methods-unknown", "API /compare_guidance", "methods=['cfg', '../../x']", "error naming `methods`",
         api("/compare_guidance", methods=["cfg", "../../x"]), r"methods='\.\./\.\./x' is not allowed: one of"),
    Case("schedulers-all", "API /compare_schedulers", "all 21 schedulers at once (amplification)",
         "error naming `schedulers`: between 1 and 8 names", None, r"schedulers=.* between 1 and 8 names"),
    Case("schedulers-string", "API /compare_schedulers", "schedulers='DDIM' (a string where a list belongs)",
         "error naming `schedulers`: a list (it used to be iterated per character: \"'D' is not in the list\")",
         api("/compare_schedulers", schedulers="DDIM"), r"schedulers='DDIM' is not allowed: a list of names"),
    Case("work-over-budget", "API /compare_schedulers", "8 second-order schedulers x 150 steps (4784 model calls)",
         "error naming the budget (3600 model calls) and the request's cost, before anything runs",
         api("/compare_schedulers", steps=150, schedulers=["Heun", "DPM2", "DPM2 Karras", "DPM2 a", "DPM2 a Karras",
                                                           "DPM++ SDE", "DPM++ SDE Karras", "Heun"]),
         r"compare_schedulers: this request needs \d+ model calls .*the budget is 3600 model calls per request"),
    # --- round 2 (issue 13): silent coercions and unhelpful errors
    Case("seed-fraction", "API /generate", "seed=1.5 (Gradio rounded it to 2)", "error naming `seed`: an integer, never rounded",
         api("/generate", seed=1.5), r"seed=1\.5 is not allowed: an integer in \[0, 4294967295\]"),
    Case("steps-bool", "HTTP /generate", "steps=true (Gradio ran 1 step)", "error naming `steps`",
         raw("/generate", steps=True), r"steps=True is not allowed: an integer in \[1, 150\]"),
    Case("randomize-string", "HTTP /generate", 'randomize_seed="yes" (Gradio took it as ticked)',
         "error naming `randomize_seed`: true or false", raw("/generate", randomize_seed="yes"),
         r"randomize_seed='yes' is not allowed: true or false"),
    Case("prompt-list", "HTTP /generate", 'prompt=["a", "b"] (Gradio stringified it)', "error naming `prompt`: text",
         raw("/generate", prompt=["a", "b"]), r"prompt=\['a', 'b'\] is not allowed: text \(a JSON string\), not list"),
    Case("prompt-surrogate", "HTTP /generate", "a lone UTF-16 surrogate in the prompt (JSON \"\\ud800\")",
         "error naming `prompt`: valid Unicode (not a tokenizer message)", raw("/generate", prompt="a \ud800 b"),
         r"prompt=.* is not allowed: valid Unicode text \(a lone surrogate at character 2\)"),
    Case("lora-huge-int", "HTTP /generate", 'lora=[{"name": "x", "weight": 10**400}]',
         "error naming `lora[x].weight` (not \"int too large to convert to float\")",
         raw("/generate", lora='[{"name": "x", "weight": ' + "1" * 400 + "}]"),
         r"lora\[x\]\.weight=1111.* is not allowed: a finite number in \[-2, 2\]", forbid=r"too large"),
    Case("lora-url", "API /generate", "lora='https://evil.example/x.safetensors:0.5'",
         "error naming `lora name` (not a bad weight): registry only, never a URL",
         api("/generate", lora="https://evil.example/x.safetensors:0.5"),
         r"lora name='https://evil\.example/x\.safetensors' is not allowed: a preset name"),
    Case("lora-object", "API /generate", 'lora=\'{"name": "outline"}\' (a JSON object)',
         "error naming `lora`: a JSON list (it used to be read as shorthand)", api("/generate", lora='{"name": "outline"}'),
         r"lora=.* is not allowed: a JSON list of objects"),
    Case("fn-index-unknown", "HTTP POST /gradio_api/queue/join", "fn_index=99999",
         "an HTTP 4xx naming fn_index, not a 500", bad_fn_index, r"HTTP 4\d\d"),
    Case("schedule-steps", "API /schedule", "steps=0", named("steps"), api("/schedule", steps=0),
         r"steps=0 is not allowed: an integer in \[1, 150\]"),
    Case("sample-index", "API /shapes_sample", "index=10**12", named("index") + " (the API's name, not `sample`)",
         api("/shapes_sample", index=10**12), r"index=1000000000000 is not allowed: an integer in \[0, 1000000\]"),
    # --- uploads and file paths
    Case("image-garbage", "API /forward_noise", "random bytes named image.png", "clear error: not an image",
         api_image(os.urandom(2048)), r"image=.* is not allowed: an image in one of", forbid=r"/tmp/|gradio"),
    Case("image-truncated", "API /forward_noise", "a PNG cut in half", "clear error: broken image",
         api_image(png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))[:300]),
         r"image=.* is not allowed: (a complete image|an image in one of)", forbid=r"/tmp/|gradio"),
    Case("image-bomb", "API /forward_noise", "20000x20000 1-bit PNG (~50 kB, 400 M pixels)",
         "error naming `image`: refused before decoding", api_image(decompression_bomb_png()),
         r"image=.* is not allowed: at most 8192 px per side and 16 MP"),
    Case("image-html", "API /forward_noise", "an HTML page with a script, named image.png", "clear error: not an image",
         api_image(b"<html><script>alert(1)</script></html>"), r"image=.* is not allowed: an image in one of",
         forbid=r"/tmp/|gradio"),
    Case("image-tiny-rgba", "API /forward_noise", "a 1x1 RGBA PNG", "works: converted and resized",
         api_image(png_bytes(np.zeros((1, 1, 4), np.uint8))), None),
    Case("image-oversized", "API /forward_noise", "a 6 MB upload (image limit 5 MB; the upload route allows the LoRA limit)",
         "error naming `image`: at most 5242880 bytes, checked before reading",
         api_image(lambda: b"\0" * (6 * 1024 * 1024), "big.png"), r"image='<6291456 bytes>' is not allowed: at most 5242880 bytes"),
    Case("image-forged-path", "HTTP /forward_noise", "FileData path '/etc/passwd' (not uploaded)",
         "refused: not uploaded by a user, never read", raw_forward_noise(file_data("/etc/passwd")),
         r"Cannot move /etc/passwd to the gradio cache dir because it was not uploaded by a user"),
    Case("image-forged-relative", "HTTP /forward_noise", "FileData path '../../../../etc/passwd'",
         "refused: not uploaded by a user, never read", raw_forward_noise(file_data("../../../../etc/passwd")),
         r"because it was not uploaded by a user"),
    Case("image-null", "HTTP /forward_noise", "image=null", "error naming `image`", raw_forward_noise(None),
         r"image=None is not allowed"),
    # --- round 2 (issue 13): forged paths without meta, special files, inline data, pixel bombs
    Case("image-no-meta-outside", "HTTP /forward_noise", "FileData without `meta`, path = a real PNG outside the app's dirs",
         "error naming `image`: only files uploaded to this app; never read, path not echoed",
         forged(real_png), r"image='<path>' is not allowed: a file uploaded to this app", forbid=r"outside\.png|/tmp/"),
    Case("image-no-meta-passwd", "HTTP /forward_noise", "FileData without `meta`, path '/etc/passwd'",
         "same error whether the path exists, is a directory or not an image", forged(lambda ctx: "/etc/passwd"),
         r"image='<path>' is not allowed: a file uploaded to this app", forbid=r"passwd|identify"),
    Case("image-no-meta-dir", "HTTP /forward_noise", "FileData without `meta`, path '/etc' (a directory)",
         "same error as any other refused path", forged(lambda ctx: "/etc"),
         r"image='<path>' is not allowed: a file uploaded to this app", forbid=r"/etc|[Dd]irectory"),
    Case("image-fifo-outside", "HTTP /forward_noise", "FileData without `meta`, path = a FIFO outside the app's dirs",
         "refused at once, never opened (it used to block the pipeline slot forever)",
         forged(lambda ctx: _fifo(os.path.join(ctx.tmp, f"fifo-{uuid.uuid4().hex[:6]}"))),
         r"image='<path>' is not allowed: a file uploaded to this app"),
    Case("image-fifo-inside", "HTTP /forward_noise", "FileData without `meta`, path = a FIFO inside the app's temp dir",
         "refused from stat (not a regular file), never opened", forged(lambda ctx: in_temp_dir("fifo.png", _fifo)),
         r"image='<path>' is not allowed: a file uploaded to this app"),
    Case("image-dir-inside", "HTTP /forward_noise", "FileData without `meta`, path = a directory inside the temp dir",
         "refused: not a regular file", forged(lambda ctx: in_temp_dir("d.png", os.mkdir)),
         r"image='<path>' is not allowed: a file uploaded to this app"),
    Case("image-symlink-inside", "HTTP /forward_noise", "FileData without `meta`, a symlink in the temp dir to a PNG outside",
         "refused: resolved first, then checked", forged(lambda ctx: in_temp_dir("l.png", lambda p: os.symlink(real_png(ctx), p))),
         r"image='<path>' is not allowed: a file uploaded to this app"),
    Case("image-url-field", "HTTP /forward_noise", "FileData with only `url` = http://127.0.0.1:9/x.png",
         "error naming `image`: URLs are never fetched", raw_forward_noise({"url": "http://127.0.0.1:9/x.png"}),
         r"image='http://127\.0\.0\.1:9/x\.png' is not allowed: an uploaded file \(URLs are never fetched"),
    Case("image-path-string", "HTTP /forward_noise", "image = the string '/etc/passwd'",
         "error naming `image`, the value and the shapes taken (was pydantic's \"1 validation error for ImageData\"), never opened",
         raw_forward_noise("/etc/passwd"), r"image='/etc/passwd' is not allowed: an image: an uploaded file \{\\?\"path",
         forbid=r"root:|validation error|pydantic"),
    Case("image-data-url", "HTTP /forward_noise", "a small PNG as an inline data: URL (url field)", "works (same checks as an upload)",
         raw_forward_noise({"url": data_url(png_bytes(np.zeros((8, 8, 3), np.uint8)))}), None),
    Case("image-data-url-huge", "HTTP /forward_noise", "a 6.2 MB PNG as a data: URL (skipped max_file_size before)",
         "error naming `image`: at most 5242880 bytes, checked before decoding",
         raw_forward_noise(lambda: {"url": data_url(noise_png(1440))}), r"image=.* is not allowed: at most 5242880 bytes"),
    Case("image-13000-px", "API /forward_noise", "a 13000x13000 1-bit PNG (~20 kB; under Pillow's bomb limit: +1.9 GB before)",
         "error naming `image`: at most 8192 px per side and 16 MP, from the header",
         api_image(lambda: wide_png(13_000, 13_000)), r"image='13000x13000 px' is not allowed: at most 8192 px per side and 16 MP"),
    Case("image-1x150M", "API /forward_noise", "a 150,000,000 x 1 PNG (+3.4 GB before)", "error naming `image`: at most 8192 px per side",
         api_image(lambda: wide_png(150_000_000, 1)), r"image='150000000x1 px' is not allowed: at most 8192 px per side"),
    Case("image-eps", "API /forward_noise", "an EPS file named image.png (Pillow would run Ghostscript)",
         "error naming `image`: only PNG, JPEG, WebP, GIF, BMP are opened",
         api_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"),
         r"image=.* is not allowed: an image in one of \['PNG'", forbid=r"/tmp/|gradio"),
    Case("upload-many-files", "HTTP POST /gradio_api/upload", "2 files in one upload request (40 were accepted)",
         "HTTP 400: at most 1 file per upload", upload_many(2), r"HTTP 400: Too many files\. Maximum number of files is 1"),
    Case("file-etc-passwd", "HTTP GET", "/gradio_api/file=/etc/passwd", "403, not served",
         http_get("gradio_api/file=/etc/passwd"), r"HTTP 403"),
    Case("file-source", "HTTP GET", "/gradio_api/file=<repo>/app.py", "403: the repository is not served",
         http_get(f"gradio_api/file={os.path.join(ROOT, 'app.py')}"), r"HTTP 403"),
    Case("file-traversal", "HTTP GET", "/gradio_api/file=../../../../etc/passwd", "403/404, not served",
         http_get("gradio_api/file=../../../../etc/passwd"), r"HTTP 40[34]"),
    Case("file-model", "HTTP GET", "/gradio_api/file=<repo>/lora_presets/presets.json", "403",
         http_get(f"gradio_api/file={os.path.join(ROOT, 'lora_presets', 'presets.json')}"), r"HTTP 403"),
    # --- bring your own LoRA (issue 17): /lora_inspect and /lora_unload
    Case("byo-pickle-renamed", "API /lora_inspect", "a pickle uploaded as style.safetensors",
         "error: a pickle, refused by its magic bytes (never unpickled)",
         _lora_upload("style.safetensors", lambda: __import__("pickle").dumps({"a": 1}, protocol=4)),
         r"is a pickle \(starts with bytes 0x80 0x04", forbid=r"/tmp/|gradio"),
    Case("byo-ckpt", "API /lora_inspect", "an upload named evil.ckpt", "error: pickle refused by name before any read",
         _lora_upload("evil.ckpt", b"\x80\x04K\x01."), r"pickle checkpoint", forbid=r"/tmp/"),
    Case("byo-torch-save", "API /lora_inspect", "a torch.save zip uploaded as x.safetensors",
         "error: a zip archive (torch.save), never loaded", _lora_upload("x.safetensors", torch_save_bytes),
         r"is a zip archive"),
    Case("byo-10k-tensors", "API /lora_inspect", "10,000 tiny tensors", "error from the header: at most 4096 tensors",
         _lora_upload("many.safetensors", lambda: _many_tensors()), r"holds 10000 tensors; at most 4096"),
    Case("byo-huge-claim", "API /lora_inspect", "a header claiming a 2^20 x 2^20 tensor in a 100-byte file",
         "error naming the tensor and its claimed shape",
         _lora_upload("huge.safetensors", safetensors_bytes({"lora_unet_a.lora_down.weight": {
             "dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 4 * 2**40]}}, b"\0" * 64)),
         r"claims shape \[1048576, 1048576\]"),
    Case("byo-truncated", "API /lora_inspect", "a LoRA cut after its header", "error: truncated",
         _lora_upload("cut.safetensors", lambda: _unrelated_safetensors()[:-8]), r"is truncated"),
    Case("byo-sdxl", "API /lora_inspect", "an SDXL-shaped kohya LoRA with SDXL metadata",
         "error naming the first mismatch and the base model from the metadata",
         _lora_upload("sdxl.safetensors", lambda: _sdxl_bytes()),
         r"does not fit this model: .*attn2\.to_k.* \(the file's metadata says it was made for ss_base_model_version=sdxl"),
    Case("byo-forged-path", "HTTP /lora_inspect", "FileData path '/etc/passwd' (with `meta`: not uploaded)",
         "refused: not uploaded by a user, never read", raw_data("/lora_inspect", [file_data("/etc/passwd"), ""]),
         r"(not uploaded by a user|file='<path>' is not allowed: a file uploaded to this app)", forbid=r"root:"),
    Case("byo-forged-no-meta", "HTTP /lora_inspect", "FileData without `meta`, path '/etc/passwd'",
         "error naming `file` and what is taken (was pydantic's \"1 validation error for FileData ... 'meta' field\"), never read",
         raw_data("/lora_inspect", [{"path": "/etc/passwd"}, ""]), r"file='<an object with keys path>' " + FILE_RE,
         forbid=r"root:|passwd|validation error|pydantic"),
    Case("byo-url", "HTTP /lora_inspect", "FileData with `url` = https://evil.example/x.safetensors and no path",
         "error naming `file` (a FileData needs the path the upload returned), never fetched", raw_data("/lora_inspect", [
             {"url": "https://evil.example/x.safetensors", "meta": {"_type": "gradio.FileData"}}, ""]),
         r"file='<an object with keys meta, url>' " + FILE_RE, forbid=r"root:|validation error"),
    Case("byo-nothing", "API /lora_inspect", "no file and no Hub id", "error naming `file`",
         lambda ctx: outcome(lambda: ctx.client.predict(file=None, hub_id="", api_name="/lora_inspect")),
         r"file=None is not allowed: a \.safetensors LoRA file, or a Hub id"),
    Case("byo-hub-traversal", "API /lora_inspect", "hub_id='../../etc/passwd'", "error: not a Hub id (never a path)",
         lambda ctx: outcome(lambda: ctx.client.predict(file=None, hub_id="../../etc/passwd", api_name="/lora_inspect")),
         r"'\.\./\.\./etc/passwd' is not a Hub id"),
    Case("byo-hub-url", "API /lora_inspect", "hub_id='https://evil.example/x'", "error: not a Hub id (never fetched as a URL)",
         lambda ctx: outcome(lambda: ctx.client.predict(file=None, hub_id="https://evil.example/x", api_name="/lora_inspect")),
         r"is not a Hub id"),
    Case("byo-hub-huge", "API /lora_inspect", "hub_id = 'a/' + 'b' * 5000", "error naming `hub_id`: at most 300 characters",
         lambda ctx: outcome(lambda: ctx.client.predict(file=None, hub_id="a/" + "b" * 5000, api_name="/lora_inspect")),
         r"hub_id=.* is not allowed: at most 300 characters"),
    Case("byo-unload-other", "API /lora_unload", "name='user-someone-000000' (not this session's)",
         "error naming `name`: one of this session's user adapters",
         lambda ctx: outcome(lambda: ctx.client.predict(name="user-someone-000000", api_name="/lora_unload")),
         r"name='user-someone-000000' is not allowed: one of this session's user adapters"),
    # --- the model switch (a private event, still reachable through the queue)
    Case("model-path", "queue: Model dropdown", "model='../../etc/passwd'",
         "error naming `model`: not a registered id; the current model stays", switch_model("../../etc/passwd"),
         r"model='\.\./\.\./etc/passwd' could not be loaded .*not a registered model.*still using"),
    Case("model-hub-id", "queue: Model dropdown", "model='attacker/evil-sd' (a Hub id)",
         "error naming `model`: registry only, nothing downloaded", switch_model("attacker/evil-sd"),
         r"model='attacker/evil-sd' could not be loaded .*not a registered model"),
    # --- functions
    Case("fn-steps", "TracingStableDiffusionPipeline()", "num_inference_steps=0", "ValueError naming num_inference_steps",
         pipe_call(num_inference_steps=0), r"num_inference_steps=0 must be an integer >= 1"),
    Case("fn-height", "TracingStableDiffusionPipeline()", "height=17", "ValueError naming height",
         pipe_call(height=17), r"height=17 must be a positive multiple of the VAE factor"),
    Case("fn-nan", "TracingStableDiffusionPipeline()", "guidance_scale=nan", "ValueError naming guidance_scale",
         pipe_call(guidance_scale=float("nan")), r"guidance_scale=nan must be a finite number"),
    Case("fn-prompt-type", "TracingStableDiffusionPipeline()", "prompt=['a', 3]", "ValueError naming prompt",
         pipe_call(prompt=["a", 3]), r"prompt=\['a', 3\] must be a string or a non-empty list of strings"),
    Case("fn-scheduler-path", "TracingStableDiffusionPipeline()", "scheduler='../../etc/passwd'",
         "ValueError naming scheduler", pipe_call(scheduler="../../etc/passwd"), r"scheduler='\.\./\.\./etc/passwd' is not a known scheduler"),
    Case("fn-build-seed", "labapp.generate.build_request", "seed=1.5", "gr.Error naming seed",
         build(seed=1.5), r"seed=1\.5 is not allowed: an integer"),
    Case("fn-model-path", "pipelines.models.load_pipeline", "'../../etc/passwd'", "ValueError: not a registered model",
         call(lambda ctx: __import__("pipelines.models", fromlist=["x"]).load_pipeline("../../etc/passwd")),
         r"model_id='\.\./\.\./etc/passwd' is not a registered model"),
    Case("fn-preset-path", "pipelines.lora.presets.get_preset", "'../../etc/passwd'", "ValueError: no such preset",
         call(lambda ctx: __import__("pipelines.lora.presets", fromlist=["x"]).get_preset("../../etc/passwd")),
         r"no LoRA preset '\.\./\.\./etc/passwd'"),
    # --- preset files
    Case("presets-not-json", "pipelines.lora.presets.load_presets", "a presets file that is not JSON",
         "ValueError naming the file: not valid JSON", presets_file("{presets: ["), r"presets-.*\.json: not valid JSON"),
    Case("presets-not-list", "pipelines.lora.presets.load_presets", '{"presets": {"a": 1}}',
         "ValueError: expected a 'presets' list", presets_file({"presets": {"a": 1}}), r"expected an object with a 'presets' list"),
    Case("preset-path-escape", "pipelines.lora.presets.load_presets", "source path 'lora_presets/../../../etc/x.safetensors'",
         "ValueError naming entry and field `source`: must lie inside lora_presets/",
         preset_entry(source={"path": "lora_presets/../../../etc/x.safetensors"}), r"field 'source'.*must lie inside lora_presets/"),
    Case("preset-pickle", "pipelines.lora.presets.load_presets", "source path '.../evil.ckpt'",
         "ValueError naming `source`: pickle refused", preset_entry(source={"path": "lora_presets/tiny-shapes/evil.ckpt"}),
         r"field 'source'.*pickle checkpoint"),
    Case("preset-weight-nan", "pipelines.lora.presets.load_presets", "default_weight NaN (JSON NaN literal)",
         "ValueError naming `default_weight`", presets_file('{"presets": [{"id": "x", "name": "X", "family": "f", '
                                                            '"source": {"path": "lora_presets/x.safetensors"}, '
                                                            '"trigger_words": [], "default_weight": NaN, '
                                                            '"description": "d"}]}'),
         r"field 'default_weight'"),
    Case("preset-id", "pipelines.lora.presets.load_presets", "id '../x'", "ValueError naming `id`",
         preset_entry(id="../x"), r"field 'id'"),
    Case("preset-repo", "pipelines.lora.presets.load_presets", "repo '../../etc'", "ValueError naming `source`",
         preset_entry(source={"repo": "../../etc", "weight_name": "x.safetensors"}), r"field 'source'.*not a Hub repo id"),
    Case("preset-extra-field", "pipelines.lora.presets.load_presets", "an unknown field 'exec'",
         "ValueError naming the field", preset_entry(exec="rm -rf /"), r"field 'exec': is not a preset field"),
    # --- LoRA files
    Case("lora-pickle-name", "pipelines.lora.LoraBlender.load", "evil.bin", "ValueError: pickle refused before any read",
         lora_file("evil.bin", b"\x80\x04K\x01."), r"is a pickle checkpoint; only \.safetensors"),
    Case("lora-torch-save", "pipelines.lora.LoraBlender.load", "a torch.save zip renamed .safetensors",
         "ValueError: not a safetensors file (never unpickled)", lora_file("zip.safetensors", torch_save_bytes),
         r"is not a safetensors file"),
    Case("lora-empty", "pipelines.lora.LoraBlender.load", "an empty .safetensors", "ValueError: not a safetensors file",
         lora_file("empty.safetensors", b""), r"not a safetensors file: only 0 bytes"),
    Case("lora-header-len", "pipelines.lora.LoraBlender.load", "header length 2**63", "ValueError: header does not fit",
         lora_file("len.safetensors", struct.pack("<Q", 2**63) + b"{}"), r"header length .* does not fit"),
    Case("lora-header-list", "pipelines.lora.LoraBlender.load", "header is the JSON '[]'", "ValueError naming the file",
         lora_file("list.safetensors", safetensors_bytes("[]")), r"ValueError: .*list\.safetensors"),
    Case("lora-unrelated", "pipelines.lora.LoraBlender.load", "a valid safetensors with unrelated keys",
         "ValueError: no key matches this model", lora_file("unrelated.safetensors", lambda: _unrelated_safetensors()),
         r"ValueError: .*(none of its keys matched|does not fit)"),
    Case("lora-wrong-shapes", "pipelines.lora.LoraBlender.load", "a LoRA made for another UNet (shape mismatch)",
         "ValueError: does not fit this pipeline's model", lora_file_mismatched, r"ValueError: .*does not fit this pipeline's model"),
    Case("lora-truncated", "pipelines.lora.LoraBlender.load", "a LoRA file cut after its header",
         "ValueError naming the file (truncated)", lora_file_truncated, r"ValueError: .*\.safetensors"),
    # --- /inpaint (issue 16): the mask upload and the ImageEditor payload go through the same intake
    Case("inpaint-mask-forged-path", "HTTP /inpaint", "mask = FileData without `meta`, path '/etc/passwd'",
         "error naming `mask`: never read, path not echoed", raw_inpaint(mask={"path": "/etc/passwd"}),
         r"mask='<path>' is not allowed: a file uploaded to this app", forbid=r"passwd"),
    Case("inpaint-layer-forged-path", "HTTP /inpaint", "mask_drawing whose layer is FileData path '/etc/passwd'",
         "refused: not uploaded by a user, never read",
         raw_inpaint(mask_drawing={"background": None, "composite": None, "layers": [file_data("/etc/passwd")]}),
         r"Cannot move /etc/passwd to the gradio cache dir because it was not uploaded by a user", forbid=r"root:"),
    Case("inpaint-layer-no-meta", "HTTP /inpaint", "mask_drawing whose layer is FileData without `meta`",
         "error naming `mask_drawing.layers[0]` and what is taken (was pydantic's EditorData text), never opened",
         raw_inpaint(mask_drawing={"background": None, "composite": None, "layers": [{"path": "/etc/passwd"}]}),
         r"mask_drawing\.layers\[0\]='<an object with keys path>' " + FILE_RE, forbid=r"root:|passwd|validation error"),
    Case("inpaint-layers-not-a-list", "HTTP /inpaint", "mask_drawing.layers = 'abc'", "error naming `mask_drawing`",
         raw_inpaint(mask_drawing={"background": None, "composite": None, "layers": "abc"}),
         r"mask_drawing\.layers='abc' is not allowed: a valid list \(the whole value: an ImageEditor value",
         forbid=r"validation error"),
    Case("inpaint-many-layers", "API /inpaint", "mask_drawing with 9 uploaded layers", "error naming `mask_drawing`: at most 8",
         _many_layers, r"mask_drawing='<list>' is not allowed: an ImageEditor value with at most 8 layers"),
    Case("inpaint-mask-13000-px", "HTTP /inpaint", "mask = a 13000x13000 1-bit PNG as a data: URL",
         "error naming `mask`: at most 8192 px per side, from the header",
         raw_inpaint(mask=lambda: {"url": data_url(wide_png(13_000, 13_000))}),
         r"mask='13000x13000 px' is not allowed: at most 8192 px per side"),
    Case("inpaint-mask-other-aspect", "HTTP /inpaint", "a 64x16 mask for a 32x32 image", "error naming `mask` and the sizes",
         raw_inpaint(mask=lambda: {"url": data_url(png_bytes(np.full((16, 64), 255, np.uint8)))}),
         r"mask='64x16 px' is not allowed: the image's size 32x32 px or its aspect ratio"),
    Case("inpaint-mask-empty", "HTTP /inpaint", "an all-black mask", "error naming `mask`: nothing to regenerate",
         raw_inpaint(mask=lambda: {"url": data_url(png_bytes(np.zeros((32, 32), np.uint8)))}),
         r"mask=.* is not allowed: a mask with a region to regenerate"),
    Case("inpaint-strength-nan", "HTTP /inpaint", "strength=NaN", named("strength"), raw_inpaint(strength=float("nan")),
         r"strength=nan is not allowed"),
    Case("inpaint-method-unet", "HTTP /inpaint", "method='unet' on a 4-channel model", "error naming `method`",
         raw_inpaint(method="unet"), r"method='unet' is not allowed: 'blend' or 'auto'"),
    Case("inpaint-drawing-string", "HTTP /inpaint", "mask=None, mask_drawing = the string '/etc/passwd'",
         "error naming `mask_drawing` and the value taken (was pydantic's \"1 validation error for EditorData\"), never opened",
         raw_inpaint(mask=None, mask_drawing="/etc/passwd"),
         r"mask_drawing='/etc/passwd' is not allowed: an ImageEditor value \{\\?\"background", forbid=r"root:|validation error"),
    Case("inpaint-works", "HTTP /inpaint", "a 32x32 image and a 32x32 mask as data: URLs", "works",
         raw_inpaint(), None),
    Case("img2img-forged-path", "HTTP /img2img", "image = FileData without `meta`, path '/etc/passwd'",
         "error naming `image`: never read, path not echoed",
         raw_data("/img2img", [{"path": "/etc/passwd"}, "a", "", 0.5, "DDIM", 2, 3.0, 0]),
         r"image='<path>' is not allowed: a file uploaded to this app", forbid=r"passwd"),
    Case("img2img-strength-nan", "HTTP /img2img", "strength=NaN", named("strength"),
         raw_data("/img2img", [{"url": data_url(png_bytes(np.full((32, 32, 3), 90, np.uint8)))}, "a", "", float("nan"),
                               "DDIM", 2, 3.0, 0]), r"strength=nan is not allowed"),
    Case("terminal-snr-forged-path", "HTTP /terminal_snr", "image = FileData without `meta`, path '/etc/passwd'",
         "error naming `image`: never read", raw_data("/terminal_snr", [{"path": "/etc/passwd"}, 64, "8"]),
         r"image='<path>' is not allowed: a file uploaded to this app", forbid=r"passwd"),
    # --- settings read back (issue 23): /read_settings, and the page's own events around it
    Case("settings-forged-path", "HTTP /read_settings", "file = FileData (with `meta`), path '/etc/passwd'",
         "refused (Gradio's upload check or ours), never read", raw_data("/read_settings", [file_data("/etc/passwd")]),
         r"(not uploaded by a user|file='<path>' is not allowed: a file uploaded to this app)", forbid=r"root:"),
    Case("settings-url", "HTTP /read_settings", "file = FileData with `url` https://evil.example/x.png, no path",
         "error naming `file` (a FileData needs the path the upload returned), never fetched", raw_data("/read_settings", [
             {"url": "https://evil.example/x.png", "meta": {"_type": "gradio.FileData"}}]),
         r"file='<an object with keys meta, url>' " + FILE_RE, forbid=r"root:|validation error"),
    Case("settings-png-bomb", "API /read_settings", "a 20000x20000 1-bit PNG (50 kB, 400 MP decoded)",
         "error naming `file` from the header, before decoding", _settings_upload("bomb.png", decompression_bomb_png),
         r"file=.* is not allowed: at most 8192 px per side"),
    Case("settings-png-plain", "API /read_settings", "a PNG without any settings chunk",
         "error naming `file`: what is read", _settings_upload("plain.png", lambda: png_bytes(np.zeros((8, 8, 3), np.uint8))),
         r"file=.* is not allowed: a PNG made by this app or by AUTOMATIC1111"),
    Case("settings-json-deep", "API /read_settings", "JSON nested 100,000 levels deep",
         "error naming `file` (no RecursionError reaches the server)", _settings_upload("deep.json", b"[" * 60_000),
         r"file=.* is not allowed: valid JSON"),
    Case("settings-json-nan", "API /read_settings", '{"prompt": "x", "guidance_scale": NaN}',
         "error naming `file`: NaN is not JSON", _settings_upload("nan.json", b'{"prompt": "x", "guidance_scale": NaN}'),
         r"file=.* is not allowed: valid JSON"),
    Case("settings-json-big", "API /read_settings", "a 100 kB JSON file", "error naming `file` and the 64 kB limit",
         _settings_upload("big.json", lambda: json.dumps({"prompt": "x" * 100_000}).encode()),
         r"file=.* is not allowed: a settings JSON of at most 65536 bytes"),
    Case("settings-steps-huge", "API /read_settings", '{"prompt": "x", "steps": 10**9}', named("steps"),
         _settings_upload("steps.json", b'{"prompt": "x", "steps": 1000000000}'),
         r"steps=1000000000 is not allowed: an integer in \[1, "),
    Case("settings-works", "API /read_settings", "a settings JSON", "works: the checked document",
         _settings_upload("ok.json", b'{"prompt": "a red circle", "steps": 3, "seed": 5}'), None),
    Case("settings-fill-forged", "page event: fill the form", "the settings document = a JSON list",
         "error naming `settings`", _private_call(_fill_form_event, [["forged"]]),
         r"settings=.*is not allowed: a settings document"),
    Case("chips-forged", "page event: LoRA chips", "chips = ['../../etc/passwd'] (an adapter never loaded)",
         "error naming `lora`, nothing read", _private_call(_chip_event, ["", ["../../etc/passwd"]]),
         r"lora name='\.\./\.\./etc/passwd' is not allowed: a preset name", forbid=r"root:"),
    Case("gallery-select-none", "page event: gallery select", "event_data = null (no selection)",
         "error naming `index` (gr.SelectData would fail on it with a TypeError)",
         _private_call(_gallery_select, [None], None), r"index=None is not allowed: the index of a gallery image"),
    Case("gallery-select-junk", "page event: gallery select", "event_data = {'index': 'x'}", "error naming `index`",
         _private_call(_gallery_select, [None], {"index": "x"}), r"index='x' is not allowed"),
    Case("gallery-select-stale", "page event: gallery select", "event_data = {'index': 10**9}, no batch made",
         "works: nothing picked, the button stays off", _private_call(_gallery_select, [None], {"index": 10**9}), None),
    Case("crop-view-forged-path", "page event: forward tool's crop view", "image = {'path': '/etc/passwd'}",
         "error naming `image`: never read, path not echoed", _private_call(_crop_event, [{"path": "/etc/passwd"}]),
         r"image='<path>' is not allowed: a file uploaded to this app", forbid=r"passwd|root:"),
    Case("terminal-snr-seeds-huge", "HTTP /terminal_snr", "seeds=10**9", named("seeds"),
         raw_data("/terminal_snr", [{"url": data_url(png_bytes(np.full((32, 32, 3), 90, np.uint8)))}, 10**9, "8"]),
         r"seeds=1000000000 is not allowed: an integer in \[16, 2048\]"),
]


# --- hardening round 3 (issue 30): one row per numbered item of the issue; the server-level floods
# and timeouts also run against a real app process in tests/labapp/test_server_limits.py


def _png_text_chunk(kind: bytes, text: bytes) -> bytes:
    import zlib

    data = png_bytes(np.full((16, 16, 3), 90, np.uint8))
    body = b"parameters\0" + (b"\0" + zlib.compress(text, 9) if kind == b"zTXt" else text)
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:33] + chunk + data[33:]


def _one_layer_lora(rank: int):
    def content():
        import torch
        from safetensors.torch import save

        key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_"
        return save({key + "A.weight": torch.zeros(rank, 1), key + "B.weight": torch.zeros(1, rank)})
    return content


def _no_ghost_after_refusals(ctx):
    """Three high-rank uploads refused, then /lora_unload of this session lists its adapters."""
    from gradio_client import handle_file

    for rank in (1_000_000, 500_000, 4000):
        file = handle_file(ctx.path(f"rank{rank}.safetensors", _one_layer_lora(rank)()))
        kind, _ = outcome(lambda f=file: ctx.client.predict(file=f, hub_id="", api_name="/lora_inspect"))
        assert kind == "error"
    return outcome(lambda: ctx.client.predict(name="user-ghost", api_name="/lora_unload"))


def _stalled_hub(ctx):
    """/lora_inspect hub_id='a/b' against a local socket that accepts and never answers."""
    import socket
    import threading

    from huggingface_hub import constants

    from labapp import network

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held, url = [], f"http://127.0.0.1:{server.getsockname()[1]}"
    thread = threading.Thread(target=lambda: [held.append(server.accept()[0]) for _ in range(4)], daemon=True)
    thread.start()
    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE,
             os.environ.get("HF_HUB_OFFLINE"), os.environ.get(network.HUB_DEADLINE_ENV))
    constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE = url, url + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_HUB_OFFLINE = False
    os.environ["HF_HUB_OFFLINE"], os.environ[network.HUB_DEADLINE_ENV] = "0", "3"
    network.install_timeouts(1.0)
    try:
        return outcome(lambda: ctx.client.predict(file=None, hub_id="a/b", api_name="/lora_inspect"))
    finally:
        constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE = saved[:3]
        for name, value in (("HF_HUB_OFFLINE", saved[3]), (network.HUB_DEADLINE_ENV, saved[4])):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        network.install_timeouts()
        server.close()
        for conn in held:
            conn.close()


def _raw_head(head: bytes):
    """A request head sent by hand (a lying Content-Length: no HTTP client sends it)."""
    def run(ctx):
        import socket
        from urllib.parse import urlparse

        port = urlparse(ctx.url).port
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(head)
            answer = b""
            while chunk := conn.recv(65536):  # the server closes after its answer (connection: close)
                answer += chunk
        return ("ok", answer) if answer.startswith(b"HTTP/1.1 2") else ("error", answer.decode("latin-1"))
    return run


def _big_body(ctx):
    import httpx

    body = json.dumps({"data": ["x" * (9 * 2**20)], "fn_index": 0, "session_hash": uuid.uuid4().hex[:11]})
    response = httpx.post(f"{ctx.url}gradio_api/queue/join", content=body, timeout=60,
                          headers={"content-type": "application/json"})
    return ("ok", response.text) if response.status_code == 200 else ("error", f"http {response.status_code}: {response.text}")


def _kinds_over_budget(ctx):
    from labapp import engine as eng
    from labapp import guidance_kinds

    pipe, run = eng.current().pipe, guidance_kinds._run
    pipe.classifier = object()  # past the classifier check (the test engine has none); nothing may run
    guidance_kinds._run = lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model call ran"))
    try:
        return outcome(lambda: guidance_kinds.compare_guidance_kinds(steps=150, adherence_prompts=8))
    finally:
        del pipe.classifier
        guidance_kinds._run = run


def _lora_with_metadata(config: dict):
    def content():
        import torch
        from safetensors.torch import save

        key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_"
        return save({key + "A.weight": torch.zeros(4, 1), key + "B.weight": torch.zeros(1, 4)},
                    metadata={"lora_adapter_metadata": json.dumps(config)})
    return content


def _classifier_at(width: int):
    """/generate's check with guidance_method 'classifier' on a model whose classifier reads 8x8 latents."""
    def run(ctx):
        from labapp import engine as eng
        from labapp import generate as gen

        pipe = eng.current().pipe
        pipe.classifier = type("Classifier", (), {"config": {"sample_size": 8}})()
        side = 8 * eng.current().vae_scale_factor
        try:
            return outcome(lambda: gen.classifier_size_fits(eng.current(), gen.build_request(
                eng.current(), prompt="a", negative_prompt="", scheduler="DDIM", steps=2, guidance_scale=3.0, seed=0,
                width=side * width // 32, height=side, guidance_method="classifier")))
        finally:
            del pipe.classifier
    return run


def _example_event(ctx):
    """gr.Examples' own event on the Generate tab (its input is a gr.Dataset)."""
    import httpx

    config = httpx.get(f"{ctx.url}config", timeout=30).json()
    ids = [c["id"] for c in config["components"] if c.get("type") == "dataset"]
    for index, dep in enumerate(config["dependencies"]):
        if dep.get("inputs") and set(dep["inputs"]) <= set(ids) and dep.get("api_name") == "load_example":
            return dep.get("id", index), dep["inputs"][0]
    raise LookupError("no gr.Examples event")


def _slot_nan_weight(ctx):
    """The mixer's slots -> blend text event, the first slot's weight NaN (raw JSON: NaN passes)."""
    import httpx

    from testkit.hostile_helpers import queue_call

    config = httpx.get(f"{ctx.url}config", timeout=30).json()
    dep_index, dep = next((dep.get("id", i), dep) for i, dep in enumerate(config["dependencies"])
                          if str(dep.get("api_name", "")).startswith("slots_to_spec"))
    slots = len(dep["inputs"]) // 8
    data = ["outline", float("nan"), None, 1.0, 1.0, 1.0, 0.0, 1.0] + ["(none)", 1.0, None, 1.0, 1.0, 1.0, 0.0, 1.0] * (slots - 1)
    msg = queue_call(ctx.url, dep_index, data, dep["targets"][0][0] if dep.get("targets") else None)
    return ("ok", msg) if msg.get("success") else ("error", json.dumps(msg.get("output", msg)))


def _upload_quota(ctx):
    from labapp.server_limits import UploadQuota

    quota = UploadQuota(per_client=3 * 2**20, held=2**40)
    for _ in range(3):
        assert quota.refusal("198.51.100.7", 2**20) is None
    refusal = quota.refusal("198.51.100.7", 2**20)
    return ("error", refusal) if refusal else ("ok", None)


def _evicted_adapter(ctx):
    from labapp.lora_user_ui import BlendNames
    from pipelines.lora import Blend, LoraBlender
    from pipelines.lora.user_store import UserAdapterStore
    from testkit.lora_factory import random_lora, save_diffusers_lora

    store = UserAdapterStore(LoraBlender(ctx.pipe), max_adapters=2, max_per_session=1)
    paths = []
    for seed in (1, 2):
        folder = os.path.join(ctx.tmp, f"evict{seed}-{uuid.uuid4().hex[:6]}")
        os.makedirs(folder)
        paths.append(save_diffusers_lora(random_lora(ctx.pipe.unet, seed=seed), folder))
    first = store.add("a", paths[0], {"kind": "upload"}).name
    store.add("a", paths[1], {"kind": "upload"})
    names = BlendNames(store.names("a"))
    names.unloaded = store.evicted("a")
    return outcome(lambda: Blend.parse(f"{first}:1", names))


CASES += [
    Case("settings-a1111-redos", "API /read_settings", "a 1.2 kB PNG whose zTXt `parameters` inflates to 1 MB "
         "(`Steps: 4, ` + 'a' * 2**20)", "error naming `file` and the 64 kB cap, at once (the regex took hours)",
         _settings_upload("redos.png", lambda: _png_text_chunk(b"zTXt", b"x\nSteps: 4, " + b"a" * 2**20)),
         r"file=.* is not allowed: a settings text of at most 65536 bytes"),
    Case("settings-a1111-long-text", "API /read_settings", "a PNG with a 100 kB tEXt `parameters`",
         "error naming `file` and the 64 kB cap", _settings_upload(
             "long.png", lambda: _png_text_chunk(b"tEXt", b"x\nSteps: 4, " + b"a" * 100_000)),
         r"file=.* is not allowed: a settings text of at most 65536 bytes"),
    Case("settings-a1111-euler-a-karras", "API /read_settings", "an A1111 1.9 PNG: `Sampler: Euler a, Schedule type: Karras`",
         "works: scheduler 'Euler a', with a note (this app has no 'Euler a Karras')", _settings_upload(
             "karras.png", lambda: _png_text_chunk(b"tEXt", b"a red circle\nSteps: 4, Sampler: Euler a, "
                                                            b"Schedule type: Karras, Seed: 3")), None),
    Case("settings-steps-arabic-digit", "API /read_settings", 'settings JSON {"steps": "\u0664"} (Arabic-Indic 4)',
         "error naming `steps`: ASCII digits (int() read it as 4)",
         _settings_upload("digit.json", '{"prompt": "x", "steps": "\u0664"}'.encode()),
         r"steps='.' is not allowed: a number written with ASCII digits"),
    Case("settings-steps-underscore", "API /read_settings", 'settings JSON {"steps": "4_0"}',
         "error naming `steps` (int() read it as 40)", _settings_upload("under.json", b'{"prompt": "x", "steps": "4_0"}'),
         r"steps='4_0' is not allowed: a number written with ASCII digits"),
    Case("lora-hub-stalled", "API /lora_inspect", "hub_id='a/b', the Hub a local socket that never answers "
         "(1 s timeout, 3 s deadline here; 15 s / 300 s by default)",
         "one line naming the Hub, within the deadline, outside the pipeline slot (it held the slot 27 min)",
         _stalled_hub, r"Hub LoRA 'a/b': the Hub \(http://127\.0\.0\.1:\d+\) (did not answer within 3 s|could not be reached)",
         forbid=r"Traceback|\n.*\n"),
    Case("lora-hub-pickle-name", "API /lora_inspect", "hub_id='a/b/c.bin'", "error naming the whole Hub file: a pickle",
         lambda ctx: outcome(lambda: ctx.client.predict(file=None, hub_id="a/b/c.bin", api_name="/lora_inspect")),
         r"Hub file 'a/b/c\.bin' is a pickle checkpoint"),
    Case("lora-rank-4000", "API /lora_inspect", "a one-layer LoRA of rank 4000 (32 kB)",
         "refused from the header naming the rank and the cap 1024 (rank 8000 cost +1.4 GB in the inspector)",
         _lora_upload("rank4000.safetensors", _one_layer_lora(4000)), r"has rank 4000 .*at most rank 1024"),
    Case("lora-rank-1m", "API /lora_inspect", "a one-layer LoRA of rank 1,000,000 (8 MB)",
         "refused from the header naming the cap (was: `tried to allocate 8000000000000 bytes`)",
         _lora_upload("rank1m.safetensors", _one_layer_lora(1_000_000)), r"has rank 1000000 .*at most rank 1024",
         forbid=r"allocate"),
    Case("lora-no-ghost", "API /lora_inspect + /lora_unload", "three refused high-rank uploads, then /lora_unload",
         "nothing was added: the session lists no adapter (a failed inspection used to leave one pinned)",
         _no_ghost_after_refusals, r"one of this session's user adapters \[\]"),
    Case("lora-evicted-named", "function UserAdapterStore + Blend.parse", "session a's adapter evicted by its own "
         "second upload (quota 1), then named in a blend", "error: your adapter ... was unloaded to make room; load it again",
         _evicted_adapter, r"your adapter user-\S+ was unloaded to make room \(at most 1 user adapters per session\); "
                           r"load it again"),
    Case("body-over-limit", "HTTP /gradio_api/queue/join", "a 9 MB JSON body", "HTTP 413 naming the 8 MB limit, before "
         "the JSON is parsed", _big_body, r"http 413: .*Content-Length=\d+ is not allowed: a request body of at most 8388608 bytes"),
    Case("content-length-huge", "HTTP /gradio_api/queue/join", "`Content-Length: 10**12` and no body",
         "HTTP 413 at once (it was waited on for >= 90 s)", _raw_head(
             b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 1000000000000\r\n\r\n"), r"HTTP/1.1 413 .*Content-Length=1000000000000 is not allowed"),
    Case("kinds-over-budget", "function compare_guidance_kinds", "steps=150, 8 adherence prompts (14-27 min projected)",
         "refused up front naming the budget and the cost; no model call runs", _kinds_over_budget,
         r"compare_guidance_kinds: this request needs \d+ model calls .* the budget is 3600"),
    Case("upload-quota", "function UploadQuota (server_limits)", "a fourth 1 MB upload from one address, quota 3 MB",
         "refused naming the per-client quota (4 x 250 MB used to be kept an hour)", _upload_quota,
         r"upload of 1048576 bytes is not allowed: at most 3 MB of uploads per client"),
    Case("lora-use-dora", "API /lora_inspect", "lora_adapter_metadata {'unet.use_dora': true}",
         "refused at upload naming the field (every later /generate failed with a device error)",
         _lora_upload("dora.safetensors", _lora_with_metadata({"unet.r": 4, "unet.lora_alpha": 4, "unet.use_dora": True})),
         r"lora_adapter_metadata field 'unet\.use_dora'=True is not allowed: DoRA adapters are not applied here"),
    Case("lora-alpha-1e30", "API /lora_inspect", "lora_adapter_metadata {'unet.lora_alpha': 1e30}",
         "refused naming the field and the range", _lora_upload("alpha.safetensors", _lora_with_metadata(
             {"unet.r": 4, "unet.lora_alpha": 1e30})), r"'unet\.lora_alpha'=1e\+30 is not allowed: a finite number in"),
    Case("lora-metadata-unknown", "API /lora_inspect", "lora_adapter_metadata {'unet.bogus': 1}",
         "refused naming the field (was: `LoraConfig class could not be instantiated`)",
         _lora_upload("bogus.safetensors", _lora_with_metadata({"unet.bogus": 1})),
         r"'unet\.bogus' is not a LoraConfig field"),
    Case("classifier-other-size", "function generate (build_request)", "guidance_method='classifier', width 2x the "
         "classifier's size", "error naming `width` and the one size the classifier reads (was: a matmul shape error)",
         _classifier_at(64), r"width=\d+ is not allowed: \d+ with guidance_method 'classifier'"),
    Case("settings-lora-weight-text", "API /read_settings", 'settings JSON lora [{"name": "outline", "weight": "x"}]',
         "error naming `lora[outline].weight` (was: Unknown format code 'g')", _settings_upload(
             "w.json", b'{"prompt": "x", "lora": [{"name": "outline", "weight": "x"}]}'), r"lora\[outline\]\.weight"),
    Case("settings-lora-name-list", "API /read_settings", 'settings JSON lora [{"name": ["outline"]}]',
         "error naming `lora` (was: unhashable type: 'list')", _settings_upload(
             "n.json", b'{"prompt": "x", "lora": [{"name": ["outline"]}]}'), r"lora=.* is not allowed",
         forbid=r"unhashable"),
    Case("lora-weight-arabic-digit", "API /generate", "lora='outline:\u0661' (Arabic-Indic 1)",
         "error naming `lora[outline].weight`: ASCII digits (float() read it as 1.0)",
         api("/generate", lora="outline:\u0661"), r"lora\[outline\]\.weight='.' is not allowed: a number written with ASCII"),
    Case("lora-block-weight-huge", "API /generate", 'lora=[{"name": "outline", "block_weights": {"down": 10**400}}]',
         "error naming `lora[outline].block_weights` and the range (was: int too large to convert to float)",
         api("/generate", lora=json.dumps([{"name": "outline", "block_weights": {"down": 10**400}}])),
         r"lora\[outline\]\.block_weights=.* is not allowed: numbers in \[-2, 2\]", forbid=r"too large"),
    Case("terminal-snr-block-nan", "HTTP /terminal_snr", "block=NaN", "error naming `block` (was: cannot convert float "
         "NaN to integer)", raw_data("/terminal_snr", [{"url": data_url(png_bytes(np.full((32, 32, 3), 90, np.uint8)))}, 64,
                                                       float("nan")]), r"block=nan is not allowed: one of"),
    Case("terminal-snr-block-fraction", "HTTP /terminal_snr", "block=2.9", "error naming `block` (was: truncated to 2)",
         raw_data("/terminal_snr", [{"url": data_url(png_bytes(np.full((32, 32, 3), 90, np.uint8)))}, 64, 2.9]),
         r"block=2\.9 is not allowed: one of"),
    Case("terminal-snr-block-true", "HTTP /terminal_snr", "block=true", "error naming `block` as sent (was shown as '1')",
         raw_data("/terminal_snr", [{"url": data_url(png_bytes(np.full((32, 32, 3), 90, np.uint8)))}, 64, True]),
         r"block=True is not allowed: one of"),
    Case("settings-relative-path", "HTTP /read_settings", "file = FileData (with `meta`), path 'app.py'",
         "refused naming the path as sent, not the server's resolved path (was: Cannot move /.../repo/app.py ...)",
         raw_data("/read_settings", [file_data("app.py")]), r"Cannot move app\.py to the gradio cache dir",
         forbid=r"/app\.py|" + ROOT.replace("/", "\\/")),
    Case("inpaint-mask-white-64", "HTTP /inpaint", "an all-white 64x64 mask for a 32x32 image",
         "error naming `mask` with the size sent (was: the resized 32x32)",
         raw_inpaint(mask=lambda: {"url": data_url(png_bytes(np.full((64, 64), 255, np.uint8)))}),
         r"mask='<64x64 px, all white>' is not allowed"),
    Case("example-index-negative", "page event: gr.Examples", "the example row index = -1",
         "error naming `index` (was: the last row, Python indexing)", _private_call(_example_event, [-1]),
         r"index=-1 is not allowed: an example row"),
    Case("lora-slot-weight-nan", "page event: LoRA mixer slots", "the first slot's weight = NaN",
         "error naming the slot's weight (was: 'outline:nan' written into the blend text)", _slot_nan_weight,
         r"lora slot outline weight=nan is not allowed: a finite number"),
    Case("sweep-scales-flood", "API /cfg_sweep", "scales = '1 ' * 1,000,000 (2 MB)",
         "error naming `scales` from the text's length, before splitting (+580 MB before)",
         api("/cfg_sweep", scales="1 " * 1_000_000), r"scales='1 1 1 .*\(2000000 characters\) is not allowed: .*at most 256 characters"),
    # --- issue 30 item 15: Gradio's data-model refusals (pydantic's text) now name the parameter
    Case("settings-no-meta", "HTTP /read_settings", "file = FileData without `meta`, path '/etc/passwd'",
         "error naming `file` and what is taken (was \" | 1 validation error for FileData ... 'meta' field\"), never read",
         raw_data("/read_settings", [{"path": "/etc/passwd"}]), r"file='<an object with keys path>' " + FILE_RE,
         forbid=r"root:|passwd|validation error|pydantic"),
    Case("settings-data-url", "HTTP /read_settings", "file = {url: a data: URL}, no `meta`",
         "error naming `file`: data: URLs are not taken for a file (was pydantic's FileData text)",
         raw_data("/read_settings", [{"url": data_url(png_bytes(np.zeros((8, 8, 3), np.uint8)))}]),
         r"file='<an object with keys url>' " + FILE_RE + r".*data: URLs and bare strings are not taken here",
         forbid=r"validation error|base64,iVBOR"),
    Case("settings-string", "HTTP /read_settings", "file = the string '/etc/passwd'",
         "error naming `file` and the value (was pydantic's FileData text), never read",
         raw_data("/read_settings", ["/etc/passwd"]), r"file='/etc/passwd' " + FILE_RE, forbid=r"root:|validation error"),
    Case("lora-inspect-string", "HTTP /lora_inspect", "file = the string 'x.safetensors'",
         "error naming `file` and the value (was pydantic's FileData text)",
         raw_data("/lora_inspect", ["x.safetensors", ""]), r"file='x\.safetensors' " + FILE_RE, forbid=r"validation error"),
    Case("img2img-image-string", "HTTP /img2img", "image = the string '/etc/passwd'",
         "error naming `image` and the shapes taken (was \" | 1 validation error for ImageData\"), never opened",
         raw_data("/img2img", ["/etc/passwd", "a", "", 0.5, "DDIM", 2, 3.0, 0]),
         r"image='/etc/passwd' is not allowed: an image: an uploaded file", forbid=r"root:|validation error"),
    Case("img2img-image-number", "HTTP /img2img", "image = 5", "error naming `image` and the value (was pydantic's ImageData text)",
         raw_data("/img2img", [5, "a", "", 0.5, "DDIM", 2, 3.0, 0]),
         r"image=5 is not allowed: an image: an uploaded file", forbid=r"validation error"),
    Case("inpaint-drawing-number", "HTTP /inpaint", "mask=None, mask_drawing = 5",
         "error naming `mask_drawing` and the value (was pydantic's EditorData text)", raw_inpaint(mask=None, mask_drawing=5),
         r"mask_drawing=5 is not allowed: an ImageEditor value", forbid=r"validation error"),
]



def _unrelated_safetensors() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"model.layers.0.weight": torch.zeros(3, 3)})


def _all_schedulers(ctx):
    from pipelines.schedulers import scheduler_names

    return outcome(lambda: ctx.client.predict(**(COMPARE_DEFAULTS | dict(schedulers=scheduler_names())),
                                              api_name="/compare_schedulers"))


CASES = [Case(c.id, c.where, c.input, c.expected, _all_schedulers, c.match) if c.run is None else c for c in CASES]

# Cases where another module falls short of the contract; each reason names the module and the fix.
KNOWN_FAILURES: dict[str, str] = {}


# ----------------------------------------------------------------------------- issue 32: /attention_maps, emphasis syntax

ATTENTION_DEFAULTS = dict(prompt="a red circle", negative_prompt="", scheduler="DDIM", steps=2, guidance_scale=3.0,
                          seed=0, word_index=0, step=-1, lora="")


def _attention(**override):
    def run(ctx):
        return outcome(lambda: ctx.client.predict(**(ATTENTION_DEFAULTS | override), api_name="/attention_maps"))
    return run


CASES += [
    Case("attention-word-huge", "API /attention_maps", "word_index=10**12", "error naming `word_index`: the prompt's words",
         _attention(word_index=10**12), r"word_index=1000000000000 is not allowed: an integer in \[0, 2\]"),
    Case("attention-word-negative", "API /attention_maps", "word_index=-1", "error naming `word_index`",
         _attention(word_index=-1), r"word_index=-1 is not allowed: an integer in \[0, 2\]"),
    Case("attention-word-text", "API /attention_maps", 'word_index="red"', "error naming `word_index`: an index, not a word",
         _attention(word_index="red"), r"word_index='red' is not allowed"),
    Case("attention-step-huge", "API /attention_maps", "step=10**9 with steps=2", "error naming `step`: -1 to steps - 1",
         _attention(step=10**9), r"step=1000000000 is not allowed: an integer in \[-1, 1\]"),
    Case("attention-prompt-empty", "API /attention_maps", "prompt='' (no word to map)", "error naming `prompt`: at least one word",
         _attention(prompt=""), r"prompt='' is not allowed: at least one word"),
    Case("attention-emphasis-unclosed", "API /attention_maps", "prompt='a (red circle' (unbalanced)",
         "error naming `prompt`: where the bracket opens", _attention(prompt="a (red circle"),
         r"prompt='a \(red circle' is not allowed: '\(' at character 2 is never closed"),
    Case("attention-emphasis-stray-close", "API /attention_maps", "prompt='a red] circle'",
         "error naming `prompt`: the unmatched bracket", _attention(prompt="a red] circle"),
         r"prompt='a red\] circle' is not allowed: '\]' at character 5 has no matching '\['"),
    Case("attention-emphasis-weight-text", "API /attention_maps", "prompt='(red:abc) circle'",
         "error naming `prompt`: the weight is not a number", _attention(prompt="(red:abc) circle"),
         r"prompt=.* is not allowed: the weight 'abc' at character 4 is not a number"),
    Case("attention-emphasis-weight-huge", "API /attention_maps", "prompt='(red:1e999)' (inf)",
         "error naming `prompt`: not a number", _attention(prompt="(red:1e999)"), r"prompt=.* is not allowed: .*not a number"),
    Case("attention-emphasis-nesting", "API /attention_maps", "prompt = '(' * 500 + 'red' + ')' * 500",
         "error naming `prompt`: the weight the nesting comes to, allowed 0 to 10",
         _attention(prompt="(" * 500 + "red" + ")" * 500), r"prompt=.* is not allowed: 'red' comes to weight .* allowed 0 to 10"),
    Case("generate-emphasis-unclosed", "API /generate", "negative_prompt='[blurry' (unbalanced)",
         "error naming `negative_prompt`", api("/generate", negative_prompt="[blurry"),
         r"negative_prompt='\[blurry' is not allowed: '\[' at character 0 is never closed"),
    Case("generate-emphasis-escaped", "API /generate", r"prompt='a \(red\) circle' (literal brackets)",
         "works: an image", api("/generate", prompt=r"a \(red\) circle"), None),
]
