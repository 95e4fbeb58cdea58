"""The LoRA preset registry (lora_presets/presets.json, pipelines/lora/presets.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import pipelines.lora.files as lora_files
import pipelines.lora.presets as lora_presets
from pipelines.lora.presets import (
    available_presets,
    get_preset,
    load_presets,
    preset_available,
    preset_file,
    presets_for_family,
)

GOOD = {
    "id": "outline",
    "name": "Outline",
    "family": "tiny-shapes",
    "source": {"path": "lora_presets/tiny-shapes/outline.safetensors"},
    "trigger_words": ["outline"],
    "default_weight": 1.0,
    "description": "Hollow shapes.",
}


def write_registry(folder: Path, *entries) -> Path:
    path = folder / "presets.json"
    path.write_text(json.dumps({"presets": list(entries)}), encoding="utf-8")
    return path


def test_shipped_registry_is_valid_and_complete():
    presets = load_presets()
    by_id = {p.id: p for p in presets}
    for pid in ("outline", "night", "pastel"):
        p = by_id[pid]
        assert p.family == "tiny-shapes" and p.path == f"lora_presets/tiny-shapes/{pid}.safetensors"
    lcm = by_id["lcm-sd15"]
    assert (lcm.repo, lcm.weight_name, lcm.scheduler_hint) == (
        "latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors", "LCM")
    hub_sd15 = [p for p in presets if p.family == "sd15" and not p.is_local]
    assert len(hub_sd15) >= 4 and all(p.weight_name.endswith(".safetensors") for p in hub_sd15)


def test_presets_for_family_offers_only_that_family():
    assert [p.id for p in presets_for_family("tiny-shapes")] == ["outline", "night", "pastel"]
    assert all(p.family == "sd15" for p in presets_for_family("sd15"))
    assert presets_for_family("sdxl") == []


def test_hub_presets_available_only_online_or_cached(monkeypatch):
    monkeypatch.setattr(lora_presets, "hub_file_cached", lambda repo, name, revision=None: repo.startswith("latent-"))
    assert [p.id for p in available_presets("sd15", offline=True)] == ["lcm-sd15"]
    assert len(available_presets("sd15", offline=False)) == len(presets_for_family("sd15"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert [p.id for p in available_presets("sd15")] == ["lcm-sd15"]


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A repo root with an empty lora_presets/tiny-shapes/ (the trained files may exist in the real one)."""
    (tmp_path / "lora_presets" / "tiny-shapes").mkdir(parents=True)
    monkeypatch.setattr(lora_files, "REPO_ROOT", tmp_path)
    return tmp_path


def test_missing_embedded_file_is_unavailable_and_a_clear_error(fake_repo):
    registry = write_registry(fake_repo, GOOD)
    (outline,) = load_presets(registry)
    assert not preset_available(outline) and available_presets("tiny-shapes", presets=[outline]) == []
    with pytest.raises(FileNotFoundError, match=r"preset 'outline': weight file lora_presets/tiny-shapes/outline"
                                                r"\.safetensors does not exist yet"):
        preset_file(outline)


def test_embedded_preset_loads_into_a_blender(fake_repo):
    from pipelines.lora import Blend, LoraBlender
    from testkit.lora_factory import random_lora, save_diffusers_lora
    from testkit.stock_pipe import make_pipe, run

    pipe = make_pipe()
    lora = random_lora(pipe.unet, pipe.text_encoder, seed=7)
    save_diffusers_lora(lora, str(fake_repo / "lora_presets" / "tiny-shapes"), "outline.safetensors")
    (outline,) = load_presets(write_registry(fake_repo, GOOD))
    assert available_presets("tiny-shapes", presets=[outline]) == [outline]

    blender = LoraBlender(pipe)
    with pytest.raises(ValueError, match=r"preset 'outline' is for base family 'tiny-shapes', the loaded model is 'sd15'"):
        blender.load_preset(outline, family="sd15")
    loaded = blender.load_preset(outline, family="tiny-shapes")
    assert loaded.name == "outline" and loaded.preset == outline
    assert blender.load_preset(outline) is loaded  # loaded once
    with blender.apply(Blend.of({"outline": outline.default_weight})) as p:
        assert run(p).shape == (1, 16, 16, 3)
    assert outline.prompt_with_triggers("a red circle") == "outline, a red circle"
    assert outline.prompt_with_triggers("an outline circle") == "an outline circle"


@pytest.mark.parametrize("change, field, message", [
    ({"default_weight": 3.0}, "default_weight", r"= 3\.0 is out of range \[-2, 2\]"),
    ({"default_weight": "1"}, "default_weight", r"finite number"),
    ({"source": {"path": "lora_presets/tiny-shapes/outline.ckpt"}}, "source", r"pickle checkpoint"),
    ({"source": {"repo": "someone/lora", "weight_name": "pytorch_lora_weights.bin"}}, "source", r"pickle checkpoint"),
    ({"source": {"path": "../outside.safetensors"}}, "source", r"must lie inside lora_presets/"),
    ({"source": {"repo": "not a repo", "weight_name": "x.safetensors"}}, "source", r"not a Hub repo id"),
    ({"source": "lora_presets/x.safetensors"}, "source", r"must be \{'path'"),
    ({"trigger_words": "outline"}, "trigger_words", r"list of non-empty strings"),
    ({"scheduler_hint": "Warp drive"}, "scheduler_hint", r"'Warp drive' is not a scheduler name"),
    ({"id": "Outline Style"}, "id", r"lowercase"),
    ({"name": ""}, "name", r"non-empty string"),
    ({"colour": "red"}, "colour", r"is not a preset field"),
])
def test_malformed_preset_names_file_entry_and_field(tmp_path, change, field, message):
    registry = write_registry(tmp_path, {**GOOD, "id": "night"}, {**GOOD, **change})
    with pytest.raises(ValueError, match=message) as info:
        load_presets(registry)
    text = str(info.value)
    assert str(registry) in text and "preset #1" in text and f"field {field!r}" in text


def test_missing_field_duplicate_id_and_bad_json(tmp_path):
    entry = dict(GOOD)
    del entry["family"]
    with pytest.raises(ValueError, match=r"preset #0 \('outline'\), field 'family': is missing"):
        load_presets(write_registry(tmp_path, entry))
    with pytest.raises(ValueError, match=r"preset id 'outline' appears twice"):
        load_presets(write_registry(tmp_path, GOOD, GOOD))
    (tmp_path / "broken.json").write_text("{\"presets\": [", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        load_presets(tmp_path / "broken.json")
    with pytest.raises(ValueError, match=r"no LoRA preset 'nope'"):
        get_preset("nope")
