"""The one LoRA blend of the page: its text (the `lora` spec that /generate and /lora_grid take),
the mixer's slot controls as an editor of that text, and its display as chips.

One source of truth: the Generate tab's blend text. Picking a preset or moving a slider in the
mixer writes the text (``slots_to_spec``); typing a blend, an example row, "No LoRA" or an API
client's value sets the slots from the text (``spec_to_slots``), so the slots always show what
Generate and the comparison grid run.
"""
from __future__ import annotations


import gradio as gr

from pipelines.lora.settings import Blend

from . import validation as check

NUM_SLOTS = 3
SLOT_FIELDS = 8  # name, weight, text-encoder weight, down, mid, up, step start, step end
NONE = "(none)"
EMPTY_SLOT = (NONE, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0)
# The mixer's example blend: both adapters at the weight the presets table gives (1). Chosen from
# BENCHMARKS.md, "LoRA weights and what the prompt keeps": outline + night at 1 keeps the prompt's
# color for 0.94 and its shape for 0.72 of 100 prompts, the best pair at full weight there.
EXAMPLE_PAIR = ("outline", "night")
BLEND_NOTE = ("Each preset works as a dial: at any weight from 0 to 1 it keeps the prompt's color in 82-100% "
              "of images, outline and night together at equal weights in 84-100% (night loses some shapes "
              "between 0.5 and 0.9, where the background turns dark). Pastel with another preset keeps the color "
              "up to half weight (89-100%); above that the other preset takes over more and more of pastel's part, "
              "and a red circle can come out orange (63-86% keep the color). Measured for every preset and pair in "
              "BENCHMARKS.md, \"LoRA weights and what the prompt keeps\".")


def _slot_entry(name, weight, te, down, mid, up, start, end) -> dict | None:
    if not name or name == NONE:
        return None
    # the slots are a private event anyone can call: a NaN or a text weight was written into the blend
    # text as it came (issue 30); each value is checked by name (the blend is checked again when it runs)
    label = f"lora slot {str(name)[:40]}"
    weight = check.number(f"{label} weight", weight, -1e6, 1e6)
    te = None if te is None else check.number(f"{label} text encoder weight", te, -1e6, 1e6)
    down, mid, up = (check.number(f"{label} {part} x", value, -1e6, 1e6)
                     for part, value in (("down", down), ("mid", mid), ("up", up)))
    start, end = (check.number(f"{label} step range {part}", value, 0.0, 1.0) for part, value in (("start", start), ("end", end)))
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


blend_to_spec = Blend.text  # the blend's text writer lives beside its reader, Blend.parse


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
    """A parsed blend (``Blend.parse(...).to_list()``) as one line of chips (the mixer's line)."""
    if not blend:
        return "**LoRA:** none yet: pick adapters in the slots below, or try the example beside this line"
    parts = [f"`{a['name']} {a['weight']:g}`" for a in blend]
    return "**LoRA active:** " + " ".join(parts)


CHIPS_INFO = "LoRA active (name weight): x on a chip removes it; pick a name to add it at its table weight."
CHIPS_NONE = "LoRA: none. Pick a name to add an adapter (or blend them in the LoRA mixer)."


def chip_editor(blend: list[dict] | None, names: list[str], defaults: dict, error: str = "") -> dict:
    """Generate's chip line as an update of its multiselect dropdown: one removable chip per adapter
    of the blend (labelled "name weight", valued by name) and the other names this session may add.
    ``blend`` None: the text is not a valid blend (the chips stay, the info says why)."""
    if blend is None:
        return gr.update(info=f"LoRA: not applied, {error}")
    active = [a["name"] for a in blend]
    choices = [(f"{a['name']} {a['weight']:g}", a["name"]) for a in blend]
    choices += [(f"{n} (add at {defaults.get(n, 1.0):g})", n) for n in names if n not in active]
    info = CHIPS_INFO if active else CHIPS_NONE  # the chips say which adapters, at which weight
    return gr.update(choices=choices, value=active, info=info, interactive=bool(choices))


@check.gradio_errors
def chips_to_spec(spec, chosen) -> str:
    """The chip dropdown's new value (adapter names) -> the blend text: adapters whose chip was removed
    leave the blend (the others keep every setting), names picked are added at their default weight.
    The result is checked like any blend text (an unknown name is refused, naming `lora`)."""
    from . import engine as eng
    from . import lora_user_ui

    if chosen is None:
        chosen = []
    if not isinstance(chosen, list) or not all(isinstance(n, str) for n in chosen):
        raise check.fail("lora", chosen, "a list of adapter names")
    blend = _parse(spec)
    kept = [a for a in blend if a["name"] in chosen]
    defaults = _default_weights(eng.current())
    added = [{"name": n, "weight": defaults.get(n, 1.0)} for n in dict.fromkeys(chosen)
             if n not in {a["name"] for a in blend}]
    new = blend_to_spec(kept + added)
    lora_user_ui.used(_parse(new))  # refuses names this session may not use
    return new


def _default_weights(engine) -> dict:
    return {p.id: float(p.default_weight) for p in engine.lora_presets()}


def _names(engine) -> list[str]:
    from . import lora_user_ui

    return lora_user_ui.blend_names(engine)


def presets_table(presets) -> str:
    if not presets:
        return ("_No LoRA presets ship for this model. Load your own adapter below (\"Your own LoRA\"): it joins "
                "the slots' choices and Generate's chips for this session._")
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


def spec_to_slots(spec) -> tuple:
    """The blend text -> (Generate's chip editor, the mixer's chip line, *slot values): the slots follow
    valid text; while the text is not a valid blend (half typed, or more adapters than slots) they stay
    as they are and the chip lines say why. Each slot's name list is this session's: the model's
    presets and the user's own adapters."""
    from . import engine as eng

    engine = eng.current()
    names = _names(engine)
    defaults = _default_weights(engine)
    keep = [gr.skip()] * (NUM_SLOTS * SLOT_FIELDS)
    try:
        blend = _parse(spec)
    except ValueError as error:
        line = f"**LoRA:** not applied, {error}"
        return (chip_editor(None, names, defaults, str(error)), line, *keep)
    editor = chip_editor(blend, names, defaults)
    line = chips(blend)
    if len(blend) > NUM_SLOTS:
        return (editor, line + f" (the mixer shows {NUM_SLOTS} slots: edit the text for more)", *keep)
    if any(not all(isinstance(v, (int, float)) for v in (a.get("block_weights") or {}).values()) for a in blend):
        return (editor, line + " (per-block lists: the slots show one weight per block group, edit the text)", *keep)
    values = blend_slots(blend)
    for i in range(0, len(values), SLOT_FIELDS):  # the name: its choices are this session's names
        values[i] = gr.update(value=values[i], choices=[NONE] + names, interactive=bool(names))
    return (editor, line, *values)
