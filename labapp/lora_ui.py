"""LoRA mixer slots <-> the `lora` spec string that /generate and /lora_grid take, and its display."""
from __future__ import annotations

import json

NUM_SLOTS = 3
SLOT_FIELDS = 8  # name, weight, text-encoder weight, down, mid, up, step start, step end
NONE = "(none)"
# The example blend: the first preset at its default weight, the second at 0.8. Measured on the embedded
# model, seed 0, "a large red circle in the top left": outline 1 + night 0.8 keeps a circle, while night
# alone at 0.6 draws a green triangle and outline 1 + night 1 a triangle (see BENCHMARKS "App").
EXAMPLE_SECOND_WEIGHT = 0.8


def slots_to_spec(*values) -> str:
    """Flat slot values (SLOT_FIELDS per slot) -> JSON list of AdapterSetting dicts ("" if none)."""
    blend = []
    for i in range(0, len(values), SLOT_FIELDS):
        name, weight, te, down, mid, up, start, end = values[i:i + SLOT_FIELDS]
        if not name or name == NONE:
            continue
        entry = {"name": name, "weight": weight, "text_encoder_weight": te}
        if (down, mid, up) != (1.0, 1.0, 1.0):
            entry["block_weights"] = {"down": down, "mid": mid, "up": up}
        if (start, end) != (0.0, 1.0):
            entry["step_range"] = [start, end]
        blend.append(entry)
    return json.dumps(blend) if blend else ""


def example_slots(presets) -> list[tuple[str, float]]:
    """(preset, weight) per slot for the mixer's opening state: a two-adapter example blend of the
    model's presets, so "Comparison grid" shows something on the first click; (none) otherwise."""
    picks = [(p.id, float(p.default_weight)) for p in presets[:2]]
    if len(picks) == 2:
        picks[1] = (picks[1][0], EXAMPLE_SECOND_WEIGHT)
    return picks + [(NONE, 1.0)] * (NUM_SLOTS - len(picks))


def example_spec(presets) -> str:
    """The spec of ``example_slots`` (what the slots' change handler would write)."""
    values = []
    for name, weight in example_slots(presets):
        values += [name, weight, weight, 1.0, 1.0, 1.0, 0.0, 1.0]
    return slots_to_spec(*values)


def chips(blend: list[dict]) -> str:
    """A parsed blend (generate.parse_lora) as one line of chips for the Generate tab."""
    if not blend:
        return "**LoRA:** none (pick a blend in the LoRA mixer, or an example below)"
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


def describe(spec) -> str:
    """The Generate tab's chip line for the blend text ``spec`` (or why it is not a valid blend)."""
    import gradio as gr

    from . import engine as eng
    from . import lora_user_ui
    from .generate import parse_lora

    try:
        blend = parse_lora("lora", spec, lora_user_ui.blend_names(eng.current()))
    except gr.Error as error:
        return f"**LoRA:** not applied, {error.message}"
    return chips(blend)
