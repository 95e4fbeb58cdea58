"""Bounded memory for recorded runs (the Timestep explorer and the CFG lab read them).

Before, every /generate kept its full step records in the session's ``gr.State`` for an hour:
every tensor for every image in float32, plus the streamed preview images (55-85 MB for a
maximal request on the tiny model; ~3.5-5 GB extrapolated for SD 1.5 at 1024 px), with no bound
across sessions. Now:

- A record keeps what the views show and nothing else (:class:`CompactRecord`): the first image
  of the batch, float16, latents area-downsampled to at most ``MAX_LATENT_SIDE`` per side (the
  views show 256 px; a 128x128 SD latent decodes to 1024 px), no preview images. Float16 holds
  latents and noise predictions (|x| < 20) to ~1e-3 relative, far below what a 256 px view shows.
- The records live here, in one process-wide store with a memory budget (``TRACE_BUDGET_BYTES``)
  and least-recently-used eviction across sessions, each entry for at most ``TRACE_TTL_SECONDS``.
  The session's ``gr.State`` holds a small handle (:func:`keep`): a :class:`Trace` with the
  run's settings document, its model and its ``records``, a :class:`StoredRecords` that reads
  the store, so ``labapp/trace_views.py`` uses it as a list. A view of an evicted run says so
  (:data:`EVICTED`) instead of showing something else.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import gradio as gr
import torch
import torch.nn.functional as F

TRACE_TTL_SECONDS = 15 * 60  # long enough to explore a run, short enough that idle visitors free it
TRACE_BUDGET_BYTES = 256 * 2**20  # all sessions together: ~2000 maximal tiny-model traces, ~8 SD 1.5 1024 px ones
MAX_LATENT_SIDE = 64  # SD 1.5 at 512 px; larger latents are area-downsampled for the views
TENSOR_FIELDS = ("x_t", "eps_uncond", "eps_cond", "eps_guided", "x0_uncond", "x0_cond", "x0_guided")
SCALAR_FIELDS = ("step", "num_steps", "timestep", "sigma", "alpha_bar", "guidance_scale", "guidance_norm",
                 "model_calls", "input_scale", "guidance_method")
EVICTED = ("This run's steps are no longer kept on the server (each run is kept {ttl} minutes, and "
           "{budget} MB for all visitors together, the least recently viewed dropped first): "
           "generate again to explore it.")


def _compact_tensor(x: torch.Tensor | None) -> torch.Tensor | None:
    """(B, C, h, w) -> (1, C, h', w') float16 with h', w' <= MAX_LATENT_SIDE."""
    if x is None:
        return None
    x = x[:1].detach().to("cpu", torch.float32)
    if max(x.shape[-2:]) > MAX_LATENT_SIDE:
        factor = max(x.shape[-2:]) / MAX_LATENT_SIDE
        size = (max(1, round(x.shape[-2] / factor)), max(1, round(x.shape[-1] / factor)))
        x = F.interpolate(x, size=size, mode="area")
    return x.to(torch.float16).clone()


@dataclass(frozen=True)
class CompactRecord:
    """The part of a ``pipelines.record.StepRecord`` the views read; tensors come back as float32."""

    step: int
    num_steps: int
    timestep: float
    sigma: float | None
    alpha_bar: float
    guidance_scale: float
    guidance_norm: float
    model_calls: int
    input_scale: float
    guidance_method: str
    tensors: dict

    def __getattr__(self, name):
        if name in TENSOR_FIELDS:
            x = self.tensors.get(name)
            return None if x is None else x.float()
        raise AttributeError(name)

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.tensors.values() if x is not None) + 256


def compact(record) -> CompactRecord:
    """A StepRecord (or a CompactRecord) reduced to what the views need."""
    if isinstance(record, CompactRecord):
        return record
    return CompactRecord(**{name: getattr(record, name) for name in SCALAR_FIELDS},
                         tensors={name: _compact_tensor(getattr(record, name)) for name in TENSOR_FIELDS})


class TraceStore:
    """Records of recent runs, under a byte budget (LRU across sessions) and a lifetime."""

    def __init__(self, budget_bytes: int = TRACE_BUDGET_BYTES, ttl_seconds: float = TRACE_TTL_SECONDS, clock=time.monotonic):
        self.budget_bytes, self.ttl_seconds, self.clock = budget_bytes, ttl_seconds, clock
        self._entries: OrderedDict[str, tuple[list[CompactRecord], int, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, records: list) -> str:
        records = [compact(r) for r in records]
        size = sum(r.nbytes for r in records)
        key = uuid.uuid4().hex
        with self._lock:
            self._entries[key] = (records, size, self.clock())
            self.nbytes += size
            self._evict()
        return key

    def get(self, key: str) -> list[CompactRecord] | None:
        with self._lock:
            self._evict()
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)  # recently viewed: evicted last
            return entry[0]

    def forget(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.nbytes -= entry[1]

    def _evict(self) -> None:
        now = self.clock()
        for key in [k for k, (_, _, born) in self._entries.items() if now - born > self.ttl_seconds]:
            self.nbytes -= self._entries.pop(key)[1]
        while self.nbytes > self.budget_bytes and len(self._entries) > 1:  # the newest entry always stays
            self.nbytes -= self._entries.popitem(last=False)[1][1]


STORE = TraceStore()


class StoredRecords(Sequence):
    """The records of one run as a read-only sequence; reading an evicted run raises :data:`EVICTED`."""

    def __init__(self, key: str, length: int, store: TraceStore | None = None):
        self.key, self._length, self._store = key, length, store

    @property
    def store(self) -> TraceStore:
        return STORE if self._store is None else self._store

    def __len__(self) -> int:
        return self._length

    def _records(self) -> list[CompactRecord]:
        records = self.store.get(self.key)
        if records is None:
            raise gr.Error(EVICTED.format(ttl=self.store.ttl_seconds // 60, budget=self.store.budget_bytes // 2**20),
                           title="This run is no longer kept")
        return records

    def __getitem__(self, index):
        return self._records()[index]

    def __iter__(self):
        return iter(self._records())

    def __deepcopy__(self, memo):  # gr.State may deep-copy its value: the handle, not the tensors
        return self


@dataclass
class Trace:
    """One recorded run, as the session keeps it (gr.State) for the explorer and the CFG lab."""

    settings: dict  # the run's settings document (GenerationRequest.to_dict, + img2img's "strength")
    records: StoredRecords
    model: str
    lora_path: str | None = None  # pipelines/lora.py: "none", "fused" or "unfused"
    stopped: bool = False  # ended by the Stop button: the steps so far, no image

    @property
    def seed(self) -> int:
        return self.settings["seed"]


def keep(settings: dict, records: list, model: str, store: TraceStore | None = None, *, lora_path: str | None = None,
         stopped: bool = False) -> Trace:
    """Store ``records`` and return the session's handle."""
    store = STORE if store is None else store  # (an empty store is falsy: it has a __len__)
    key = store.put(records)
    return Trace(settings, StoredRecords(key, len(records), store), model, lora_path=lora_path, stopped=stopped)


def forget(trace) -> None:
    """gr.State delete_callback: drop a session's run from the store when its state expires."""
    if isinstance(trace, Trace):
        trace.records.store.forget(trace.records.key)
