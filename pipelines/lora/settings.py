"""What a multi-LoRA blend asks for: ``AdapterSetting`` and ``Blend``, validated on construction.

Plain data, no torch: the app builds a ``Blend`` from its controls and hands it to
``LoraBlender.apply`` (pipelines/lora/blender.py), which turns it into peft scales.

Semantics
- ``weight`` scales the adapter's UNet layers, ``text_encoder_weight`` its text-encoder layers
  (None: same as ``weight``). Both in [-2, 2]; negative weights subtract the adapter's direction.
- ``block_weights`` override ``weight`` for the UNet blocks they name and leave every other
  layer at ``weight``. Shape as diffusers' nested ``set_adapters`` dicts:
  ``{"down": 0.5, "mid": 1.0, "up": {"block_0": 0.2, "block_1": [0.5, 1.0, 0.8]}}``.
  A number covers a whole block (attentions, resnets and its down/upsampler); a list gives one
  value per layer of the block (layer j = resnets[j] + attentions[j]; the sampler takes the last).
  Layers outside the three block groups (conv_in, time embedding, conv_out) keep ``weight``.
  Values are absolute scales, like diffusers', each in [-2, 2].
- ``step_range=(start, end)``, fractions of the run: the adapter's UNet layers are active at
  step i of n when ``start <= i / n < end`` ((0, 0.4) of 25 steps: steps 0-9). The prompt is
  encoded once, before the loop, so the text-encoder part applies to the whole run.
- ``Blend.fuse`` merges the blend into the base weights for speed (no per-layer LoRA matmuls);
  it cannot change adapters between steps, so it refuses step ranges.

Text form (``Blend.parse``, what /generate's ``lora`` field takes): the shorthand
``"outline:0.8, night"`` (weight 1 when left out) or a JSON list of AdapterSetting objects
(``[{"name": "night", "weight": -0.5, "block_weights": {"up": {"block_1": [0.5, 1.0]}}}]``).
Every refusal is a ``FieldError`` naming the field (``lora[night].weight``), the value and
what is allowed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from numbers import Real
from typing import Iterable, Mapping, Sequence

from .. import fields
from ..fields import FieldError

WEIGHT_RANGE = (-2.0, 2.0)
SETTING_FIELDS = ("name", "weight", "text_encoder_weight", "block_weights", "step_range")
TEXT_FORMS = 'a JSON list like [{"name": "outline", "weight": 0.8}] or "outline:0.8, night:0.5"'
BLOCK_GROUPS = ("down", "mid", "up")
_BLOCK_KEY = re.compile(r"^block_(\d+)$")


def _finite(value) -> bool:
    """A real number that is finite (10**400 is an int no float holds: math.isfinite raised OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    if isinstance(value, int):
        return abs(value) < 2**1023
    return math.isfinite(value)


def check_weight(value, what: str) -> float:
    """Return ``value`` as float, or raise ValueError naming ``what``, the value and the range."""
    low, high = WEIGHT_RANGE
    if not _finite(value):
        raise ValueError(f"{what} must be a finite number in [{low:g}, {high:g}], got {fields.shown(value)}")
    if not low <= value <= high:
        raise ValueError(f"{what} = {value!r} is out of range [{low:g}, {high:g}]")
    return float(value)


def normalize_block_weights(block_weights: Mapping | None, adapter: str) -> dict | None:
    """Validate a nested block-weight dict and return it canonical.

    Canonical form: ``{"down": {"*" | int: float | tuple}, "mid": float | None, "up": {...}}``
    where "*" stands for "every block of the group". Block indices are checked against the
    UNet later (``LoraBlender`` knows the model); here only structure and ranges.
    """
    if block_weights is None:
        return None
    if not isinstance(block_weights, Mapping):
        raise ValueError(f"block_weights of adapter {adapter!r} must be a dict with keys {BLOCK_GROUPS}, "
                         f"got {type(block_weights).__name__}")
    unknown = sorted(set(block_weights) - set(BLOCK_GROUPS))
    if unknown:
        raise ValueError(f"block_weights of adapter {adapter!r} has unknown keys {unknown}; allowed: {BLOCK_GROUPS}")
    canonical: dict = {"down": {}, "mid": None, "up": {}}
    if "mid" in block_weights:
        mid = block_weights["mid"]
        if isinstance(mid, (list, tuple)):
            if len(mid) != 1:
                raise ValueError(f"block_weights['mid'] of adapter {adapter!r} must be one number, got {mid!r}")
            mid = mid[0]
        canonical["mid"] = check_weight(mid, f"block_weights['mid'] of adapter {adapter!r}")
    for group in ("down", "up"):
        if group not in block_weights:
            continue
        value = block_weights[group]
        where = f"block_weights[{group!r}]"
        if isinstance(value, Mapping):
            for key, per_block in value.items():
                match = _BLOCK_KEY.match(key) if isinstance(key, str) else None
                if match is None:
                    raise ValueError(f"{where} of adapter {adapter!r} has key {key!r}; "
                                     "keys look like 'block_0', 'block_1', ...")
                canonical[group][int(match.group(1))] = _block_value(per_block, f"{where}[{key!r}]", adapter)
        else:
            canonical[group]["*"] = _block_value(value, where, adapter)
    return canonical


def _block_value(value, where: str, adapter: str):
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{where} of adapter {adapter!r} is an empty list; give a number or one per layer")
        return tuple(check_weight(v, f"{where}[{j}] of adapter {adapter!r}") for j, v in enumerate(value))
    return check_weight(value, f"{where} of adapter {adapter!r}")


@dataclass(frozen=True)
class AdapterSetting:
    """One adapter's part in a blend (see the module docstring for the semantics)."""

    name: str
    weight: float = 1.0
    text_encoder_weight: float | None = None
    block_weights: dict | None = None
    step_range: tuple[float, float] = (0.0, 1.0)
    _blocks: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"adapter name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "weight", check_weight(self.weight, f"weight of adapter {self.name!r}"))
        if self.text_encoder_weight is not None:
            object.__setattr__(self, "text_encoder_weight", check_weight(
                self.text_encoder_weight, f"text_encoder_weight of adapter {self.name!r}"))
        object.__setattr__(self, "_blocks", normalize_block_weights(self.block_weights, self.name))
        object.__setattr__(self, "step_range", _check_step_range(self.step_range, self.name))

    @property
    def te_weight(self) -> float:
        """The text-encoder scale actually used."""
        return self.weight if self.text_encoder_weight is None else self.text_encoder_weight

    @property
    def blocks(self) -> dict | None:
        """Canonical block weights (``normalize_block_weights``), or None."""
        return self._blocks

    @property
    def full_range(self) -> bool:
        return self.step_range == (0.0, 1.0)

    def active_at(self, step: int, num_steps: int) -> bool:
        """Whether the UNet part is on at ``step`` of ``num_steps`` (start <= step/n < end)."""
        start, end = self.step_range
        return start <= step / num_steps < end


def _check_step_range(step_range, adapter: str) -> tuple[float, float]:
    if not isinstance(step_range, (list, tuple)) or len(step_range) != 2:
        raise ValueError(f"step_range of adapter {adapter!r} must be (start, end), got {step_range!r}")
    start, end = step_range
    for v in (start, end):
        if not _finite(v):
            raise ValueError(f"step_range of adapter {adapter!r} must hold two finite numbers, got "
                             f"{fields.shown(list(step_range))}")
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"step_range of adapter {adapter!r} = {tuple(step_range)!r}; "
                         "need 0 <= start < end <= 1 (fractions of the steps)")
    return (float(start), float(end))


@dataclass(frozen=True)
class Blend:
    """Any number of adapters, each with its own setting, plus an optional fuse for speed."""

    adapters: tuple[AdapterSetting, ...] = ()
    fuse: bool = False

    def __post_init__(self):
        adapters = tuple(self.adapters)
        for a in adapters:
            if not isinstance(a, AdapterSetting):
                raise ValueError(f"Blend.adapters must hold AdapterSetting objects, got {a!r}")
        names = [a.name for a in adapters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"Blend names adapter(s) {repeated} more than once; give each one setting")
        if not isinstance(self.fuse, bool):
            raise ValueError(f"Blend.fuse must be True or False, got {self.fuse!r}")
        if self.fuse:
            ranged = [a.name for a in adapters if not a.full_range]
            if ranged:
                raise ValueError(f"Blend.fuse=True cannot be combined with step ranges (adapters {ranged}): "
                                 "fused weights cannot change between steps; use fuse=False")
        object.__setattr__(self, "adapters", adapters)

    @classmethod
    def of(cls, weights: Mapping[str, float] | Iterable[AdapterSetting] = (), fuse: bool = False) -> "Blend":
        """``Blend.of({"a": 0.8, "b": -0.5})``: the common case of plain per-adapter weights."""
        if isinstance(weights, Mapping):
            weights = [AdapterSetting(name, weight) for name, weight in weights.items()]
        return cls(tuple(weights), fuse=fuse)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]

    @property
    def has_step_ranges(self) -> bool:
        return any(not a.full_range for a in self.adapters)

    def unet_active_at(self, step: int, num_steps: int) -> tuple[AdapterSetting, ...]:
        return tuple(a for a in self.adapters if a.active_at(step, num_steps))

    def alone(self, name: str) -> "Blend":
        """This blend's setting of one adapter, on its own (for comparison grids)."""
        setting = next((a for a in self.adapters if a.name == name), None)
        if setting is None:
            raise ValueError(f"adapter {name!r} is not in this blend; it has {self.names}")
        return Blend((setting,), fuse=self.fuse)

    @classmethod
    def parse(cls, spec, known: Sequence[str] | None = None, field: str = "lora") -> "Blend":
        """A blend from its text form (module docstring): shorthand or a JSON list; "" or None is no
        adapter. ``known``: the adapter names allowed (the model's presets); None accepts any name.

        Weights are checked before names, so a bad weight is reported as such. A name is a registry
        key: one that looks like a URL or a path is refused as a *name* ("https://x:0.5" split at its
        first ':' used to report a bad weight)."""
        if spec is None or (isinstance(spec, str) and not spec.strip()):
            return cls()
        fields.text(field, spec, fields.MAX_LORA_CHARS)
        if spec.lstrip()[:1] in "[{":  # JSON; an object is not a blend (it used to be read as shorthand)
            items = fields.json_value(field, spec, TEXT_FORMS)
            if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
                raise FieldError(field, spec, 'a JSON list of objects, each with a string "name" (and a "weight")')
        else:
            items = _shorthand(field, spec)
        if len(items) > fields.MAX_LIST_ITEMS:
            raise FieldError(field, spec, f"at most {fields.MAX_LIST_ITEMS} adapters")
        checked = [_checked_item(field, item) for item in items]
        for item in checked:
            if known is not None:
                unloaded = getattr(known, "unloaded", None) or {}  # names -> why they are gone (user adapters)
                if item["name"] not in known and item["name"] in unloaded:
                    raise FieldError(f"{field} name", item["name"], unloaded[item["name"]])
                fields.choice(f"{field} name", item["name"], known)
            elif not item["name"].strip():
                raise FieldError(f"{field} name", item["name"], "a non-empty adapter name")
        settings = [AdapterSetting(**item) for item in checked]
        names = [s.name for s in settings]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise FieldError(field, spec, f"each adapter once (named more than once: {repeated})")
        return cls(tuple(settings))

    @staticmethod
    def text(entries: Sequence[Mapping]) -> str:
        """The writer of ``parse``'s text: a blend's entries (``to_list``' dicts) as the short
        "name:weight, name:weight" when names and weights say everything, as JSON otherwise; "" for none."""
        if not entries:
            return ""
        if all(set(e) <= {"name", "weight"} for e in entries):
            return ", ".join(f"{e['name']}:{e.get('weight', 1.0):g}" for e in entries)
        return json.dumps(list(entries))

    def to_list(self) -> list[dict]:
        """The blend as JSON-ready dicts (the settings document; ``Blend.parse`` reads it back):
        name and weight, and each other field only when it is set."""
        items = []
        for a in self.adapters:
            item = {"name": a.name, "weight": a.weight}
            if a.text_encoder_weight is not None:
                item["text_encoder_weight"] = a.text_encoder_weight
            if a.block_weights is not None:
                item["block_weights"] = a.block_weights
            if not a.full_range:
                item["step_range"] = a.step_range
            items.append(item)
        return items


def _shorthand(field: str, spec: str) -> list[dict]:
    """"name:weight, name" -> items (weight 1.0 when left out)."""
    items = []
    for part in spec.split(","):
        part = part.strip()
        name, sep, weight = part.rpartition(":")
        if not sep:
            name, weight = part, ""
        if "/" in part or "\\" in part:
            named = name if sep and re.fullmatch(r"\s*[-+]?[0-9.eE]+\s*", weight) else part
            raise FieldError(f"{field} name", named.strip(),
                             "a preset name (LoRAs load from the registry, never from a URL or path)")
        if sep:
            # ASCII digits only: float() also reads "١" (Arabic-Indic 1) and "1_0" (issue 30)
            if not re.fullmatch(r"\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*", weight):
                raise FieldError(f"{field}[{name.strip()}].weight", weight.strip(),
                                 "a number written with ASCII digits (name:weight)")
            weight = float(weight)
        items.append({"name": name.strip(), "weight": weight if sep else 1.0})
    return items


def _checked_item(field: str, item: dict) -> dict:
    """One JSON/shorthand item -> AdapterSetting arguments, each refusal naming ``field[name].key``
    (the name itself is checked by the caller, after every item's values)."""
    name = item["name"]
    where = f"{field}[{name}]"
    unknown = set(item) - set(SETTING_FIELDS)
    if unknown:
        raise FieldError(where, sorted(unknown)[0], f"a field among {sorted(SETTING_FIELDS)}")
    low, high = WEIGHT_RANGE
    weight = fields.number(f"{where}.weight", item.get("weight", 1.0), low, high)
    te_weight = item.get("text_encoder_weight")
    if te_weight is not None:
        te_weight = fields.number(f"{where}.text_encoder_weight", te_weight, low, high)
    blocks = item.get("block_weights")
    if blocks is not None:
        if not isinstance(blocks, dict) or not set(blocks) <= set(BLOCK_GROUPS):
            raise FieldError(f"{where}.block_weights", blocks, 'an object with keys among "down", "mid", "up"')
        try:
            normalize_block_weights(blocks, name)
        except ValueError as error:
            raise FieldError(f"{where}.block_weights", blocks,
                             f"numbers in [{low:g}, {high:g}] per group, block or layer ({error})") from None
    step_range = item.get("step_range")
    if step_range is None:
        step_range = (0.0, 1.0)
    else:
        if not isinstance(step_range, (list, tuple)) or len(step_range) != 2:
            raise FieldError(f"{where}.step_range", step_range, "a pair [start, end] of fractions in [0, 1]")
        start, end = (fields.number(f"{where}.step_range", v, 0.0, 1.0) for v in step_range)
        if start >= end:
            raise FieldError(f"{where}.step_range", step_range, "start < end, both in [0, 1]")
        step_range = (start, end)
    return dict(name=name, weight=weight, text_encoder_weight=te_weight, block_weights=blocks, step_range=step_range)
