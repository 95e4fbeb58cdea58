"""Where LoRA weights come from, and the rule that they come only from safetensors files.

A pickled checkpoint (.bin, .pt, .ckpt, .pth, .pkl) can run code when unpickled, so it is
refused by name before anything is read, and a file named .safetensors whose header is not a
safetensors header is refused after reading its first bytes (never unpickled: nothing here
calls torch.load). Hub files are fetched with ``hf_hub_download`` (offline: cache only).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
REPO_ROOT = Path(__file__).resolve().parents[2]  # pipelines/lora/files.py -> the repository


def hub_offline() -> bool:
    """True when huggingface_hub is told not to use the network (HF_HUB_OFFLINE=1)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def refuse_unsafe_name(filename: str | os.PathLike, what: str = "LoRA weights") -> None:
    """Raise ValueError unless ``filename`` ends in .safetensors (checked before any read)."""
    name = os.fspath(filename)
    if name.lower().endswith(SAFETENSORS_SUFFIX):
        return
    kind = "a pickle checkpoint" if name.lower().endswith(PICKLE_SUFFIXES) else "not a .safetensors file"
    raise ValueError(f"{what} {name!r} is {kind}; only .safetensors files are loaded "
                     "(pickled weights can run code when read; convert them with safetensors first)")


def check_safetensors_header(path: str | os.PathLike) -> None:
    """Raise ValueError unless the file starts like a safetensors file (8-byte size + JSON header).

    Reads at most the header; catches a pickle or a zip (torch.save) renamed to .safetensors.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path!r} is not a safetensors file: only {size} bytes")
        (header_len,) = struct.unpack("<Q", head)
        if not 2 <= header_len <= size - 8:
            raise ValueError(f"{path!r} is not a safetensors file (header length {header_len} does not fit "
                             f"a {size}-byte file; a pickle or torch.save zip renamed .safetensors?)")
        header = f.read(header_len)
    try:
        meta = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path!r} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path!r} is not a safetensors file (its header is a JSON {type(meta).__name__}, "
                         "not an object of tensors)")
    # every tensor's byte range must lie inside the data section: catches a truncated file
    data_size = size - 8 - header_len
    ends = [entry.get("data_offsets", [0, 0])[-1] for key, entry in meta.items()
            if key != "__metadata__" and isinstance(entry, dict)]
    if len(ends) != sum(1 for k in meta if k != "__metadata__"):
        raise ValueError(f"{path!r} is not a valid safetensors file (a header entry is not a tensor description)")
    if ends and max(ends) > data_size:
        raise ValueError(f"{path!r} is truncated: its header describes {max(ends)} bytes of tensors, "
                         f"the file holds {data_size}")


def local_source_path(path: str, repo_root: Path | None = None) -> Path:
    """Resolve a preset's repo-relative path; it must stay inside lora_presets/."""
    repo_root = REPO_ROOT if repo_root is None else repo_root  # read at call time (tests point it elsewhere)
    presets_dir = (repo_root / "lora_presets").resolve()
    full = (repo_root / path).resolve()
    if full != presets_dir and presets_dir not in full.parents:
        raise ValueError(f"source path {path!r} must lie inside lora_presets/ (relative to the repo root)")
    return full


def hub_file(repo_id: str, weight_name: str, offline: bool | None = None, revision: str | None = None) -> Path:
    """Path of a Hub file in the local cache, downloading it unless offline.

    Raises FileNotFoundError with the repo and file named when offline and not cached.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    refuse_unsafe_name(weight_name, f"Hub file {repo_id}/")
    offline = hub_offline() if offline is None else offline
    try:
        return Path(hf_hub_download(repo_id, weight_name, revision=revision, local_files_only=offline))
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(f"{repo_id}/{weight_name} is not in the local Hub cache and the Hub is "
                                f"{'offline' if offline else 'unreachable'} ({e.__class__.__name__})") from None


def hub_file_cached(repo_id: str, weight_name: str, revision: str | None = None) -> bool:
    """Whether the Hub file is already in the local cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, weight_name, revision=revision)
    return isinstance(found, str) and os.path.isfile(found)
