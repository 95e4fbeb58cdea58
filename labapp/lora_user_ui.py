"""Bring your own LoRA in the app: /lora_inspect (upload or Hub id), /lora_unload, and the names a
session may put in a blend. The checks and the math live in pipelines/lora/user*.py and
pipelines/lora/inspector.py; this module turns requests into calls and reports into text and a plot.

A user adapter belongs to the Gradio session that loaded it (``gr.Request.session_hash``: one
browser tab, or one ``gradio_client.Client``). Handlers that parse blends (``generate``,
``lora_grid``, the chip line) get the session's names from ``session_names``, which reads the
request Gradio sets for the running event (``gradio.context.LocalContext.request``), so their
signatures stay as they are.

Limits (flags and environment variables of app.py): the upload size (``--max-lora-mb``,
``DIFFUSION_LAB_MAX_LORA_MB``, default 256) and the number of user adapters on the server
(``--max-user-loras``, ``DIFFUSION_LAB_MAX_USER_LORAS``, default 8), at most 2 per session
(``DIFFUSION_LAB_MAX_USER_LORAS_PER_SESSION``); eviction order in pipelines/lora/user_store.py.
/lora_inspect runs outside the pipeline slot (``FETCH_SLOT``): Hub calls have timeouts
(labapp/network.py), and the load waits for plain runs (``Engine.gate``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import weakref

import gradio as gr
import numpy as np

from . import engine as eng
from . import network, uploads
from . import validation as check

MAX_LORA_MB_ENV = "DIFFUSION_LAB_MAX_LORA_MB"
MAX_USER_LORAS_ENV = "DIFFUSION_LAB_MAX_USER_LORAS"
MAX_PER_SESSION_ENV = "DIFFUSION_LAB_MAX_USER_LORAS_PER_SESSION"  # default 2 (pipelines/lora/user_store.py)
DEFAULT_MAX_LORA_MB = 256
DEFAULT_MAX_USER_LORAS = 8
MAX_HUB_ID_CHARS = 300
# /lora_inspect's own concurrency group: a Hub fetch or a 256 MB upload check never holds the pipeline
# slot (issue 30); the load itself waits for the pipeline (the blender's lock, Engine.gate)
FETCH_SLOT = dict(concurrency_id="user_lora", concurrency_limit=1)

_limits: dict[str, int] = {}
_stores: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # blender -> UserAdapterStore


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be a positive integer") from None
    if value < 1:
        raise ValueError(f"{name}={raw!r} must be a positive integer")
    return value


def configure(max_lora_mb: int | None = None, max_user_loras: int | None = None) -> None:
    """Set the limits (app.py flags); None: the environment variable, else the default."""
    for name, value in (("max_lora_mb", max_lora_mb), ("max_user_loras", max_user_loras)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} must be a positive integer")
    _limits["mb"] = max_lora_mb or _env_int(MAX_LORA_MB_ENV, DEFAULT_MAX_LORA_MB)
    _limits["count"] = max_user_loras or _env_int(MAX_USER_LORAS_ENV, DEFAULT_MAX_USER_LORAS)
    _stores.clear()  # stores are made again with the new limits (their adapters stay loaded in the blender)


def max_upload_bytes() -> int:
    if "mb" not in _limits:
        configure()
    return _limits["mb"] * 2**20


def max_user_loras() -> int:
    if "count" not in _limits:
        configure()
    return _limits["count"]


def store(engine: eng.Engine | None = None):
    """The user-adapter store of the engine's blender (None when the model takes no LoRA)."""
    from pipelines.lora.user_store import UserAdapterStore

    engine = engine or eng.current()
    if engine.blender is None:
        return None
    found = _stores.get(engine.blender)
    if found is None:
        # fp32 weights on CPU: the upload limit times 2 (fp16 files double) per adapter, N adapters
        from pipelines.lora.user_store import DEFAULT_MAX_PER_SESSION

        found = UserAdapterStore(engine.blender, max_adapters=max_user_loras(),
                                 max_bytes=max_user_loras() * 2 * max_upload_bytes(),
                                 reserved_names=[p.id for p in engine.lora_presets()],
                                 max_per_session=_env_int(MAX_PER_SESSION_ENV, DEFAULT_MAX_PER_SESSION))
        _stores[engine.blender] = found
    return found


def session_of(request=None) -> str | None:
    """The Gradio session of the running event (None outside an event: direct Python calls)."""
    if request is None:
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None) or None


def session_names(engine: eng.Engine | None = None, request=None) -> list[str]:
    """User adapters the current session may name in a blend (its own, nobody else's)."""
    found = store(engine)
    return found.names(session_of(request)) if found is not None else []


# ------------------------------------------------------------------------------ handlers


def lora_inspect(file, hub_id, request: gr.Request = None):
    """Load a user's LoRA (an uploaded .safetensors, or a Hub id) for this session and inspect it.

    Returns (adapter name, summary markdown, report JSON, heat-map figure).
    """
    engine = eng.current()
    found = store(engine)
    if found is None:
        raise gr.Error(f"model {engine.model_id!r} takes no LoRA adapters", title="No LoRA support")
    session = session_of(request)
    if session is None:
        raise gr.Error("a user LoRA belongs to a session: call this through the app or gradio_client",
                       title="No session")
    hub_id = check.text("hub_id", hub_id, MAX_HUB_ID_CHARS).strip()
    if file is not None and hub_id:
        raise check.fail("hub_id", hub_id, "empty when a file is uploaded (give one source: a file or a Hub id)")
    if file is None and not hub_id:
        raise check.fail("file", None, "a .safetensors LoRA file, or a Hub id in hub_id (owner/name[/file])")
    try:
        if file is not None:
            path, filename = uploads.uploaded_file("file", file, max_upload_bytes())
            source = {"kind": "upload", "filename": filename}
        else:
            from pipelines.lora.hub import resolve_hub_lora

            network.install_timeouts()
            hub = network.within_deadline(f"Hub LoRA {hub_id!r}", resolve_hub_lora, hub_id, max_bytes=max_upload_bytes())
            path, filename = hub.path, os.path.basename(hub.filename)
            source = {"kind": "hub", "repo": hub.repo, "file": hub.filename, "revision": hub.revision,
                      "filename": filename}
        if not filename.lower().endswith(".safetensors"):
            from pipelines.lora.files import refuse_unsafe_name

            refuse_unsafe_name(filename, "LoRA file")
        # inspected before it is added; a failure anywhere unloads it (pipelines/lora/user_store.py)
        # the load waits for plain runs to end (Engine.gate): peft injects layers into the live UNet
        adapter = found.add(session, path, source, check=lambda loaded: inspection(engine, loaded),
                            exclusive=engine.gate.change)
        report = adapter.report
    except ValueError as error:
        raise gr.Error(_no_paths(str(error), path if "path" in locals() else None), title="LoRA refused") from None
    except (RuntimeError, MemoryError) as error:  # torch's allocation failures and the like: one line, no path
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise gr.Error(_no_paths(f"LoRA file {locals().get('filename', '?')!r} could not be loaded: {first}",
                                 path if "path" in locals() else None), title="LoRA refused") from None
    finally:
        if file is not None and "path" in locals():
            uploads.discard_upload(path)  # read: an upload is not kept (issue 30, the temp dir quota)
    return adapter.name, summary(report), report, heat_figure(report)


def lora_unload(name, request: gr.Request = None) -> str:
    found = store()
    name = check.text("name", name, 100)
    session = session_of(request)
    mine = found.names(session) if found is not None else []
    if name not in mine:
        raise check.fail("name", name, f"one of this session's user adapters {mine}")
    found.remove(session, name)
    return f"Unloaded `{name}`; this session's user adapters: {found.names(session) or 'none'}."


def forget_session(request: gr.Request = None) -> None:
    """Unload the closing session's adapters (Blocks.unload)."""
    found, session = store(), session_of(request)
    if found is not None and session is not None:
        found.forget_session(session)


def add_to_blend(spec: str, name: str) -> str:
    """The mixer's blend text with ``name:1`` added (UI only; the blend is checked when it runs)."""
    spec = (spec or "").strip()
    if not name:
        return spec
    if spec.startswith("["):
        try:
            items = json.loads(spec)
        except ValueError:
            return spec
        if isinstance(items, list) and not any(isinstance(i, dict) and i.get("name") == name for i in items):
            items.append({"name": name, "weight": 1.0})
        return json.dumps(items)
    if any(part.split(":")[0].strip() == name for part in spec.split(",")):
        return spec
    return f"{spec}, {name}:1" if spec else f"{name}:1"


# ------------------------------------------------------------------------------ views


def inspection(engine: eng.Engine, adapter) -> dict:
    """The JSON report: the file, its source and the per-layer inspection (pipelines.lora.inspector)."""
    from pipelines.lora.inspector import inspect_adapter

    with engine.blender.holding() as pipe:
        report = inspect_adapter(pipe, adapter.name)
    info = adapter.file
    return {"name": adapter.name, "source": adapter.source,
            "file": {"format": info.format, "sha256": info.sha256, "size_bytes": info.size_bytes,
                     "tensors": info.num_tensors, "dtypes": list(info.dtypes), "base_model": info.base_model,
                     "components": list(info.components), "metadata": _short(info.metadata)},
            "memory_bytes": adapter.nbytes, **report}


def _short(metadata: dict) -> dict:
    return {k[:80]: (v if len(v) <= 300 else v[:300] + f"... ({len(v)} characters)") for k, v in metadata.items()}


def _no_paths(message: str, path: str | None) -> str:
    if path:
        message = message.replace(str(path), os.path.basename(str(path)))
    return message.replace(uploads.temp_dir(), "<uploads>")


def summary(report: dict) -> str:
    file, params = report["file"], report["parameters"]
    source = report["source"]
    where = (f"Hub `{source['repo']}/{source['file']}` at revision `{source['revision']}`" if source["kind"] == "hub"
             else f"upload `{source['filename']}`")
    rows = [f"**`{report['name']}`** from {where}: {file['format']} format, {report['num_layers']} layers "
            f"({', '.join(file['components'])}), rank {_list(report['ranks'])}, alpha {_list(report['alphas'])}, "
            f"alpha/r {_list(report['scales'])}.",
            f"Parameters: {params['adapter_total']:,} ({params['percent_of_base']:.2f}% of the base model's "
            f"{params['base_total']:,}); {report['memory_bytes'] / 2**20:.1f} MB in memory. "
            f"SHA-256 `{file['sha256']}`." + (f" Made for: {file['base_model']}." if file["base_model"] else ""),
            "", "| block | " + " | ".join(report["heatmap"]["kinds"]) + " |",
            "|---|" + "---|" * len(report["heatmap"]["kinds"])]
    for block in report["heatmap"]["blocks"]:
        counts = report["counts"].get(block, {})
        if counts:
            rows.append(f"| {block} | " + " | ".join(str(counts.get(k, "")) for k in report["heatmap"]["kinds"]) + " |")
    rows.append("\nAdd it to the blend with **Add to blend** (at weight 1; the LoRA mixer's slots change it), or "
                f"name it in a blend with a weight: `{report['name']}:0.8`.")
    return "\n".join(rows)


def _list(values) -> str:
    return ", ".join(f"{v:g}" for v in values[:6]) + (" ..." if len(values) > 6 else "")


def heat_figure(report: dict):
    """||ΔW||_F per (block, module kind), the numbers pipelines.lora.inspector computed."""
    from .plots import _figure, _style

    heat = report["heatmap"]
    values = np.array([[np.nan if v is None else v for v in row] for row in heat["values"]], dtype=float)
    fig, (ax,) = _figure(6.4, 0.9 + 0.3 * len(heat["blocks"]))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="magma", aspect="auto")
    ax.set_xticks(range(len(heat["kinds"])), heat["kinds"], rotation=30, ha="right")
    ax.set_yticks(range(len(heat["blocks"])), heat["blocks"])
    _style(ax, f"||(alpha/r) B A||_F of {report['name']} per block (empty: no layer)")
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="Frobenius norm")
    return fig


def blend_names(engine: eng.Engine) -> list[str]:
    """Names the current session may put in a blend: the model's presets and its own user adapters."""
    return [p.id for p in engine.lora_presets()] + session_names(engine)


class BlendNames(tuple):
    """The names a session may put in a blend, and (``unloaded``) its adapters evicted to make room,
    each with the sentence Blend.parse answers when one is named."""

    unloaded: dict = {}


def limits(engine: eng.Engine):
    """The model's request limits (pipelines.request.RequestLimits) with this session's blend names:
    what Blend.parse accepts for the current session."""
    names = BlendNames(blend_names(engine))
    found = store(engine)
    names.unloaded = found.evicted(session_of()) if found is not None else {}
    return dataclasses.replace(engine.limits(), presets=names)


def used(request):
    """Mark the session's user adapters in a request's blend (a GenerationRequest, a Blend or a parsed
    list of dicts) as just used (LRU order); returns what it was given."""
    blend = getattr(request, "blend", request)
    names = [a.name for a in blend.adapters] if hasattr(blend, "adapters") else [a["name"] for a in blend]
    found = store()
    if found is not None and names:
        found.touch(session_of(), names)
    return request
