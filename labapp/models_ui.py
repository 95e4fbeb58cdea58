"""The Model dropdown: which registry models can load on this machine, and a switch that reverts.

A Hub model loads only when it is in the local Hugging Face cache or the Hub can be reached; an
offline CPU machine (this project's test machines) has only the embedded model. The dropdown says
so beside each name instead of letting a pick end in a long Hub exception, and a failed switch puts
the dropdown back on the model still loaded, with one short sentence on the status line.
"""
from __future__ import annotations

import os

import gradio as gr

from pipelines.models import model_names, model_source, model_spec

from . import engine as eng
from . import validation as check


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def unavailable_reason(model_id: str, cuda: bool) -> str:
    """Why ``model_id`` will not load (or load slowly) here, in a few words; "" when it loads as is."""
    spec = model_spec(model_id)
    if spec.local:
        found = os.path.isfile(os.path.join(model_source(model_id), "model_index.json"))
        return "" if found else "not in this checkout"
    if _cached(spec.source):
        return "" if cuda else "cached; slow on CPU"
    if _offline():
        return "not downloaded, and HF_HUB_OFFLINE is set"
    return "downloads ~2-5 GB from the Hub" + ("" if cuda else "; slow on CPU")


def choices(cuda: bool, loaded: str | None = None) -> list[tuple[str, str]]:
    """(label, id) pairs for the dropdown: the id, and why it may not load here; ``loaded`` (the model
    running now) first when it is not a registry model (components a test or benchmark injected)."""
    out = [(loaded, loaded)] if loaded and loaded not in model_names() else []
    for model_id in model_names():
        why = unavailable_reason(model_id, cuda)
        out.append((f"{model_id} ({why})" if why else model_id, model_id))
    return out


def short_error(error: Exception) -> str:
    """A failed load in one clause, without the Hub's multi-line exception text."""
    text = str(error)
    if isinstance(error, (OSError, ConnectionError)) and ("cached" in text or "connect" in text.lower()
                                                          or "offline" in text.lower()):
        return "it is not in the local cache and the Hub cannot be reached"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first if len(first) <= 120 else first[:117] + "..."


def switch_model(model_id):
    """Load another registry model for everyone: (status line, dropdown value). On failure the
    dropdown goes back to the model still loaded and the status line says why, in one sentence."""
    current = eng.current()
    model_id = check.text("model", model_id, 200)
    if model_id not in model_names():  # only a forged call gets here: the dropdown offers registry ids only
        raise gr.Error(f"model={model_id!r} could not be loaded (not a registered model; valid ids: {model_names()}); "
                       f"still using {current.model_id!r}.")
    if model_id == current.model_id:
        return f"Model `{model_id}` is already loaded.", gr.update(value=model_id)
    try:
        eng.install(eng.load_engine(model_id, "picked in the UI", clip_guidance_model=current.clip_request))
    except Exception as error:  # offline, not cached, out of memory: keep the current model
        eng.log.warning("model switch to %r failed: %s", model_id, short_error(error))
        return (f"**Could not load `{model_id}`:** {short_error(error)}. Still using `{current.model_id}`.",
                gr.update(value=current.model_id))
    return f"Loaded `{model_id}`: reload the page to update sizes and LoRA presets.", gr.update(value=model_id)
