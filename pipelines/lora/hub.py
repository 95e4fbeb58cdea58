"""A user's LoRA by Hub id: ``owner/name`` or ``owner/name/file.safetensors``, fetched with
huggingface_hub (or found in its local cache when offline, ``HF_HUB_OFFLINE=1``), with the revision
the file resolved to (the snapshot folder of the cache: a commit hash). The file is then checked
like an upload (``lora_user.read_user_lora``)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .files import refuse_unsafe_name

HUB_ID = r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96})(?:/(?P<file>[\w./-]{1,200}))?$"
DEFAULT_WEIGHT_NAMES = ("pytorch_lora_weights.safetensors",)


@dataclass(frozen=True)
class HubLora:
    repo: str
    filename: str
    revision: str  # the commit the file was resolved to (the snapshot folder of the Hub cache)
    path: str


def parse_hub_id(text: str) -> tuple[str, str | None]:
    """"owner/name" or "owner/name/file.safetensors" -> (repo, file or None); ValueError otherwise."""
    match = re.match(HUB_ID, text.strip()) if isinstance(text, str) else None
    if match is None or ".." in text:
        raise ValueError(f"{text!r} is not a Hub id: owner/name, or owner/name/file.safetensors")
    filename = match.group("file")
    if filename is not None:
        try:
            refuse_unsafe_name(filename, "Hub file")
        except ValueError as error:  # name the whole id: "Hub file 'a/b/c.bin' is a pickle ..."
            raise ValueError(str(error).replace(repr(filename), repr(f"{match.group('repo')}/{filename}"), 1)) from None
    return match.group("repo"), filename


def _revision_of(path: str) -> str:
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else "unknown"


def resolve_hub_lora(hub_id: str, *, max_bytes: int, offline: bool | None = None) -> HubLora:
    """Fetch (or find in the local cache when offline) a LoRA file of a Hub repo.

    Without a file name the repo must hold ``pytorch_lora_weights.safetensors`` or exactly one
    .safetensors file. Online, the file's size is read from the Hub before downloading it.
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from .files import hub_offline

    repo, filename = parse_hub_id(hub_id)
    offline = hub_offline() if offline is None else offline
    try:
        if filename is None:
            if offline:
                folder = Path(snapshot_download(repo, local_files_only=True))
                names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors"))
            else:
                names = sorted(f for f in HfApi().list_repo_files(repo) if f.endswith(".safetensors"))
            preferred = [n for n in names if n in DEFAULT_WEIGHT_NAMES]
            if preferred or len(names) == 1:
                filename = (preferred or names)[0]
            else:
                raise ValueError(f"Hub repo {repo!r} holds {len(names)} .safetensors files "
                                 f"({names[:8]}); give one: {repo}/<file>.safetensors")
        if not offline:
            from huggingface_hub import get_hf_file_metadata, hf_hub_url

            size = get_hf_file_metadata(hf_hub_url(repo, filename)).size
            if size is not None and size > max_bytes:
                raise ValueError(f"Hub file {repo}/{filename} has {size} bytes; at most {max_bytes} are accepted")
        path = hf_hub_download(repo, filename, local_files_only=offline)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as error:
        where = "the local Hub cache (the Hub is offline)" if offline else "the Hub"
        raise ValueError(f"Hub LoRA {repo}/{filename or '*'} could not be found in {where} "
                         f"({type(error).__name__})") from None
    if os.path.getsize(path) > max_bytes:
        raise ValueError(f"Hub file {repo}/{filename} has {os.path.getsize(path)} bytes; at most {max_bytes} are accepted")
    return HubLora(repo=repo, filename=filename, revision=_revision_of(path), path=path)
