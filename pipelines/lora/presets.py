"""The LoRA preset registry: lora_presets/presets.json, validated entry by entry.

Each entry: ``id``, ``name`` (display), ``family`` (base-model family: "tiny-shapes", "sd15",
...), ``source`` (``{"path": "lora_presets/..."}`` relative to the repo root, or
``{"repo": "owner/name", "weight_name": "file.safetensors"}`` on the Hub, optional
``"revision"``), ``trigger_words`` (list), ``default_weight`` (in [-2, 2]), ``description``,
optional ``scheduler_hint`` (a name from ``pipelines.schedulers.scheduler_names()``).
A bad entry raises ValueError naming the file, the entry and the field.

The app offers ``available_presets(family)``: presets of the loaded model's family whose weights
can be had now (a local file that exists; a Hub file that is cached, or any Hub file when online).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .files import (
    REPO_ROOT,
    check_safetensors_header,
    hub_file,
    hub_file_cached,
    hub_offline,
    local_source_path,
    refuse_unsafe_name,
)
from .settings import check_weight

PRESETS_FILE = REPO_ROOT / "lora_presets" / "presets.json"
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FIELDS = {"id", "name", "family", "source", "trigger_words", "default_weight", "description", "scheduler_hint"}
_REQUIRED = _FIELDS - {"scheduler_hint"}


@dataclass(frozen=True)
class LoraPreset:
    id: str
    name: str
    family: str
    trigger_words: tuple[str, ...]
    default_weight: float
    description: str
    path: str | None = None  # repo-relative, inside lora_presets/
    repo: str | None = None  # Hub repo id
    weight_name: str | None = None  # file in the Hub repo
    revision: str | None = None
    scheduler_hint: str | None = None

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def source_label(self) -> str:
        return self.path if self.is_local else f"hf://{self.repo}/{self.weight_name}"

    def prompt_with_triggers(self, prompt: str) -> str:
        """Prepend trigger words the prompt lacks (the usual way LoRA styles are asked for)."""
        missing = [w for w in self.trigger_words if w.lower() not in prompt.lower()]
        return ", ".join(missing + [prompt]) if missing else prompt


def _fail(file: Path, entry: str, field: str, problem: str):
    raise ValueError(f"{file}: preset {entry}, field {field!r}: {problem}")


def _parse_entry(raw, index: int, file: Path, scheduler_names: list[str] | None) -> LoraPreset:
    entry = f"#{index}"
    if not isinstance(raw, dict):
        _fail(file, entry, "(entry)", f"must be an object, got {type(raw).__name__}")
    if isinstance(raw.get("id"), str):
        entry = f"#{index} ({raw['id']!r})"
    for key in sorted(_REQUIRED - set(raw)):
        _fail(file, entry, key, "is missing")
    for key in sorted(set(raw) - _FIELDS):
        _fail(file, entry, key, f"is not a preset field (allowed: {sorted(_FIELDS)})")

    pid = raw["id"]
    if not isinstance(pid, str) or not _ID.match(pid):
        _fail(file, entry, "id", f"{pid!r} must be lowercase letters, digits, '-' or '_'")
    for key in ("name", "family", "description"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            _fail(file, entry, key, f"must be a non-empty string, got {raw[key]!r}")
    words = raw["trigger_words"]
    if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
        _fail(file, entry, "trigger_words", f"must be a list of non-empty strings, got {words!r}")
    try:
        weight = check_weight(raw["default_weight"], "default_weight")
    except ValueError as e:
        _fail(file, entry, "default_weight", str(e))
    hint = raw.get("scheduler_hint")
    if hint is not None and (not isinstance(hint, str) or (scheduler_names is not None and hint not in scheduler_names)):
        _fail(file, entry, "scheduler_hint", f"{hint!r} is not a scheduler name; known: {scheduler_names}")

    source = raw["source"]
    where = {}
    if not isinstance(source, dict) or set(source) not in ({"path"}, {"repo", "weight_name"},
                                                              {"repo", "weight_name", "revision"}):
        _fail(file, entry, "source", f"must be {{'path': ...}} or {{'repo': ..., 'weight_name': ...}}, got {source!r}")
    try:
        if "path" in source:
            if not isinstance(source["path"], str):
                raise ValueError(f"path must be a string, got {source['path']!r}")
            refuse_unsafe_name(source["path"])
            local_source_path(source["path"])
            where["path"] = source["path"]
        else:
            if not isinstance(source["repo"], str) or not _REPO_ID.match(source["repo"]):
                raise ValueError(f"repo {source['repo']!r} is not a Hub repo id (owner/name)")
            if not isinstance(source["weight_name"], str):
                raise ValueError(f"weight_name must be a string, got {source['weight_name']!r}")
            refuse_unsafe_name(source["weight_name"])
            where.update(repo=source["repo"], weight_name=source["weight_name"], revision=source.get("revision"))
    except ValueError as e:
        _fail(file, entry, "source", str(e))
    return LoraPreset(id=pid, name=raw["name"], family=raw["family"], trigger_words=tuple(words),
                      default_weight=weight, description=raw["description"], scheduler_hint=hint, **where)


def load_presets(path: str | Path | None = None, *, check_scheduler_hints: bool = True) -> list[LoraPreset]:
    """Read and validate every preset of a registry file (default lora_presets/presets.json)."""
    file = Path(path) if path is not None else PRESETS_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("presets"), list):
        raise ValueError(f"{file}: expected an object with a 'presets' list")
    names = None
    if check_scheduler_hints:
        from ..schedulers import scheduler_names

        names = scheduler_names()
    presets = [_parse_entry(raw, i, file, names) for i, raw in enumerate(data["presets"])]
    seen: set[str] = set()
    for p in presets:
        if p.id in seen:
            raise ValueError(f"{file}: preset id {p.id!r} appears twice; field 'id' must be unique")
        seen.add(p.id)
    return presets


@lru_cache(maxsize=1)
def _default_presets() -> tuple[LoraPreset, ...]:
    return tuple(load_presets())


def get_preset(preset_id: str, presets: list[LoraPreset] | None = None) -> LoraPreset:
    presets = list(_default_presets()) if presets is None else presets
    for p in presets:
        if p.id == preset_id:
            return p
    raise ValueError(f"no LoRA preset {preset_id!r}; known: {[p.id for p in presets]}")


def presets_for_family(family: str, presets: list[LoraPreset] | None = None) -> list[LoraPreset]:
    """Every registered preset made for this base-model family (available or not)."""
    presets = list(_default_presets()) if presets is None else presets
    return [p for p in presets if p.family == family]


def preset_available(preset: LoraPreset, offline: bool | None = None) -> bool:
    """Local: the file exists. Hub: cached, or the Hub may be used (not offline)."""
    if preset.is_local:
        return local_source_path(preset.path).is_file()
    offline = hub_offline() if offline is None else offline
    return (not offline) or hub_file_cached(preset.repo, preset.weight_name, preset.revision)


def available_presets(family: str, offline: bool | None = None,
                      presets: list[LoraPreset] | None = None) -> list[LoraPreset]:
    """What the app lists: this family's presets whose weights can be had now."""
    return [p for p in presets_for_family(family, presets) if preset_available(p, offline)]


def preset_file(preset: LoraPreset, offline: bool | None = None) -> Path:
    """The preset's local weight file (downloaded if from the Hub and allowed), header-checked.

    Raises FileNotFoundError naming the preset and the expected location when it is missing.
    """
    if preset.is_local:
        file = local_source_path(preset.path)
        if not file.is_file():
            raise FileNotFoundError(f"LoRA preset {preset.id!r}: weight file {preset.path} does not exist yet "
                                    "(train it with train/train_lora.py, or pick another preset)")
    else:
        try:
            file = hub_file(preset.repo, preset.weight_name, offline=offline, revision=preset.revision)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"LoRA preset {preset.id!r}: {e}") from None
    check_safetensors_header(file)
    return file
