"""The LoRA mixer's "Your own LoRA" panel in a real browser (Playwright + Debian chromium, tiny
components): upload a kohya LoCon, inspect it, add it to the blend, run the comparison grid.
Screenshots go to test-artifacts/ (gitignored)."""
from __future__ import annotations

import os
import re

import pytest

from testkit.browser import chromium
from testkit.paths import ARTIFACTS

pytestmark = pytest.mark.browser

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import torch

    from testkit.app_server import launch, tiny_engine
    from testkit.lora_factory import ATTENTION_TARGETS, RESNET_TARGETS, random_lora, save_kohya_lora

    torch.set_num_threads(1)
    engine = tiny_engine()
    lora = random_lora(engine.pipe.unet, engine.pipe.text_encoder, seed=7, rank=2, std=0.3,
                       unet_targets=ATTENTION_TARGETS + RESNET_TARGETS)
    path = save_kohya_lora(lora, str(tmp_path_factory.mktemp("byo") / "mystyle.safetensors"))
    demo, url = launch(engine, concurrency_limit=2)
    yield url, path
    demo.close()


def test_upload_inspect_add_to_blend_and_grid(served):
    url, path = served
    with chromium(1440, 1000) as context:
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        page.get_by_role("tab", name="LoRA mixer").click()
        page.get_by_text("Your own LoRA: upload a .safetensors or give a Hub id").click()
        page.locator("#user-lora-file").wait_for(timeout=60_000)
        # Under load (CI runs this beside the training tier) a file picked before the accordion's upload
        # component is wired can be dropped: pick it again, as a person would, up to three times.
        for attempt in range(3):
            try:
                page.locator("#user-lora-file input[type=file]").set_input_files(path)
                page.locator("#user-lora-file").get_by_text("mystyle.safetensors").first.wait_for(timeout=30_000)
                break
            except Exception:
                if attempt == 2:
                    raise
        page.locator("#user-lora-inspect").click()
        name_box = page.locator("#user-lora-name textarea, #user-lora-name input").first
        page.wait_for_function("() => { const e = document.querySelector('#user-lora-name textarea, #user-lora-name input');"
                               " return e && e.value.startsWith('user-mystyle-'); }", timeout=120_000)
        name = name_box.input_value()
        summary = page.locator("#user-lora-summary").inner_text()
        assert "kohya format" in summary and "rank 2" in summary and "SHA-256" in summary, summary
        page.locator("#user-lora-heat img").first.wait_for(timeout=60_000)
        page.locator("#user-lora-add").click()
        # the one blend state (Generate's LoRA text, inside a closed accordion there) shows as the mixer's chips
        page.locator("#mixer-chip").get_by_text(name).wait_for(timeout=30_000)
        # a model without presets: the table says how to add one (not "disabled"), and the slot shows the name
        assert "disabled" not in page.locator(".wide-table").first.inner_text()
        page.wait_for_function(f"() => document.querySelector('#slot-1-preset input').value === '{name}'",
                               timeout=30_000)
        page.get_by_role("button", name=re.compile("Comparison grid")).click()
        page.locator("#lora-grid img").first.wait_for(timeout=180_000)
        captions = page.locator("#lora-grid").inner_text()
        assert name in captions, captions
        page.locator("#user-lora").scroll_into_view_if_needed()
        page.screenshot(path=os.path.join(ARTIFACTS, "user-lora-panel.png"), full_page=True)
        assert not errors, errors
