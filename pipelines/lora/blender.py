"""Multi-LoRA blending: load adapters once, blend them per request, safely under concurrency.

``LoraBlender`` owns a pipeline (``TracingStableDiffusionPipeline`` or diffusers'
``StableDiffusionPipeline``: anything with diffusers' ``StableDiffusionLoraLoaderMixin``).
Adapters are read from disk once, by ``load`` / ``load_preset``, and stay injected as peft
layers; a blend only sets which of them are active and their scales, which touches no file.

Adapter set and scales are global state of the pipeline's modules (peft issue 804), so every
generation goes through ``apply``, which holds a lock from setting the blend to the end of
the generation, an empty blend included::

    with blender.apply(Blend.of({"outline": 0.8, "night": -0.5})) as pipe:
        out = pipe(prompt, num_inference_steps=25, record="light")

Why not diffusers' ``set_adapters`` for the scales: in diffusers 0.42.1 its nested block dicts
leave LoRA layers outside attentions (resnets, samplers) at an absolute 1.0 whatever the
adapter's weight, skip blocks without attention silently, and raise IndexError on top-level
layers such as conv_in. Here every peft layer gets its scale from the blend (see
settings.py) through peft's ``set_scale``; the active adapters of a layer run as one
stacked LoRA, and a layer with none active runs its base module only (layers.py). For
attention-only LoRAs the result equals diffusers' (exactly with ``stack_adapters=False``, to
rounding with stacking; tests/pipelines/lora/test_lora_blend.py checks both).

Cost (BENCHMARKS.md, "Multi-LoRA blending"): loaded adapters cost nothing while idle. An active
layer runs a dense copy ``W + B A`` (the base layer's cost) within ``dense_budget_mb``, else the
stacked low-rank pass; ``Blend.fuse`` merges the low-rank layers into the base weights for the
``apply`` block and restores them exactly (the app's engine fuses whenever the blend has no step
ranges). The layer weights of the last ``cached_blends`` blends are kept, so returning to a blend
builds nothing.
"""
from __future__ import annotations

import inspect
import logging
import os
import re
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import layers as lora_layers
from .files import check_safetensors_header, refuse_unsafe_name
from .presets import LoraPreset, preset_file
from .settings import AdapterSetting, Blend

__all__ = ["AdapterSetting", "Blend", "BlendedPipeline", "LoadedAdapter", "LoraBlender", "LoraGrid", "lora_grid"]

_BLOCK_LAYER = re.compile(r"^(down|up)_blocks\.(\d+)\.(attentions|resnets)\.(\d+)\.")
_BLOCK_SAMPLER = re.compile(r"^(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.")
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    path: str
    format: str  # "diffusers" (peft / diffusers keys) or "kohya" (AUTOMATIC1111 / ComfyUI keys)
    components: tuple[str, ...]  # which of "unet", "text_encoder" it has layers in
    num_layers: int
    preset: LoraPreset | None = None


@dataclass
class _Layer:
    component: str  # "unet" | "text_encoder"
    name: str
    module: torch.nn.Module  # a peft BaseTunerLayer
    region: tuple | None  # ("down", b, j) | ("up", b, j) | ("mid",) | None (outside the blocks)


def _unet_region(module_name: str, unet) -> tuple | None:
    m = _BLOCK_LAYER.match(module_name)
    if m:
        return (m.group(1), int(m.group(2)), int(m.group(4)))
    m = _BLOCK_SAMPLER.match(module_name)
    if m:  # the sampler closes the block: it takes the block's last layer's weight
        group, b = m.group(1), int(m.group(2))
        blocks = unet.down_blocks if group == "down" else unet.up_blocks
        return (group, b, len(blocks[b].resnets) - 1)
    if module_name.startswith("mid_block."):
        return ("mid",)
    return None


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


@contextmanager
def _expected_loader_messages_silenced():
    """Two messages the loaders print on every normal load here, which say nothing is wrong:
    diffusers' "No LoRA keys associated to CLIPTextModel" for a UNet-only file (most LoRAs; the
    blender counts matched layers itself and refuses a file that matched none), and peft's
    "Already found a `peft_config`" for a second adapter in one model (what a blender is for)."""
    drop = _DropMessages("No LoRA keys associated to")
    loggers = [logging.getLogger(n) for n in ("diffusers.loaders.lora_base", "diffusers.loaders.peft",
                                               "diffusers.loaders.lora_pipeline")]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


class LoraBlender:
    """A pipeline plus its loaded adapters; ``apply(blend)`` is the one way to generate with it."""

    def __init__(self, pipe, *, stack_adapters: bool = True, cached_blends: int = 4, dense_budget_mb: float = 128):
        """``stack_adapters``: run the active adapters of a layer as one stacked LoRA, or as one
        dense weight ``W + B A`` (layers.py; same sum up to rounding, much less overhead).
        False: peft's own one-pass-per-adapter path, bit-identical to diffusers' ``set_adapters``.
        ``cached_blends``: how many blends' layer weights to keep per component (switching back
        to one of them computes nothing). ``dense_budget_mb``: memory per cached blend and
        component for dense weight copies (0: low-rank only); so at most
        2 x cached_blends x dense_budget_mb of copies in all."""
        if not all(hasattr(pipe, a) for a in ("load_lora_weights", "unet", "text_encoder")):
            raise TypeError(f"{type(pipe).__name__} cannot take LoRAs: it needs diffusers' "
                            "StableDiffusionLoraLoaderMixin (load_lora_weights) and unet / text_encoder")
        self.pipe = pipe
        self.stack_adapters = stack_adapters
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._adapters: dict[str, LoadedAdapter] = {}
        self._layers: list[_Layer] = []
        self._set: dict[str, tuple] = {}  # component -> key of the scales now set (skip if unchanged)
        self.cached_blends = cached_blends
        self.dense_budget = int(dense_budget_mb * 2**20)
        # (component, key) -> per layer of the component: its form (lora_layers.layer_form); LRU order
        self._stacked: OrderedDict[tuple, list] = OrderedDict()
        self._pipe_has_hook = "on_step_begin" in inspect.signature(
            getattr(pipe, "iter_steps", pipe.__call__)).parameters

    def set_dense_budget(self, megabytes: float) -> None:
        """Change ``dense_budget_mb``; cached blends are built again on their next use."""
        with self._locked():
            self.dense_budget = int(megabytes * 2**20)
            self._stacked.clear()
            self._set = {}

    # ------------------------------------------------------------------------------ loading

    @property
    def adapters(self) -> dict[str, LoadedAdapter]:
        return dict(self._adapters)

    def load(self, name: str, path: str | os.PathLike, *, preset: LoraPreset | None = None) -> LoadedAdapter:
        """Read a .safetensors LoRA (diffusers/peft or kohya keys) into the pipeline, once.

        Loading a name again with the same file returns the loaded adapter without reading it.
        """
        path = Path(path)
        refuse_unsafe_name(path)  # before any read
        if not isinstance(name, str) or not name or name.startswith(lora_layers.BLEND_SLOT):
            raise ValueError(f"adapter name {name!r} is not allowed; give a non-empty name")
        if name in self._adapters:
            if Path(self._adapters[name].path) == path.resolve():
                return self._adapters[name]
            raise ValueError(f"adapter name {name!r} is already loaded from {self._adapters[name].path}; "
                             f"pick another name for {path}")
        if not path.is_file():
            raise FileNotFoundError(f"LoRA file {path} does not exist")
        check_safetensors_header(path)
        with self._locked():
            keys = self._file_keys(path)
            kind = "kohya" if keys and all(k.startswith(_KOHYA_PREFIXES) for k in keys) else "diffusers"
            try:
                try:
                    # weight_name ends in .safetensors and use_safetensors=True: diffusers reads it with
                    # safetensors only, never falling back to a pickle
                    with _expected_loader_messages_silenced():
                        self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name,
                                                    use_safetensors=True, local_files_only=True)
                except (ValueError, RuntimeError, KeyError) as e:
                    raise ValueError(f"LoRA {name!r} from {path} does not fit this pipeline's model: {e}") from e
                self._index_layers()
                self._copy_off_file(name)
                counts = {c: sum(1 for l in self._layers if l.component == c and name in l.module.lora_A)
                          for c in ("unet", "text_encoder")}
                if not any(counts.values()):
                    raise ValueError(f"LoRA {name!r} from {path}: none of its keys matched a layer of this model")
            except BaseException:
                self._drop_partial(name)  # layers injected before the failure would stay pinned (issue 30)
                raise
            loaded = LoadedAdapter(name=name, path=str(path.resolve()), format=kind,
                                   components=tuple(c for c, n in counts.items() if n),
                                   num_layers=sum(counts.values()), preset=preset)
            self._adapters[name] = loaded
            return loaded

    def load_preset(self, preset: LoraPreset, *, family: str | None = None, offline: bool | None = None) -> LoadedAdapter:
        """Load a registry preset under its id (refused when ``family`` is given and differs)."""
        if family is not None and preset.family != family:
            raise ValueError(f"LoRA preset {preset.id!r} is for base family {preset.family!r}, "
                             f"the loaded model is {family!r}")
        if preset.id in self._adapters:
            return self._adapters[preset.id]
        return self.load(preset.id, preset_file(preset, offline=offline), preset=preset)

    def unload(self, name: str) -> None:
        """Remove a loaded adapter's layers from the pipeline (diffusers' ``delete_adapters``) and
        forget every cached form that held its weights, so its memory can be freed."""
        with self._locked():
            if name not in self._adapters:
                raise ValueError(f"adapter {name!r} is not loaded; loaded: {sorted(self._adapters)}")
            for layer in self._layers:  # drop stacked / dense copies that include its weights
                lora_layers.set_layer_scales(layer.module, {})
            with _expected_loader_messages_silenced():
                self.pipe.delete_adapters(name)
            del self._adapters[name]
            self._index_layers()

    def _drop_partial(self, name: str) -> None:
        """Remove whatever a failed load injected under ``name`` (lock held)."""
        try:
            with _expected_loader_messages_silenced():
                self.pipe.delete_adapters(name)
        except (ValueError, KeyError, AttributeError):
            pass  # nothing was injected
        self._index_layers()

    def _copy_off_file(self, name: str) -> None:
        """Give the new adapter's weights their own memory.

        diffusers loads with low_cpu_mem_usage, assigning the tensors safetensors returns, and
        those stay memory-mapped to the file: a file overwritten in place after loading (cp,
        rsync) would change the weights or kill the process with SIGBUS at the next blend.
        """
        with torch.no_grad():
            for layer in self._layers:
                module = layer.module
                for attr in module.adapter_layer_names:
                    parts = getattr(module, attr)
                    if name in parts:
                        for param in parts[name].parameters():
                            param.data = param.data.clone()

    @staticmethod
    def _file_keys(path: Path) -> list[str]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:  # header only
            return list(f.keys())

    def _index_layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = []
        for component in ("unet", "text_encoder"):
            model = getattr(self.pipe, component, None)
            if model is None:
                continue
            for name, module in model.named_modules():
                if isinstance(module, BaseTunerLayer) and hasattr(module, "lora_A"):
                    region = _unet_region(name, self.pipe.unet) if component == "unet" else None
                    layers.append(_Layer(component, name, module, region))
                    lora_layers.freeze(module)
        self._layers = layers
        self._set = {}  # loading changed which adapters are active: set everything again
        self._stacked.clear()

    # ------------------------------------------------------------------------------ blending

    @contextmanager
    def _locked(self):
        if self._owner == threading.get_ident():
            raise RuntimeError("LoraBlender.apply/load called again from inside apply() on the same thread; "
                               "run the generation inside the first apply() instead")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None

    @contextmanager
    def holding(self):
        """Hold the pipeline while reading its module tree (user-LoRA checks, the inspector): no
        load, unload or blend changes it meanwhile (peft injection edits ``_modules``)."""
        with self._locked():
            yield self.pipe

    def check_blend(self, blend: Blend) -> None:
        """ValueError for adapters not loaded, or block weights that do not fit this UNet."""
        missing = [n for n in blend.names if n not in self._adapters]
        if missing:
            raise ValueError(f"adapter(s) {missing} are not loaded; loaded: {sorted(self._adapters)}")
        unet = self.pipe.unet
        for a in blend.adapters:
            if a.blocks is None:
                continue
            for group in ("down", "up"):
                blocks = unet.down_blocks if group == "down" else unet.up_blocks
                for b, value in a.blocks[group].items():
                    indices = range(len(blocks)) if b == "*" else [b]
                    if b != "*" and not 0 <= b < len(blocks):
                        raise ValueError(f"block_weights[{group!r}] of adapter {a.name!r} names block_{b}; "
                                         f"this UNet has {group} blocks 0..{len(blocks) - 1}")
                    for i in indices:
                        layers = len(blocks[i].resnets)
                        if isinstance(value, tuple) and len(value) not in (1, layers):
                            raise ValueError(f"block_weights[{group!r}] of adapter {a.name!r}: block_{i} has "
                                             f"{layers} layers, got {len(value)} values {list(value)}")

    @contextmanager
    def apply(self, blend: Blend | None = None) -> Iterator["BlendedPipeline"]:
        """Set ``blend`` (None: no LoRA) and hold the pipeline for the generation(s) in the block.

        Yields a ``BlendedPipeline``: call it (or its ``iter_steps``) like the pipeline; it adds
        the ``on_step_begin`` hook that switches step-ranged adapters and records the active
        weights. ``blend.fuse`` merges the weights on entry and restores the exact base weights
        on exit.
        """
        blend = Blend() if blend is None else blend
        if not isinstance(blend, Blend):
            raise ValueError(f"apply() takes a Blend (or None), got {type(blend).__name__}")
        self.check_blend(blend)
        with self._locked():
            self._set_component("text_encoder", {a.name: a for a in blend.adapters})
            self._set_unet(blend.unet_active_at(0, 1))
            idle = not blend.has_step_ranges and all(
                lora_layers.plan_of(layer.module) == "base" for layer in self._layers)
            path = "none" if idle else "fused" if blend.fuse else "unfused"
            saved = lora_layers.fuse([layer.module for layer in self._layers]) if path == "fused" else None
            try:
                yield BlendedPipeline(self.pipe, self._step_hook(blend), self._pipe_has_hook, path)
            finally:
                if saved is not None:
                    lora_layers.unfuse(saved)

    def _step_hook(self, blend: Blend) -> Callable[[int, int], dict]:
        def on_step_begin(step: int, num_steps: int) -> dict:
            active = blend.unet_active_at(step, num_steps)
            if blend.has_step_ranges:
                self._set_unet(active)  # a no-op unless the active set changed
            return {a.name: a.weight for a in active}

        return on_step_begin

    def _set_unet(self, active: tuple[AdapterSetting, ...]):
        self._set_component("unet", {a.name: a for a in active})

    def _set_component(self, component: str, settings: dict[str, AdapterSetting]):
        if component == "text_encoder":
            key = tuple((n, s.te_weight) for n, s in settings.items())
        else:
            key = tuple((n, s.weight, repr(s.blocks)) for n, s in settings.items())
        if self._set.get(component) == key:
            return
        cached = self._stacked.get((component, key))
        stacked, dense_bytes = [], 0
        for i, layer in enumerate(l for l in self._layers if l.component == component):
            module = layer.module
            scales = {}
            for name, setting in settings.items():
                if name in module.lora_A:
                    scale = setting.te_weight if component == "text_encoder" else _unet_scale(setting, layer.region)
                    if scale != 0.0:  # a zero-scale adapter adds exactly nothing: leave it out
                        scales[name] = scale
            weight_bytes = module.get_base_layer().weight.nbytes
            form = lora_layers.set_layer_scales(module, scales, stack=self.stack_adapters,
                                                cached=cached[i] if cached else None,
                                                dense=dense_bytes + weight_bytes <= self.dense_budget)
            if form is not None and form[0] == "dense":
                dense_bytes += weight_bytes
            stacked.append(form)
        self._stacked[(component, key)] = stacked
        self._stacked.move_to_end((component, key))
        while len(self._stacked) > 2 * self.cached_blends:  # two components
            self._stacked.popitem(last=False)
        self._set[component] = key


def _unet_scale(setting: AdapterSetting, region: tuple | None) -> float:
    blocks = setting.blocks
    if blocks is None or region is None:
        return setting.weight
    if region[0] == "mid":
        return setting.weight if blocks["mid"] is None else blocks["mid"]
    group, b, j = region
    value = blocks[group].get(b, blocks[group].get("*"))
    if value is None:
        return setting.weight
    if isinstance(value, tuple):
        return value[0] if len(value) == 1 else value[j]
    return value


class BlendedPipeline:
    """The pipeline as seen inside ``apply``: calls get the blend's ``on_step_begin`` hook.

    Everything else is the pipeline's own (attribute access passes through). For a pipeline
    without ``on_step_begin`` (stock ``StableDiffusionPipeline``) step ranges run through
    ``callback_on_step_end`` instead, and no per-step record is kept.
    """

    def __init__(self, pipe, hook: Callable[[int, int], dict], has_hook: bool, lora_path: str = "none"):
        self._pipe = pipe
        self._hook = hook
        self._has_hook = has_hook  # whether the pipeline's call takes on_step_begin
        self.lora_path = lora_path  # "none" (every layer runs its base module), "fused" or "unfused"

    @property
    def pipeline(self):
        return self._pipe

    def on_step_begin(self, step: int, num_steps: int) -> dict:
        return self._hook(step, num_steps)

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, **kwargs):
        return self._tag(self._pipe(*args, **self._with_hook(kwargs)))

    def iter_steps(self, *args, **kwargs):
        for item in self._pipe.iter_steps(*args, **self._with_hook(kwargs)):
            yield self._tag(item)

    def _tag(self, output):
        if hasattr(output, "lora_path"):  # TracingPipelineOutput: say which LoRA path made it
            output.lora_path = self.lora_path
        return output

    def _with_hook(self, kwargs: dict) -> dict:
        attention_kwargs = kwargs.get("cross_attention_kwargs") or {}
        if "scale" in attention_kwargs:
            raise ValueError(f"cross_attention_kwargs['scale'] = {attention_kwargs['scale']!r} is not allowed "
                             "inside LoraBlender.apply: LoRA weights come from the Blend")
        self._hook(0, 1)  # step 0's adapter set does not depend on n: set it again for this call
        if self._has_hook:
            user_hook = kwargs.get("on_step_begin")

            def on_step_begin(step, num_steps):
                adapters = self._hook(step, num_steps)
                extra = user_hook(step, num_steps) if user_hook is not None else None
                return {**(extra or {}), **adapters}

            return {**kwargs, "on_step_begin": on_step_begin}
        user_callback = kwargs.get("callback_on_step_end")

        def callback_on_step_end(pipe, i, t, callback_kwargs):
            num_steps = pipe.num_timesteps
            if i + 1 < num_steps:
                self._hook(i + 1, num_steps)  # the next step's set, before its UNet call
            out = user_callback(pipe, i, t, callback_kwargs) if user_callback is not None else None
            return callback_kwargs if out is None else out

        return {**kwargs, "callback_on_step_end": callback_on_step_end}


@dataclass
class LoraGrid:
    """A comparison grid: rows are prompts, columns "none", each adapter alone, "blend"."""

    prompts: list[str]
    columns: list[str]
    images: list[list]  # [row][column] PIL images

    def to_image(self, pad: int = 2, background=(255, 255, 255)):
        from PIL import Image

        w, h = self.images[0][0].size
        grid = Image.new("RGB", (len(self.columns) * (w + pad) - pad, len(self.prompts) * (h + pad) - pad), background)
        for r, row in enumerate(self.images):
            for c, image in enumerate(row):
                grid.paste(image, (c * (w + pad), r * (h + pad)))
        return grid


def lora_grid(blender: LoraBlender, prompts: list[str] | str, settings: Blend | list[AdapterSetting], *,
              seed: int = 0, **call_kwargs) -> LoraGrid:
    """Generate none / each adapter alone / the whole blend for every prompt, same seed everywhere.

    ``call_kwargs`` go to the pipeline call (num_inference_steps, guidance_scale, height, ...).
    """
    blend = settings if isinstance(settings, Blend) else Blend(tuple(settings))
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    columns = [("none", Blend())] + [(n, blend.alone(n)) for n in blend.names] + [("blend", blend)]
    call_kwargs = {**call_kwargs, "output_type": "pil"}
    images = []
    for prompt in prompts:
        row = []
        for _, column_blend in columns:
            with blender.apply(column_blend) as pipe:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                row.append(pipe(prompt, generator=generator, **call_kwargs).images[0])
        images.append(row)
    return LoraGrid(prompts=prompts, columns=[c for c, _ in columns], images=images)
