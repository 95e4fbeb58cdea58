"""User adapters on a shared server: each belongs to one session, at most N of them, LRU.

A user adapter is injected into the one pipeline every session shares (``LoraBlender.load``), so
isolation is a matter of names: an adapter gets a server-unique name with a random part
(``user-<file stem>-<6 hex>``), the store records which session owns it, and a session may only
name its own adapters (``names(session)``; the app's blend parser takes these plus the presets).
Blends of different sessions never mix because every generation goes through
``LoraBlender.apply``, which sets the whole adapter set under one lock.

Memory bound: at most ``max_adapters`` user adapters and ``max_bytes`` of their weights in the
model's dtype (fp32 on CPU) across all sessions, and at most ``max_per_session`` per session.
A session past its own quota unloads its own least recently used adapter; past the server's cap,
the least recently used adapter of the session holding the most goes first, so other sessions'
uploads cannot push out a session's only adapter while anyone holds more (issue 30). An evicted
adapter is remembered for its session: naming it again says it was unloaded to make room
(``evicted``), not that the name is unknown.

An adapter is added only once it has loaded *and* passed ``check`` (the app's inspection); any
failure unloads what was injected (issue 30: a failed inspection used to leave a hidden adapter
pinned, RSS 1.2 -> 6.1 GB after five). ``remove`` and eviction call
``LoraBlender.unload`` (diffusers' ``delete_adapters``), which drops the weights and every cached
blend form holding them (BENCHMARKS.md, "Bring your own LoRA", measures the RSS).
"""
from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .user import UserLoraFile, read_user_lora

DEFAULT_MAX_ADAPTERS = 8
DEFAULT_MAX_PER_SESSION = 2
MAX_EVICTION_NOTES = 1000  # evicted (session, name) pairs remembered for their message
DEFAULT_MAX_BYTES = 2 * 2**30  # 2 GiB of adapter weights on the server (8 rank-128 SD 1.5 LoRAs in fp32: ~1.2 GB)


@dataclass
class UserAdapter:
    name: str
    session: str
    file: UserLoraFile
    source: dict  # {"kind": "upload", "filename": ...} | {"kind": "hub", "repo": ..., "file": ..., "revision": ...}
    nbytes: int  # its weights in memory
    num_layers: int
    report: object = None  # what ``add``'s check returned (the app's inspection)
    loaded_at: float = field(default_factory=time.time)


def _stem(filename: str) -> str:
    stem = re.sub(r"[^a-z0-9_]+", "-", Path(filename).stem.lower()).strip("-_")
    return (stem or "lora")[:24]


class UserAdapterStore:
    """Session-owned adapters in one ``LoraBlender``."""

    def __init__(self, blender, max_adapters: int = DEFAULT_MAX_ADAPTERS, max_bytes: int = DEFAULT_MAX_BYTES,
                 reserved_names=(), max_per_session: int = DEFAULT_MAX_PER_SESSION):
        if max_adapters < 1 or max_bytes < 1 or max_per_session < 1:
            raise ValueError(f"max_adapters={max_adapters}, max_bytes={max_bytes} and max_per_session={max_per_session} "
                             "must be >= 1")
        self.blender = blender
        self.max_adapters = max_adapters
        self.max_per_session = min(max_per_session, max_adapters)
        self._evicted: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.max_bytes = max_bytes
        self.reserved = set(reserved_names)  # preset ids: never given to a user adapter
        self._lock = threading.Lock()
        self._adapters: OrderedDict[str, UserAdapter] = OrderedDict()  # LRU order, oldest first

    # ------------------------------------------------------------------------------ queries

    def names(self, session: str | None) -> list[str]:
        with self._lock:
            return [n for n, a in self._adapters.items() if session is not None and a.session == session]

    def get(self, session: str | None, name: str) -> UserAdapter:
        """The session's adapter (LookupError for another session's name or an unknown one: same words)."""
        with self._lock:
            adapter = self._adapters.get(name)
            if adapter is None or session is None or adapter.session != session:
                raise LookupError(f"no user adapter {name!r} in this session; yours: "
                                  f"{[n for n, a in self._adapters.items() if a.session == session]}")
            self._adapters.move_to_end(name)
            return adapter

    def touch(self, session: str | None, names) -> None:
        """Mark the session's adapters in ``names`` as just used (others are ignored)."""
        with self._lock:
            for name in names:
                adapter = self._adapters.get(name)
                if adapter is not None and adapter.session == session:
                    self._adapters.move_to_end(name)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._adapters.values())

    def __len__(self) -> int:
        return len(self._adapters)

    # ------------------------------------------------------------------------------ changes

    def evicted(self, session: str | None) -> dict[str, str]:
        """The session's adapters unloaded to make room -> what to tell it when it names one."""
        with self._lock:
            return {name: message for (owner, name), message in self._evicted.items()
                    if owner == session and name not in self._adapters}

    def add(self, session: str, path, source: dict, check=None, exclusive=contextlib.nullcontext) -> UserAdapter:
        """Check ``path`` (lora_user.read_user_lora), load it for ``session``; evicts LRU adapters to fit.

        ``check(adapter)``, when given, runs on the loaded adapter before it is added (its result is
        ``adapter.report``); if it or the load fails, the adapter is unloaded and the error raised.
        ``exclusive``: a context manager held while the pipeline's layers change (load, unload on failure).
        The same file (SHA-256) added twice by one session returns the adapter already loaded.
        """
        if not isinstance(session, str) or not session:
            raise ValueError("a user adapter needs a session")
        # the file is read and hashed without the lock; the model's modules are read holding it
        # (other sessions may load or unload adapters meanwhile)
        checked = read_user_lora(path, self.blender.pipe, hold=self.blender.holding)
        with self.blender.holding() as pipe:
            estimate = checked.num_weights * pipe.unet.dtype.itemsize  # adapters load in the model's dtype
        with self._lock:
            for adapter in self._adapters.values():
                if adapter.session == session and adapter.file.sha256 == checked.sha256:
                    self._adapters.move_to_end(adapter.name)
                    return adapter
        if estimate > self.max_bytes:
            raise ValueError(f"LoRA file {Path(path).name!r} needs about {estimate / 2**20:.0f} MB in memory; user "
                             f"adapters may hold {self.max_bytes / 2**20:.0f} MB in all")
        with exclusive():
            return self._load(session, path, source, checked, estimate, check)

    def _load(self, session, path, source, checked, estimate, check) -> UserAdapter:
        self._make_room(estimate, session)
        name = self._new_name(source.get("filename") or Path(path).name)
        try:
            loaded = self.blender.load(name, path)
            with self.blender.holding():
                nbytes = self._loaded_bytes(name)
            adapter = UserAdapter(name=name, session=session, file=checked, source=dict(source), nbytes=nbytes,
                                  num_layers=loaded.num_layers)
            if check is not None:
                adapter.report = check(adapter)
        except BaseException:
            if name in self.blender.adapters:
                self.blender.unload(name)
            raise
        with self._lock:
            self._adapters[name] = adapter
        self._make_room(0, session)  # the estimate was low: evict older ones (never the new one: it is the newest)
        return adapter

    def remove(self, session: str | None, name: str) -> None:
        self.get(session, name)  # refuses another session's adapter
        self._unload(name)

    def forget_session(self, session: str) -> int:
        """Unload every adapter of a session (its browser tab closed, or its state expired)."""
        with self._lock:
            names = [n for n, a in self._adapters.items() if a.session == session]
        for name in names:
            self._unload(name)
        return len(names)

    def _unload(self, name: str, reason: str | None = None) -> None:
        with self._lock:
            adapter = self._adapters.pop(name, None)
            if adapter is None:
                return
            if reason:
                self._evicted[(adapter.session, name)] = f"your adapter {name} was unloaded to make room ({reason}); load it again"
                while len(self._evicted) > MAX_EVICTION_NOTES:
                    self._evicted.popitem(last=False)
        self.blender.unload(name)

    def _victim(self, session: str | None, incoming: int) -> tuple[str, str] | None:
        """(name, reason) of the adapter to unload next, or None when there is room (lock held)."""
        adapters = list(self._adapters.values())  # LRU order, oldest first
        newest = None if incoming else (adapters[-1].name if adapters else None)  # the one just added stays
        own = [a for a in adapters if a.session == session]
        if session is not None and len(own) + (1 if incoming else 0) > self.max_per_session:
            victim = next((a for a in own if a.name != newest), None)
            if victim is not None:
                return victim.name, f"at most {self.max_per_session} user adapters per session"
        used = sum(a.nbytes for a in adapters)
        count = len(adapters) + (1 if incoming else 0)
        if count <= self.max_adapters and used + incoming <= self.max_bytes:
            return None
        candidates = [a for a in adapters if a.name != newest]
        if not candidates:
            return None
        held = {s: sum(1 for a in adapters if a.session == s) for s in {a.session for a in candidates}}
        most = max(held.values())
        victim = next(a for a in candidates if held[a.session] == most)  # the fullest session's oldest
        return victim.name, (f"the server holds at most {self.max_adapters} user adapters and "
                             f"{self.max_bytes / 2**20:.0f} MB of them for all sessions")

    def _make_room(self, incoming: int, session: str | None = None) -> None:
        while True:
            with self._lock:
                found = self._victim(session, incoming)
            if found is None:
                return
            self._unload(*found)

    def _new_name(self, filename: str) -> str:
        while True:
            name = f"user-{_stem(filename)}-{secrets.token_hex(3)}"
            if name not in self.reserved and name not in self.blender.adapters:
                return name

    def _loaded_bytes(self, name: str) -> int:
        from .inspector import _layers

        total = 0
        for _, _, module in _layers(self.blender.pipe, name):
            total += sum(p.numel() * p.element_size() for p in module.lora_A[name].parameters())
            total += sum(p.numel() * p.element_size() for p in module.lora_B[name].parameters())
        return total
