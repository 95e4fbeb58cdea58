"""The one LoRA blend of the page: its text (the `lora` spec that /generate and /lora_grid take),
the mixer's slot controls as an editor of that text, and its display as chips.

One source of truth: the Generate tab's blend text. Picking a preset or moving a slider in the
mixer writes the text (``slots_to_spec``); typing a blend, an example row, "No LoRA" or an API
client's value sets the slots from the text (``spec_to_slots``), so the slots always show what
Generate and the comparison grid run.
"""
from __future__ import annotations

import json

import gradio as gr

NUM_SLOTS = 3
SLOT_FIELDS = 8  # name, weight, text-encoder weight, down, mid, up, step start, step end
NONE = "(none)"
EMPTY_SLOT = (NONE, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0)
# The mixer's example blend: both adapters at the weight the presets table gives (1). Chosen from
# BENCHMARKS.md, "LoRA weights and what the prompt keeps": outline + night at 1 keeps the prompt's
# color for 0.95 and its shape for 0.83 of 100 prompts, the best pair there; in-between weights lose
# it (0.5 each: color 0.19; the old example, night at 0.8, turned the red circle orange).
EXAMPLE_PAIR = ("outline", "night")
BLEND_NOTE = ("Each adapter was trained at weight 1 only: at weights between about 0.3 and 0.9 the "
              "prompt's color and shape can get lost (a red circle turns orange, a circle a triangle), "
              "while near 0 and near 1 they hold. Measured for every preset and pair in BENCHMARKS.md, "
              "\"LoRA weights and what the prompt keeps\".")


def _slot_entry(name, weight, te, down, mid, up, start, end) -> dict | None:
    if not name or name == NONE:
        return None
    entry = {"name": name, "weight": float(weight)}
    if te is not None and float(te) != float(weight):
        entry["text_encoder_weight"] = float(te)
    # the "x" sliders multiply the UNet weight per block group; block_weights are absolute scales that
    # override `weight` for the groups they name (pipelines/lora/settings.py), so only those != 1 x
    blocks = {k: round(float(weight) * float(m), 4) for k, m in (("down", down), ("mid", mid), ("up", up))
              if float(m) != 1.0}
    if blocks:
        entry["block_weights"] = blocks
    if (start, end) != (0.0, 1.0):
        entry["step_range"] = [start, end]
    return entry


def blend_to_spec(blend: list[dict]) -> str:
    """A blend as text: the short "name:weight, name:weight" when that says everything, JSON otherwise."""
    if not blend:
        return ""
    if all(set(a) <= {"name", "weight"} for a in blend):
        return ", ".join(f"{a['name']}:{a.get('weight', 1.0):g}" for a in blend)
    return json.dumps(blend)


def slots_to_spec(*values) -> str:
    """Flat slot values (SLOT_FIELDS per slot) -> the blend text ("" if every slot is empty)."""
    entries = [_slot_entry(*values[i:i + SLOT_FIELDS]) for i in range(0, len(values), SLOT_FIELDS)]
    return blend_to_spec([e for e in entries if e])


def blend_slots(blend: list[dict]) -> list:
    """A parsed blend -> flat slot values (empty slots after it). A blend of more adapters than
    slots is refused by the caller, never cut silently."""
    values = []
    for a in blend[:NUM_SLOTS]:
        weight = a["weight"]
        te = a.get("text_encoder_weight")
        blocks = a.get("block_weights") or {}
        start, end = a.get("step_range") or (0.0, 1.0)
        times = [blocks[k] / weight if k in blocks and weight else 1.0 for k in ("down", "mid", "up")]
        values += [a["name"], weight, weight if te is None else te, *times, start, end]
    for _ in range(NUM_SLOTS - min(len(blend), NUM_SLOTS)):
        values += list(EMPTY_SLOT)
    return values


def preset_weights(presets, name):
    """Picking a preset in a slot: its UNet and text-encoder weights jump to the table's default weight."""
    weights = {p.id: float(p.default_weight) for p in presets}
    if name not in weights:
        return gr.skip(), gr.skip()
    return weights[name], weights[name]


def example_spec(presets) -> str:
    """The mixer's example blend for this model's presets: EXAMPLE_PAIR at the table's weights when the
    model has both, else its first two presets; "" with fewer than two."""
    ids = {p.id: p for p in presets}
    pair = [ids[n] for n in EXAMPLE_PAIR if n in ids]
    if len(pair) < 2:
        pair = list(presets[:2])
    if len(pair) < 2:
        return ""
    return blend_to_spec([{"name": p.id, "weight": float(p.default_weight)} for p in pair])


def chips(blend: list[dict]) -> str:
    """A parsed blend (``Blend.parse(...).to_list()``) as one line of chips (Generate tab and mixer)."""
    if not blend:
        return "**LoRA:** none (pick adapters in the LoRA mixer, or an example below)"
    parts = [f"`{a['name']} {a['weight']:g}`" for a in blend]
    return "**LoRA active:** " + " ".join(parts)


def presets_table(presets) -> str:
    if not presets:
        return "_No LoRA presets are available for this model: the mixer is disabled._"
    rows = ["| preset | what it does | trigger words | default weight |", "|---|---|---|---|"]
    for p in presets:
        words = ", ".join(p.trigger_words) or "-"
        rows.append(f"| `{p.id}` ({p.name}) | {p.description} | {words} | {p.default_weight:g} |")
    return "\n".join(rows)


def _parse(spec) -> list[dict]:
    """The blend text through the one blend parser (pipelines.lora.settings.Blend.parse); ValueError
    (a FieldError naming the field) when it is not a valid blend."""
    from pipelines.lora.settings import Blend

    from . import engine as eng
    from . import lora_user_ui

    return Blend.parse(spec, lora_user_ui.limits(eng.current()).presets).to_list()


def describe(spec) -> str:
    """The chip line for the blend text ``spec`` (or why it is not a valid blend)."""
    try:
        blend = _parse(spec)
    except ValueError as error:
        return f"**LoRA:** not applied, {error}"
    return chips(blend)


def spec_to_slots(spec) -> tuple:
    """The blend text -> (chip line, chip line, *slot values): the slots follow valid text; while the
    text is not a valid blend (half typed, or more adapters than slots) they stay as they are and
    the chip line says why."""
    keep = [gr.skip()] * (NUM_SLOTS * SLOT_FIELDS)
    try:
        blend = _parse(spec)
    except ValueError as error:
        line = f"**LoRA:** not applied, {error}"
        return (line, line, *keep)
    line = chips(blend)
    if len(blend) > NUM_SLOTS:
        return (line, line + f" (the mixer shows {NUM_SLOTS} slots: edit the text for more)", *keep)
    if any(not all(isinstance(v, (int, float)) for v in (a.get("block_weights") or {}).values()) for a in blend):
        return (line, line + " (per-block lists: the slots show one weight per block group, edit the text)", *keep)
    return (line, line, *blend_slots(blend))
