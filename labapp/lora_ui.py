"""LoRA mixer slots -> the `lora` spec string that /generate and /lora_grid take."""
from __future__ import annotations

import json

NUM_SLOTS = 3
SLOT_FIELDS = 8  # name, weight, text-encoder weight, down, mid, up, step start, step end


def slots_to_spec(*values) -> str:
    """Flat slot values (SLOT_FIELDS per slot) -> JSON list of AdapterSetting dicts ("" if none)."""
    blend = []
    for i in range(0, len(values), SLOT_FIELDS):
        name, weight, te, down, mid, up, start, end = values[i:i + SLOT_FIELDS]
        if not name or name == "(none)":
            continue
        entry = {"name": name, "weight": weight, "text_encoder_weight": te}
        if (down, mid, up) != (1.0, 1.0, 1.0):
            entry["block_weights"] = {"down": down, "mid": mid, "up": up}
        if (start, end) != (0.0, 1.0):
            entry["step_range"] = [start, end]
        blend.append(entry)
    return json.dumps(blend) if blend else ""


def presets_table(presets) -> str:
    if not presets:
        return "_No LoRA presets are available for this model: the mixer is disabled._"
    rows = ["| preset | what it does | trigger words | default weight |", "|---|---|---|---|"]
    for p in presets:
        words = ", ".join(p.trigger_words) or "-"
        rows.append(f"| `{p.id}` ({p.name}) | {p.description} | {words} | {p.default_weight:g} |")
    return "\n".join(rows)
