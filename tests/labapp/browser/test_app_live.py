"""What a person sees, in a real browser, on the embedded model: the loop live, every tab on defaults.

Playwright (python) driving Debian's chromium against the app built on models/tiny-shapes (the
model a CPU user gets). Judged from the rendered page, not only the DOM:
- during a run the x0 preview is on top at its center (``document.elementFromPoint``: no progress
  overlay), it changes at least 3 times, and the shown images are not one flat color;
- on defaults, each tab's main button gives its result and no error box;
- screenshots of every tab at 1440x1000 and 390x844 under test-artifacts/ (gitignored).
Skipped, with the reason, when chromium, playwright or the embedded model is missing.
"""
from __future__ import annotations

import os

import pytest

from testkit.browser import chromium
from testkit.paths import ARTIFACTS, ROOT

pytestmark = pytest.mark.browser

EMBEDDED = os.path.join(ROOT, "models", "tiny-shapes")
if not os.path.isfile(os.path.join(EMBEDDED, "model_index.json")):
    pytest.skip("models/tiny-shapes is missing", allow_module_level=True)

SIZES = {"desktop": (1440, 1000), "phone": (390, 844)}
TABS = ["Generate", "CFG lab", "Scheduler lab", "Timestep explorer", "LoRA mixer"]

# Every 40 ms while a run streams: what is on top at the x0 preview's center, which image it shows,
# and whether that image has more than one color (read back through a canvas: same origin).
PROBE_PREVIEW = """
() => {
  window.__probe = {samples: [], srcs: new Set(), flat: 0, colorful: 0};
  const canvas = document.createElement('canvas');
  const colors = (img) => {
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d', {willReadFrequently: true});
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const seen = new Set();
    for (let i = 0; i < data.length && seen.size < 3; i += 4) seen.add(data[i] << 16 | data[i + 1] << 8 | data[i + 2]);
    return seen.size;
  };
  window.__probeTimer = setInterval(() => {
    const img = document.querySelector('#x0-preview img');
    if (!img || !img.complete || !img.naturalWidth) return;
    const box = img.getBoundingClientRect();
    const top = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    window.__probe.samples.push(top === img ? 'image' : (top ? top.tagName + '.' + top.className : 'nothing'));
    if (!window.__probe.srcs.has(img.src)) {
      window.__probe.srcs.add(img.src);
      if (colors(img) > 1) window.__probe.colorful++; else window.__probe.flat++;
    }
  }, 40);
}
"""
STOP_PROBE = """
() => { clearInterval(window.__probeTimer);
        return {samples: window.__probe.samples, changes: window.__probe.srcs.size,
                flat: window.__probe.flat, colorful: window.__probe.colorful}; }
"""


@pytest.fixture(scope="module")
def server():
    import torch

    from labapp import engine as eng
    from testkit.app_server import launch

    torch.set_num_threads(1)
    demo, url = launch(eng.load_engine(eng.EMBEDDED_MODEL, "browser test", "cpu"), concurrency_limit=2)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with chromium(1440, 1000) as context:
        yield context


def open_page(browser, server, size="desktop"):
    width, height = SIZES[size]
    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": height})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    # ImageEditor logs this while it loads the mask layer the inpaint editor opens with; the layer loads
    page.on("console", lambda m: m.type == "error" and "No draw texture found for layer" not in m.text
            and page.errors.append(m.text))
    page.goto(server, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#generate-btn").wait_for(timeout=120_000)
    return page


def error_boxes(page) -> list[str]:
    """Texts of Gradio's visible error toasts and error pills."""
    return page.evaluate("""() => [...document.querySelectorAll('.toast-body.error, .error, [data-testid="toast-body"]')]
        .filter(e => e.offsetParent !== null && /error/i.test(e.className + ' ' + e.textContent))
        .map(e => e.textContent.trim().slice(0, 200))""")


# Each visible gallery tile of the current tab: the image wholly inside the gallery's box, the caption
# under the image (not over it), fully opaque and not cut.
GALLERY_PROBLEMS = """
() => {
  const problems = [];
  for (const wrap of document.querySelectorAll('.pixelated .grid-wrap')) {
    if (wrap.offsetParent === null) continue;
    const box = wrap.getBoundingClientRect();
    for (const tile of wrap.querySelectorAll('.thumbnail-item')) {
      const img = tile.querySelector('img'), cap = tile.querySelector('.caption-label');
      const r = img.getBoundingClientRect();
      const name = img.alt || img.src.slice(-20);
      if (r.width < 20 || r.top < box.top - 1 || r.bottom > box.bottom + 1 || r.left < box.left - 1 || r.right > box.right + 1)
        problems.push(`image ${name} not inside its gallery`);
      if (!cap) { problems.push(`image ${name} has no caption`); continue; }
      const c = cap.getBoundingClientRect();
      if (c.top < r.bottom - 1) problems.push(`caption of ${name} over the image`);
      if (getComputedStyle(cap).opacity !== '1' || cap.scrollWidth > cap.clientWidth + 1 || c.bottom > box.bottom + 1)
        problems.push(`caption of ${name} faded or cut`);
    }
  }
  return problems;
}
"""


def shot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"live-{name}.png"), full_page=True)


def test_previews_stream_on_top_and_change(browser, server):
    page = open_page(browser, server)
    page.evaluate(PROBE_PREVIEW)
    page.locator("#prompt textarea").click()
    page.keyboard.press("End")
    page.keyboard.press("Enter")  # Enter in the prompt runs Generate
    # the screenshot a person would see mid-run: after the second preview arrived, before the last
    page.wait_for_function("() => window.__probe && window.__probe.srcs.size >= 2", timeout=120_000)
    mid_label = page.locator("#x0-preview").inner_text()
    shot(page, "generate-streaming-desktop")
    print("streaming screenshot taken at:", mid_label.strip().replace("\n", " "))
    page.get_by_text("Done:").wait_for(timeout=120_000)
    probe = page.evaluate(STOP_PROBE)
    assert probe["changes"] >= 3, probe
    assert probe["colorful"] >= 3 and probe["flat"] == 0, probe
    covered = [s for s in probe["samples"] if s != "image"]
    assert probe["samples"] and not covered, f"something covered the preview: {covered[:5]} of {len(probe['samples'])}"
    assert "\n" not in page.locator("#prompt textarea").input_value()  # Enter ran, it did not add a line
    label = page.locator("#x0-preview").inner_text()
    assert "pred x0 - step 25/25, t=" in label, label
    assert error_boxes(page) == [] and page.errors == [], (error_boxes(page), page.errors)
    page.close()


def test_shift_enter_adds_a_line_and_ctrl_enter_runs(browser, server):
    page = open_page(browser, server)
    box = page.locator("#prompt textarea")
    box.click()
    page.keyboard.press("End")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    page.wait_for_timeout(800)
    assert box.input_value().endswith("\nsecond line")
    assert page.locator("#status").inner_text().strip() == "Ready."  # nothing ran
    page.get_by_label("Negative prompt").click()
    page.keyboard.press("Control+Enter")  # Ctrl/Cmd+Enter runs from any field of the Generate tab
    page.get_by_text("Done:").wait_for(timeout=120_000)
    page.close()


def open_tab(page, tab):
    """Click a tab; on a phone the ones that do not fit sit in Gradio's overflow menu."""
    button = page.get_by_role("tab", name=tab)
    if not button.is_visible():
        page.locator(".overflow-menu button").first.click()
        button = page.locator(".overflow-dropdown button", has_text=tab).first
    button.click()


def run_tab(page, tab):
    """Click the tab's main button on defaults and wait for its result."""
    if tab == "Generate":
        page.locator("#generate-btn").click()
        page.get_by_text("Done:").wait_for(timeout=120_000)
        page.wait_for_timeout(1500)  # the explorer and CFG views of the run
        return
    open_tab(page, tab)
    page.wait_for_timeout(500)
    if tab == "CFG lab":
        page.get_by_role("button", name="Run sweep").click()
        page.locator("#sweep-grid img").nth(4).wait_for(timeout=120_000)
        page.get_by_role("button", name="Compare methods").click()
        page.locator("#methods-grid img").nth(2).wait_for(timeout=120_000)
    elif tab == "Scheduler lab":
        page.get_by_role("button", name="Compare samplers on the Generate prompt and seed").click()
        page.locator("#compare-trajectories img").nth(5).wait_for(timeout=120_000)
    elif tab == "Timestep explorer":
        page.get_by_role("button", name="Add noise").click()
        page.get_by_text("signal sqrt(alpha_bar)").first.wait_for(timeout=60_000)
    elif tab == "LoRA mixer":
        # on defaults the blend is empty (Generate's default): the grid shows the example blend and says so
        page.get_by_role("button", name="Comparison grid: none / each / blend").click()
        page.locator("#lora-grid img").nth(3).wait_for(timeout=120_000)  # none, each of two, the example blend
        assert page.locator("#lora-grid").get_by_text("(no blend was chosen)").count() >= 1
    page.wait_for_timeout(1000)


@pytest.mark.parametrize("size", list(SIZES))
def test_every_tab_gives_its_result_on_defaults(browser, server, size):
    page = open_page(browser, server, size)
    shot(page, f"first-screen-{size}")
    for tab in TABS:
        run_tab(page, tab)
        shot(page, f"{tab.lower().replace(' ', '-')}-{size}")
        assert error_boxes(page) == [], (tab, error_boxes(page))
        assert page.evaluate(GALLERY_PROBLEMS) == [], tab
        if tab == "CFG lab":  # opened where guidance shows, its images labeled with that step
            step = int(page.locator("#cfg-step input[type=number]").input_value())
            assert 1 < step <= 25
            assert f"x0 uncond - step {step}/25, t=" in page.get_by_text("x0 uncond - step").first.inner_text()
    assert page.errors == [], page.errors
    page.close()


def test_stop_keeps_the_partial_run_and_seed_buttons(browser, server):
    page = open_page(browser, server)
    steps = page.locator("#generate-tab input[type=number]").first  # the Steps slider's number box
    steps.fill("150")
    steps.press("Tab")
    # four images a step: a run long enough (~8 s here) that Stop lands before the end even when the
    # browser shows the streamed steps late (CI at load 5 once saw step 5 after the server had finished)
    page.get_by_text("Sampler, size and previews").click()
    images = page.locator("#num-images input[type=number]")
    images.fill("4")
    images.press("Tab")
    page.locator("#generate-btn").click()
    page.wait_for_function("""() => { const m = (document.querySelector('#x0-preview label') || {}).textContent
                                          ?.match(/step (\\d+)\\/150/); return m && +m[1] >= 5; }""", timeout=120_000)
    page.locator("#stop-btn").click()
    page.get_by_text("Stopped at step").wait_for(timeout=60_000)
    status = page.locator("#status").inner_text()
    stopped_at = int(status.split("Stopped at step ")[1].split(" /")[0])
    assert 5 <= stopped_at < 150, status
    page.wait_for_timeout(1500)
    open_tab(page, "Timestep explorer")
    page.locator("strong", has_text=f"step {stopped_at} / 150").first.wait_for(timeout=60_000)  # the partial trace, at its last step
    open_tab(page, "Generate")
    seed = page.locator("#seed input")
    page.locator("#random-seed").click()
    page.wait_for_function("() => document.querySelector('#seed input').value !== '0'", timeout=10_000)
    assert seed.input_value() != "0"
    page.locator("#reuse-seed").click()  # back to the seed of the last run
    page.wait_for_function("() => document.querySelector('#seed input').value === '0'", timeout=10_000)
    assert error_boxes(page) == [] and page.errors == [], (error_boxes(page), page.errors)
    page.close()


def test_a_bad_input_keeps_the_last_good_result(browser, server):
    page = open_page(browser, server)
    open_tab(page, "CFG lab")
    page.get_by_role("button", name="Run sweep").click()
    page.locator("#sweep-grid img").nth(4).wait_for(timeout=120_000)
    before = page.locator("#sweep-grid img").evaluate_all("imgs => imgs.map(i => i.src)")
    page.get_by_label("Scales (comma-separated)").fill("1, two, 4")
    page.get_by_role("button", name="Run sweep").click()
    page.locator("#sweep-status").get_by_text("Error").wait_for(timeout=60_000)  # the error beside the button
    page.wait_for_timeout(500)
    assert page.locator("#sweep-grid img").evaluate_all("imgs => imgs.map(i => i.src)") == before
    assert page.locator("#sweep-grid").get_by_text("Error").count() == 0  # no pill over the last good grid
    shot(page, "cfg-lab-bad-input-desktop")
    page.close()


def test_a_bad_generate_input_keeps_the_last_image(browser, server):
    page = open_page(browser, server)
    page.locator("#generate-btn").click()
    page.get_by_text("Done:").wait_for(timeout=120_000)
    before = page.locator("#final-image img").get_attribute("src")
    page.get_by_text("LoRA blend", exact=True).click()
    # Under load (CI runs this beside the training tier) text typed before the opened accordion's change
    # event is wired can be dropped: type it again, as a person would, up to three times.
    box = page.locator("#lora-blend textarea, #lora-blend input").first
    for attempt in range(3):
        box.fill("")
        box.fill("night:lots")
        try:
            page.locator("#lora-chip").get_by_text("not applied").wait_for(timeout=30_000)
            break
        except Exception:
            if attempt == 2:
                raise
    page.locator("#generate-btn").click()
    page.locator("#status").get_by_text("Error").wait_for(timeout=60_000)  # said on the status line
    page.wait_for_timeout(500)
    assert page.locator("#final-image img").get_attribute("src") == before  # the last good image stays
    assert page.locator("#final-image").get_by_text("Error").count() == 0
    page.close()


def slot(page, i):
    """(preset, UNet weight) shown by mixer slot ``i`` (1-based)."""
    name = page.locator(f"#slot-{i}-preset input").input_value()
    weight = page.locator(f"#slot-{i}-weight input[type=number]").input_value()
    return name, float(weight)


def test_one_blend_state_text_slots_and_chips(browser, server):
    """The blend text is the state: an example row, typed text, a slot pick and "No LoRA" all end
    with the text, both chip lines, the slots and the status line saying the same blend."""
    page = open_page(browser, server)
    assert "LoRA: none" in page.locator("#lora-chip").inner_text()
    page.get_by_text("LoRA blend: outline + night").click()  # the example row sets the text
    page.locator("#lora-chip").get_by_text("outline 1").wait_for(timeout=30_000)
    assert "night 1" in page.locator("#lora-chip").inner_text()
    open_tab(page, "LoRA mixer")
    page.wait_for_function("() => document.querySelector('#slot-2-preset input').value === 'night'", timeout=30_000)
    assert slot(page, 1) == ("outline", 1.0) and slot(page, 2) == ("night", 1.0), (slot(page, 1), slot(page, 2))
    assert "night 1" in page.locator("#mixer-chip").inner_text()
    # a slot pick writes the text, at the table's weight (1), not a hidden default
    page.get_by_text("Adapter 3", exact=True).click()  # the third slot's accordion opens closed
    page.locator("#slot-3-preset input").click()
    page.get_by_role("option", name="pastel").click()
    page.locator("#mixer-chip").get_by_text("pastel 1").wait_for(timeout=30_000)
    open_tab(page, "Generate")
    page.get_by_text("LoRA blend", exact=True).click()  # the accordion with the text
    blend = page.locator("#lora-blend textarea, #lora-blend input").first
    assert blend.input_value() == "outline:1, night:1, pastel:1", blend.input_value()
    # typing a blend moves the slots
    blend.fill("night:0.4")
    page.locator("#lora-chip").get_by_text("night 0.4").wait_for(timeout=30_000)
    open_tab(page, "LoRA mixer")
    page.wait_for_function("() => document.querySelector('#slot-2-preset input').value === '(none)'", timeout=30_000)
    assert slot(page, 1) == ("night", 0.4) and slot(page, 3)[0] == "(none)", (slot(page, 1), slot(page, 3))
    page.get_by_role("button", name="Comparison grid: none / each / blend").click()
    page.locator("#lora-grid img").nth(2).wait_for(timeout=120_000)  # none, night alone, the blend
    assert slot(page, 1) == ("night", 0.4)  # the slots still show what ran
    shot(page, "lora-mixer-one-blend-desktop")
    open_tab(page, "Generate")
    page.locator("#generate-btn").click()
    page.get_by_text("Done:").wait_for(timeout=120_000)
    assert "LoRA: night 0.4" in page.locator("#status").inner_text()
    page.get_by_role("button", name="No LoRA").first.click()
    page.locator("#lora-chip").get_by_text("LoRA:").wait_for(timeout=30_000)
    assert "none" in page.locator("#lora-chip").inner_text()
    open_tab(page, "LoRA mixer")
    page.wait_for_function("() => document.querySelector('#slot-1-preset input').value === '(none)'", timeout=30_000)
    assert error_boxes(page) == [] and page.errors == [], (error_boxes(page), page.errors)
    page.close()


def test_a_failed_model_switch_reverts(browser, server):
    """On this offline CPU machine a Hub model cannot load: the dropdown says why beside its name, and
    picking it leaves the dropdown on the loaded model with one short line (no Hub exception text)."""
    page = open_page(browser, server)
    dropdown = page.locator("#model input")
    assert dropdown.input_value() == "tiny-shapes"
    dropdown.click()
    option = page.get_by_role("option", name="sd14 (")
    label = option.inner_text()
    assert "sd14 (" in label and ("not downloaded" in label or "downloads" in label), label
    option.click()
    page.locator("#status").get_by_text("Could not load").wait_for(timeout=180_000)
    status = page.locator("#status").inner_text()
    assert "Still using tiny-shapes" in status and "\n" not in status.strip(), status
    assert "Traceback" not in status and "snapshot" not in status and len(status) < 200, status
    page.wait_for_function("() => document.querySelector('#model input').value === 'tiny-shapes'", timeout=30_000)
    assert error_boxes(page) == [], error_boxes(page)
    shot(page, "model-switch-reverted-desktop")
    page.close()


# Which explorer frame is visible whenever the frames change (a set: a drag passes through several)
WATCH_FRAMES = """
() => {
  window.__frames = new Set();
  const box = document.querySelector('#explore-frames');
  const seen = () => box.querySelectorAll('.frame:not([hidden])').forEach(f => window.__frames.add(+f.dataset.step));
  new MutationObserver(seen).observe(box, {subtree: true, attributes: true, attributeFilter: ['hidden']});
}
"""


def visible_frame(page) -> int:
    return page.evaluate("""() => [...document.querySelectorAll('#explore-frames .frame')]
                              .filter(f => !f.hidden).map(f => +f.dataset.step)[0] || 0""")


def test_explorer_frames_follow_the_drag_and_play(browser, server):
    page = open_page(browser, server)
    page.locator("#generate-btn").click()
    page.get_by_text("Done:").wait_for(timeout=120_000)
    open_tab(page, "Timestep explorer")
    page.locator("#explore-frames .frame").nth(24).wait_for(state="attached", timeout=60_000)
    assert page.locator("#explore-frames .frame").count() == 25 and visible_frame(page) == 25
    page.evaluate(WATCH_FRAMES)
    # a real drag: while the button is still down (no release, so no request yet) the frame follows
    box = page.locator("#explore-step input[type=range]").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] - 2, y)
    page.mouse.down()
    for fraction in (0.8, 0.6, 0.4, 0.2, 0.02):
        page.mouse.move(box["x"] + box["width"] * fraction, y, steps=4)
        page.wait_for_timeout(100)
    during = page.evaluate("() => [...window.__frames]")
    step_held = visible_frame(page)
    page.mouse.up()
    assert len(during) >= 4 and step_held <= 3, (during, step_held)  # the images moved with the pointer
    page.locator("strong", has_text=f"step {step_held} / 25").first.wait_for(timeout=60_000)  # numbers on release
    shot(page, "explorer-dragged-desktop")
    page.evaluate(WATCH_FRAMES)
    page.locator("#explore-play").click()
    page.wait_for_function("() => window.__frames.has(25)", timeout=60_000)
    played = page.evaluate("() => [...window.__frames].sort((a, b) => a - b)")
    assert len(played) >= 20, played  # every step shown on the way
    page.locator("strong", has_text="step 25 / 25").first.wait_for(timeout=60_000)
    assert int(page.locator("#explore-step input[type=number]").input_value()) == 25
    assert error_boxes(page) == [] and page.errors == [], (error_boxes(page), page.errors)
    page.close()


def test_phone_layout_result_first_tables_and_settings(browser, server):
    page = open_page(browser, server, "phone")
    page.locator("#generate-btn").click()
    page.wait_for_function("() => /step \\d+\\/25/.test((document.querySelector('#x0-preview label') || {}).textContent)",
                           timeout=120_000)
    shot(page, "generate-streaming-phone")  # during the run
    page.get_by_text("Done:").wait_for(timeout=120_000)
    final, preview = page.locator("#final-image").bounding_box(), page.locator("#xt-preview").bounding_box()
    x0 = page.locator("#x0-preview").bounding_box()
    # issue 29: the previews first (a run scrolls them into view on a phone), then the status and the image
    assert preview["y"] < final["y"], (final, preview)
    assert abs(preview["y"] - x0["y"]) < 2, (preview, x0)  # side by side, not stacked
    # the settings JSON wraps: nothing hidden past the right edge
    clipped = page.evaluate("""() => { const s = document.querySelector('#settings-json .cm-scroller');
                                       return s ? s.scrollWidth - s.clientWidth : -1; }""")
    assert clipped == 0, clipped
    open_tab(page, "LoRA mixer")
    page.wait_for_timeout(800)
    cells = page.evaluate("""() => [...document.querySelectorAll('.wide-table td, .wide-table th')]
        .filter(c => c.offsetParent !== null).map(c => [c.textContent, c.getBoundingClientRect().width])""")
    assert len(cells) >= 8, cells  # the presets table is there (header + 3 presets, 4 columns)
    narrow = [text for text, width in cells if width < 60]
    assert narrow == [], narrow  # no column squeezed to a letter per line
    shot(page, "lora-mixer-table-phone")
    assert page.errors == [], page.errors
    page.close()


def shown_pixels(page, server, selector):
    """The pixels of the image ``selector`` shows, fetched from its src as the browser did."""
    import io

    import httpx
    import numpy as np
    from PIL import Image

    src = page.locator(selector).first.get_attribute("src")
    url = src if src.startswith("http") else server.rstrip("/") + "/" + src.lstrip("/")
    return np.asarray(Image.open(io.BytesIO(httpx.get(url, timeout=30).content)).convert("RGB"), dtype=np.int16)


def test_batch_image_again_alone_chips_settings_file_and_tabs(browser, server, tmp_path):
    """Issue 23's run controls, as a person uses them: a batch of 3 (each its own seed), one image
    picked and made again alone (the same pixels), a chip removed, a settings JSON loaded into the
    form, a result sent to the CFG lab, and the forward tool's crop shown."""
    import json

    page = open_page(browser, server)
    page.get_by_text("Sampler, size and previews", exact=True).click()
    for elem, value in (("steps", "6"), ("num-images", "3")):
        box = page.locator(f"#{elem} input[type=number]")  # the slider's number box
        box.fill(value)
        box.press("Tab")
    page.locator("#seed input").fill("40")
    page.locator("#seed input").press("Tab")
    page.locator("#generate-btn").click()
    page.get_by_text("Done: 3 image(s)").wait_for(timeout=120_000)
    captions = page.locator("#gallery .caption-label").all_inner_texts()
    assert captions == ["#0 seed 40", "#1 seed 41", "#2 seed 42"], captions
    third = shown_pixels(page, server, "#gallery .thumbnail-item img >> nth=2")
    page.locator("#gallery .thumbnail-item").nth(2).click()
    button = page.locator("#image-seed-btn")
    button.get_by_text("Make #2 again alone (seed 42, 1 image)").wait_for(timeout=30_000)
    shot(page, "batch-picked-desktop")
    button.click()
    page.wait_for_function("() => document.querySelector('#seed input').value === '42'", timeout=10_000)
    assert page.locator("#num-images input[type=number]").input_value() == "1"
    page.locator("#generate-btn").click()
    page.get_by_text("Done: 1 image(s)").wait_for(timeout=120_000)
    alone = shown_pixels(page, server, "#final-image img")
    assert alone.shape == third.shape and abs(alone - third).max() <= 2  # the batch's third image, made alone
    # the result in the CFG lab, one click
    page.locator("#to-cfg").click()
    page.wait_for_function("""() => [...document.querySelectorAll('button[role=tab]')]
        .some(b => b.textContent.trim() === 'CFG lab' && b.getAttribute('aria-selected') === 'true')""", timeout=10_000)
    open_tab(page, "Generate")
    # chips: the example row sets two; the x on one removes it, the other keeps its weight
    page.get_by_text("LoRA blend: outline + night").click()
    page.locator("#lora-chip").get_by_text("outline 1").wait_for(timeout=30_000)
    page.locator("#lora-chip .token", has_text="outline 1").locator(".token-remove").click()
    page.wait_for_function("""() => !document.querySelector('#lora-chip').innerText.includes('outline 1')""",
                           timeout=30_000)
    assert "night 1" in page.locator("#lora-chip").inner_text()
    page.get_by_text("LoRA blend", exact=True).click()
    assert page.locator("#lora-blend textarea, #lora-blend input").first.input_value() == "night:1"
    shot(page, "chip-removed-desktop")
    # a settings JSON fills the form
    doc = tmp_path / "settings.json"
    doc.write_text(json.dumps({"prompt": "a small blue square", "steps": 7, "seed": 99, "scheduler": "Euler a",
                               "lora": [{"name": "pastel", "weight": 1.0}]}))
    page.get_by_text("Load settings from a PNG or a settings JSON", exact=True).click()
    page.locator("#settings-file input[type=file]").set_input_files(str(doc))
    page.locator("#status").get_by_text("Settings loaded into the form").wait_for(timeout=60_000)
    assert page.locator("#prompt textarea").input_value() == "a small blue square"
    assert page.locator("#seed input").input_value() == "99"
    page.locator("#lora-chip").get_by_text("pastel 1").wait_for(timeout=30_000)
    shot(page, "settings-loaded-desktop")
    # the forward tool shows its crop
    open_tab(page, "Timestep explorer")
    page.locator("#noise-crop img").wait_for(timeout=30_000)
    assert "The model sees the whole image" in page.locator("#noise-crop-note").inner_text()
    shot(page, "explorer-crop-desktop")
    assert error_boxes(page) == [] and page.errors == [], (error_boxes(page), page.errors)
    page.close()
