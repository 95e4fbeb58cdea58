"""The page's views without a browser: the one LoRA blend (text <-> slots <-> chips), the explorer's
precomputed frames, the plots' legends and axes, the model dropdown and the warm-up."""
from __future__ import annotations

import re

import gradio as gr
import numpy as np
import pytest

import torch

from labapp import engine as eng
from labapp import generate as gen
from labapp import lora_ui, models_ui, plots, trace_views, warmup
from pipelines.lora.presets import available_presets


@pytest.fixture(scope="module")
def tiny():
    from testkit.app_server import tiny_engine

    torch.set_num_threads(1)
    return eng.install(tiny_engine())


@pytest.fixture(scope="module")
def embedded():
    torch.set_num_threads(1)
    return eng.load_engine(eng.EMBEDDED_MODEL, "test", "cpu")


# ------------------------------------------------------------------------------ one blend

def test_slots_write_the_short_form_and_json_only_when_needed():
    empty = list(lora_ui.EMPTY_SLOT)
    outline = ["outline", 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    night = ["night", 0.4, 0.4, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert lora_ui.slots_to_spec(*outline, *night, *empty) == "outline:1, night:0.4"
    assert lora_ui.slots_to_spec(*empty, *empty, *empty) == ""
    gated = ["night", 0.5, 0.2, 1.0, 0.5, 1.0, 0.0, 0.4]
    spec = lora_ui.slots_to_spec(*gated, *empty, *empty)
    assert spec.startswith("[") and '"text_encoder_weight": 0.2' in spec and '"step_range": [0.0, 0.4]' in spec
    assert '"block_weights": {"mid": 0.25}' in spec  # "Mid block x 0.5" of weight 0.5: mid at 0.25


def plain(values: list) -> list:
    """Slot values as the page shows them (a name slot is an update carrying its value and choices)."""
    return [v["value"] if isinstance(v, dict) and "value" in v else v for v in values]


def test_text_and_slots_round_trip(embedded):
    eng.install(embedded)
    spec = '[{"name": "night", "weight": 0.5, "text_encoder_weight": 0.2, "block_weights": {"mid": 0.25}, ' \
           '"step_range": [0.1, 0.4]}, {"name": "pastel", "weight": 1.0}]'
    editor, mixer_line, *slots = lora_ui.spec_to_slots(spec)
    assert mixer_line == "**LoRA active:** `night 0.5` `pastel 1`"
    assert editor["value"] == ["night", "pastel"] and editor["choices"][:2] == [("night 0.5", "night"), ("pastel 1", "pastel")]
    assert ("outline (add at 1)", "outline") in editor["choices"] and editor["info"] == lora_ui.CHIPS_INFO
    assert plain(slots[:8]) == ["night", 0.5, 0.2, 1.0, 0.5, 1.0, 0.1, 0.4]
    assert plain(slots[8:10]) == ["pastel", 1.0] and plain(slots)[16] == lora_ui.NONE
    assert slots[0]["choices"] == [lora_ui.NONE] + [p.id for p in embedded.lora_presets()]
    assert lora_ui._parse(lora_ui.slots_to_spec(*plain(slots))) == lora_ui._parse(spec)  # the one parser, both ways


def test_a_chip_removed_or_added_edits_the_blend_text(embedded):
    eng.install(embedded)
    spec = '[{"name": "night", "weight": 0.5, "step_range": [0.1, 0.4]}, {"name": "pastel", "weight": 1.0}]'
    # removing "pastel" keeps night's every setting; picking "outline" adds it at the table's weight
    assert lora_ui._parse(lora_ui.chips_to_spec(spec, ["night", "outline"])) == [
        {"name": "night", "weight": 0.5, "step_range": (0.1, 0.4)}, {"name": "outline", "weight": 1.0}]
    assert lora_ui.chips_to_spec("outline:1, night:0.4", ["night"]) == "night:0.4"
    assert lora_ui.chips_to_spec("outline:1", []) == lora_ui.chips_to_spec("outline:1", None) == ""
    for forged in (["no-such-adapter"], "night", [3], [["night"]]):  # a forged event: refused, naming `lora`
        with pytest.raises(gr.Error, match="lora"):
            lora_ui.chips_to_spec("", forged)


def test_invalid_or_too_long_text_leaves_the_slots_and_says_why(embedded):
    eng.install(embedded)
    editor, line, *slots = lora_ui.spec_to_slots("night:lots")
    assert line.startswith("**LoRA:** not applied") and "night" in line and "lots" in line
    assert editor["info"].startswith("LoRA: not applied") and "value" not in editor  # the chips stay
    assert all(v == gr.skip() for v in slots)  # the slots keep what they show
    editor, mixer_line, *slots = lora_ui.spec_to_slots("outline:1, night:1, outline:0.5")  # an adapter twice
    assert "not applied" in mixer_line and "not applied" in editor["info"] and all(v == gr.skip() for v in slots)


def test_picking_a_preset_takes_the_table_weight():
    presets = available_presets("tiny-shapes")
    assert lora_ui.preset_weights(presets, "night") == (1.0, 1.0)
    assert all(isinstance(v, dict) for v in lora_ui.preset_weights(presets, lora_ui.NONE))


def test_the_example_blend_is_the_tables_best_pair():
    presets = available_presets("tiny-shapes")
    assert lora_ui.example_spec(presets) == "outline:1, night:1"
    assert lora_ui.example_spec(presets[:1]) == ""


# ------------------------------------------------------------------------------ explorer frames

def test_explorer_frames_hold_every_step_once(tiny):
    out = list(gen.generate("a red circle", "", "DDIM", 4, 5.0, 7, preview_every=0, progress=lambda *a, **k: None))
    trace = out[-1][-1]
    page = trace_views.explore_frames(trace, "linear")
    steps = re.findall(r"data-step='(\d+)'", page)
    assert steps == ["1", "2", "3", "4"] and "data-steps='4'" in page
    assert page.count("<img src='data:image/png;base64,") == 8  # x_t and x0 per step
    assert page.count(" hidden>") == 3 and "data-step='4'>" in page  # the last step shown first
    assert "data-step='2'>" in trace_views.explore_frames(trace, "linear", shown=2)
    eps_fig, info = trace_views.explore_details(trace, 3)
    assert info.startswith("**step 3 / 4**") and eps_fig is not None
    assert trace_views.explore_frames(None) == trace_views.NO_FRAMES
    with pytest.raises(gr.Error, match="decoder"):
        trace_views.explore_frames(trace, "nope")


# ------------------------------------------------------------------------------ plots

def test_guidance_plot_legend_below_and_constant_w_padded():
    fig = plots.guidance_over_steps(list(range(1, 26)), np.linspace(0.1, 0.5, 25), [3.0] * 25, 12)
    ax, twin = fig.axes[:2]
    assert ax.get_legend() is None and twin.get_legend() is None and len(fig.legends) == 1  # off the axes
    lo, hi = twin.get_ylim()
    assert lo <= 0 and hi >= 3.5  # not matplotlib's 2.85-3.15 band for a constant 3
    lo, hi = plots.guidance_over_steps([1, 2, 3], [0.1, 0.2, 0.3], [1.0, 4.0, 7.5]).axes[1].get_ylim()
    assert lo <= 0 and hi > 7.5


def test_schedule_markers_nest_so_coinciding_picks_stay_visible():
    train = {"t": np.arange(1000), "alpha_bar": np.linspace(1, 0.01, 1000), "sigma": np.linspace(0.01, 10, 1000),
             "log_snr": np.linspace(5, -5, 1000)}
    same = {"timesteps": [999, 500, 0], "num_model_calls": 3}
    fig = plots.schedule_curves(train, {"DDIM": same, "Euler a": same})
    ddim, euler = fig.axes[0].collections[:2]
    assert ddim.get_sizes()[0] >= euler.get_sizes()[0] * 1.4  # DDIM's ring around Euler a's marker
    assert not ddim.get_facecolors().any() and fig.axes[0].get_legend() is None and len(fig.legends) == 1


def test_heatmap_colour_bar_starts_at_zero():
    fig = plots.heatmap(np.abs(np.random.default_rng(0).normal(size=(8, 8))), "x", vmin=0.0)
    assert fig.axes[0].images[0].get_clim()[0] == 0.0


# ------------------------------------------------------------------------------ model dropdown, warm-up

def test_model_choices_say_why_a_hub_model_may_not_load(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models_ui, "_cached", lambda repo: False)
    labels = dict((value, label) for label, value in models_ui.choices(cuda=False))
    assert labels["tiny-shapes"] == "tiny-shapes"
    assert labels["sd15"] == "sd15 (not downloaded, and HF_HUB_OFFLINE is set)"


def test_a_failed_switch_reverts_with_one_short_line(tiny, monkeypatch):
    def offline(model_id, reason, **kwargs):
        raise OSError("Cannot load model x: the model is not fully cached locally (Cannot find an appropriate "
                      "cached snapshot folder ...\nmore lines")

    monkeypatch.setattr(eng, "load_engine", offline)
    status, dropdown = models_ui.switch_model("sd15")
    assert status == ("**Could not load `sd15`:** it is not in the local cache and the Hub cannot be reached. "
                      "Still using `tiny-test`.")
    assert dropdown["value"] == "tiny-test" and eng.current() is tiny
    with pytest.raises(gr.Error, match="not a registered model"):
        models_ui.switch_model("attacker/evil-sd")


def test_warm_up_loads_the_presets_and_leaves_no_trace(embedded):
    from labapp import trace_store

    eng.install(embedded)
    before = len(trace_store.STORE)
    said = warmup.warm_up(embedded)
    assert set(embedded.blender.adapters) >= {"outline", "night", "pastel"}
    assert said.startswith("warmed up in ") and "LoRA presets outline, night, pastel loaded" in said
    assert len(trace_store.STORE) == before
