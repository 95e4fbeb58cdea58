"""The LoRA mixer: the presets, three adapter slots that edit the one blend text (the Generate
tab's), the comparison grid, and your own LoRA (upload or Hub id)."""
from __future__ import annotations

import functools
from types import SimpleNamespace

import gradio as gr

from .. import docs, labs, lora_ui, lora_user_ui
from .. import generate as gen
from .parts import endpoint, pixel_gallery, run_button


def _slot(i: int, presets: list[str]) -> list:
    """One adapter slot's controls, in lora_ui.SLOT_FIELDS order."""
    with gr.Accordion(f"Adapter {i + 1}", open=i < 2):
        with gr.Row():
            name = gr.Dropdown([lora_ui.NONE] + presets, value=lora_ui.NONE, label="Preset", interactive=bool(presets),
                               elem_id=f"slot-{i + 1}-preset")
            weight = gr.Slider(*gen.LORA_WEIGHT_RANGE, value=1.0, step=0.05, label="UNet weight",
                               elem_id=f"slot-{i + 1}-weight",
                               info="Picking a preset sets its weight from the presets table.")
            te_weight = gr.Slider(*gen.LORA_WEIGHT_RANGE, value=1.0, step=0.05, label="Text-encoder weight")
        with gr.Row():
            down = gr.Slider(0, 2, value=1, step=0.05, label="Down blocks x")
            mid = gr.Slider(0, 2, value=1, step=0.05, label="Mid block x")
            up = gr.Slider(0, 2, value=1, step=0.05, label="Up blocks x")
            start = gr.Slider(0, 1, value=0, step=0.05, label="Active from (fraction)")
            end = gr.Slider(0, 1, value=1, step=0.05, label="Active until")
    return [name, weight, te_weight, down, mid, up, start, end]


def _wire_slots(slots: list, blend: gr.Textbox, preset_list: list) -> None:
    """The slots edit the blend text: a preset picked sets its weights, any change writes the text."""
    for i, name in enumerate(slots[::lora_ui.SLOT_FIELDS]):
        weights = slots[i * lora_ui.SLOT_FIELDS + 1:i * lora_ui.SLOT_FIELDS + 3]
        (name.input(functools.partial(lora_ui.preset_weights, preset_list), name, weights, api_visibility="private",
                    queue=False)
         .then(lora_ui.slots_to_spec, slots, blend, api_visibility="private", queue=False))
    sliders = [c for c in slots if isinstance(c, gr.Slider)]
    gr.on([c.release for c in sliders], lora_ui.slots_to_spec, slots, blend, api_visibility="private", queue=False)


def user_lora_panel(blend: gr.Textbox, gpu: dict) -> None:
    """Bring your own LoRA (labapp/lora_user_ui.py): upload or Hub id, inspect, add to the blend, unload."""
    with gr.Accordion("Your own LoRA: upload a .safetensors or give a Hub id", open=False, elem_id="user-lora"):
        with gr.Row():
            file = gr.File(label=f"LoRA file (.safetensors, at most {lora_user_ui.max_upload_bytes() // 2**20} MB)",
                           file_types=[".safetensors"], file_count="single", elem_id="user-lora-file")
            with gr.Column():
                hub_id = gr.Textbox(label="or a Hub id (owner/name or owner/name/file.safetensors)", value="",
                                    max_length=lora_user_ui.MAX_HUB_ID_CHARS, elem_id="user-lora-hub")
                inspect_btn = gr.Button("Load and inspect", variant="primary", elem_id="user-lora-inspect")
                name = gr.Textbox(label="Loaded adapter (this session only)", interactive=False,
                                  elem_id="user-lora-name")
                with gr.Row():
                    add_btn = gr.Button("Add to blend", elem_id="user-lora-add")
                    unload_btn = gr.Button("Unload", variant="stop", elem_id="user-lora-unload")
        status = gr.Markdown("", elem_id="user-lora-status", elem_classes="run-status")
        summary = gr.Markdown("", elem_id="user-lora-summary")
        heat = gr.Plot(label="||(alpha/r) B A||_F per block", show_label=False, elem_id="user-lora-heat")
        with gr.Accordion("Full report (JSON)", open=False):
            report = gr.JSON(label="Inspection")
    endpoint(inspect_btn, lora_user_ui.lora_inspect, [file, hub_id], [name, summary, report, heat], "lora_inspect",
             show_progress_on=status, **lora_user_ui.FETCH_SLOT)  # outside the pipeline slot (issue 30)
    add_btn.click(lora_user_ui.add_to_blend, [blend, name], blend, api_visibility="private")
    endpoint(unload_btn, lora_user_ui.lora_unload, [name], [status], "lora_unload", show_progress_on=status, **gpu)


def build(engine, g, demo: gr.Blocks, preset_list: list, gpu: dict) -> SimpleNamespace:
    """Lay out the mixer (``g``: the Generate tab's namespace: the blend text ``g.form["lora"]`` is the
    state, its chips and these slots follow it) and wire it."""
    blend, presets = g.form["lora"], [p.id for p in preset_list]
    gr.Markdown(docs.LAB_INTROS["lora"], elem_classes="lab-note")
    example = lora_ui.example_spec(preset_list)
    with gr.Row(equal_height=True, elem_id="mixer-chip-row"):  # first: the blend now, and the run that shows it
        mixer_chip = gr.Markdown(lora_ui.chips([]), elem_id="mixer-chip", elem_classes="lora-chip", min_width=200)
        example_blend = gr.Button(f"Example: {example or '-'}", size="sm", scale=0, min_width=160,
                                  interactive=bool(example), elem_id="example-blend", elem_classes="small-button")
        mixer_clear = gr.Button("No LoRA", size="sm", scale=0, min_width=90, elem_classes="small-button")
    button, status, stop = run_button("Comparison grid: none / each / blend", "lora-status", stop=True)
    gallery = pixel_gallery("LoRA comparison", 5, elem_id="lora-grid")
    gr.Markdown(lora_ui.BLEND_NOTE, elem_classes="lab-note")
    gr.Markdown(lora_ui.presets_table(engine.lora_presets()), elem_classes="wide-table")
    slots = [c for i in range(lora_ui.NUM_SLOTS) for c in _slot(i, presets)]
    user_lora_panel(blend, gpu)

    # one blend: the text is the state, the slots edit it and follow it (labapp/lora_ui.py)
    gr.on([blend.change, demo.load], lora_ui.spec_to_slots, blend, [g.lora_chip, mixer_chip, *slots],
          api_visibility="private", show_progress="hidden", queue=False)
    _wire_slots(slots, blend, preset_list)
    f = g.form
    event = endpoint(button, labs.lora_grid, [f["prompt"], blend, f["seed"], f["steps"], f["guidance_scale"],
                                              f["scheduler"]], gallery, "lora_grid", show_progress_on=status, **gpu)
    stop.click(None, cancels=[event], api_visibility="private", queue=False)
    example_blend.click(functools.partial(lora_ui.example_spec, preset_list), None, blend, api_visibility="private",
                        queue=False)
    gr.on([g.clear_lora.click, mixer_clear.click], lambda: "", None, blend, api_visibility="private", queue=False)
    g.lora_chip.input(lora_ui.chips_to_spec, [blend, g.lora_chip], blend, api_visibility="private", queue=False,
                      show_progress="hidden")
    return SimpleNamespace(slots=slots, mixer_chip=mixer_chip)
