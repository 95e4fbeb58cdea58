"""What a person meets on the page (issue 29), checked in a real browser: Playwright driving Debian's
chromium, the embedded model (models/tiny-shapes: real shapes, so inpainting's effect can be measured). One app server and one browser for the module; the viewport changes
per test. Screenshots in test-artifacts/ (gitignored). No fixed sleeps: every wait polls.
"""
from __future__ import annotations

import io

import pytest

from testkit.browser import chromium, shot

pytestmark = pytest.mark.browser

DESKTOPS = [(1440, 1000), (1280, 720)]
PHONE = (390, 844)
LONG_RUN_STEPS, LONG_RUN_IMAGES = 150, 4  # the tiny model runs ~10 ms a step: a run long enough to sample

# Samples, on every animation frame from the click until the run is done, what sits at the centre of
# the x0 preview (elementFromPoint), and which progress counters are on screen.
SAMPLE_RUN = """
async () => {
  const inView = (el) => { const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.bottom > 0 && r.top < innerHeight; };
  const samples = [];
  let done = false;
  const status = document.querySelector('#status');
  const start = performance.now();
  document.querySelector('#generate-btn').click();
  while (!done && performance.now() - start < 120000) {
    await new Promise((resolve) => requestAnimationFrame(resolve));
    const box = document.querySelector('#x0-preview').getBoundingClientRect();
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    const trackers = [...document.querySelectorAll('.progress-text, .meta-text, .meta-text-center, .progress-level')]
      .filter(inView).length;
    samples.push({image: !!(hit && hit.tagName === 'IMG' && hit.closest('#x0-preview')),
                  inside: !!(hit && hit.closest('#x0-preview')), trackers, status: status.innerText,
                  run: !!document.querySelector('#generate-btn') && inView(document.querySelector('#generate-btn'))});
    done = status.innerText.startsWith('Done');
  }
  return samples;
}
"""

# Every image with its caption outside (class caption-outside): the caption's box and the image's.
CAPTION_BOXES = """
() => [...document.querySelectorAll('.caption-outside')].map((block) => {
  const label = block.querySelector('label[data-testid="block-label"]');
  const img = block.querySelector('img');
  if (!label || !img || !img.getBoundingClientRect().width) return null;
  const a = label.getBoundingClientRect(), b = img.getBoundingClientRect();
  return {id: block.id, label: [a.left, a.top, a.right, a.bottom], image: [b.left, b.top, b.right, b.bottom]};
}).filter(Boolean)
"""


@pytest.fixture(scope="module")
def server():
    import torch

    from labapp import engine as eng
    from testkit.app_server import launch

    torch.set_num_threads(1)
    demo, url = launch(eng.load_engine(eng.EMBEDDED_MODEL, "browser test", "cpu"), concurrency_limit=1)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser_page(server):
    with chromium(*DESKTOPS[0]) as context:
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        yield page


def open_page(page, url, size):
    """The page at ``size``, loaded afresh (a first visit: no run in this browser session)."""
    page.set_viewport_size({"width": size[0], "height": size[1]})
    page.goto("about:blank")  # leave the last page first: a reload of the same address can abort mid-run
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#generate-btn").wait_for(timeout=60_000)
    page.wait_for_function("() => window.__diffusionLabKeys === true", timeout=60_000)  # the load events ran
    return page


def set_number(page, selector: str, value) -> None:
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def overlaps(a, b) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


@pytest.mark.parametrize("size", DESKTOPS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_previews_and_run_controls_stay_on_screen_during_a_run(browser_page, server, size):
    page = open_page(browser_page, server, size)
    set_number(page, "#steps", LONG_RUN_STEPS)
    page.get_by_text("Sampler, size and previews").click()
    set_number(page, "#num-images", LONG_RUN_IMAGES)
    page.get_by_text("Sampler, size and previews").click()
    page.locator("#generate-btn").scroll_into_view_if_needed()
    samples = page.evaluate(SAMPLE_RUN)
    shot(page, f"layout-run-{size[0]}x{size[1]}")
    # from the click to the end: the preview (its box, then its image) and the Generate button on screen
    before_done = [s for s in samples if not s["status"].startswith("Done")]
    assert all(s["inside"] for s in before_done), "the x0 preview left the screen or was covered"
    # while denoising (the status counts the steps; before step 1 there is no prediction to show yet)
    running = [s for s in before_done if s["status"].startswith("Denoising")]
    assert len(running) >= 10, f"only {len(running)} samples during the run"
    on_image = sum(s["image"] for s in running) / len(running)
    assert on_image >= 0.9, f"the x0 preview's centre showed its image in {on_image:.0%} of {len(running)} samples"
    assert all(s["run"] for s in before_done), "the Generate button left the screen during the run"
    # one progress display: our status line counts the steps with the elapsed time; no Gradio tracker beside it
    assert max(s["trackers"] for s in running) == 0, "a second progress counter showed"
    counted = [s["status"] for s in running if s["status"].startswith("Denoising: step")]
    assert counted and counted[-1].endswith(" s"), counted[-3:]
    seconds = [float(text.rsplit(" - ", 1)[1].removesuffix(" s")) for text in counted]
    assert seconds[-1] > seconds[0], "the elapsed time did not move"
    assert not page.errors, page.errors


def test_captions_sit_outside_their_images(browser_page, server):
    page = open_page(browser_page, server, DESKTOPS[0])
    page.locator("#generate-btn").click()
    page.get_by_text("Done:").wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelector('#final-image img') !== null")
    boxes = page.evaluate(CAPTION_BOXES)
    page.locator("#cfg-tab-button").click()
    page.wait_for_function("() => document.querySelectorAll('#cfg-tab .caption-outside img').length === 3",
                           timeout=60_000)
    boxes += page.evaluate(CAPTION_BOXES)
    ids = {b["id"] for b in boxes}
    assert {"xt-preview", "x0-preview", "final-image", "cfg-uncond", "cfg-cond", "cfg-guided"} <= ids, ids
    for b in boxes:
        assert not overlaps(b["label"], b["image"]), f"{b['id']}: caption {b['label']} over image {b['image']}"
    shot(page, "layout-captions-cfg")


def _png(page, locator):
    from PIL import Image

    src = locator.get_attribute("src")
    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")


def test_inpaint_works_on_defaults_and_says_nothing_painted(browser_page, server):
    import numpy as np

    from labapp.inpaint import shape_mask
    from labapp.labs import shapes_sample

    page = open_page(browser_page, server, DESKTOPS[0])
    page.locator("#explorer-tab-button").click()
    page.wait_for_function("() => (document.querySelector('#noise-crop-note') || {innerText: ''}).innerText.trim()",
                           timeout=60_000)  # the editor's opening mask has arrived (with the crop note, explorer.py)
    button = page.locator("#inpaint-button")
    button.scroll_into_view_if_needed()
    button.click()  # nothing painted by the person: the mask the editor opened with
    status = page.locator("#inpaint-status")
    status.get_by_text("Inpainted").wait_for(timeout=120_000)
    share = int(status.inner_text().split("Inpainted ")[1].split("%")[0])
    original = shapes_sample(3)
    mask = np.asarray(shape_mask(original)) > 0
    assert 5 <= share <= 60 and abs(share - 100 * mask.mean()) < 15, (share, mask.mean())
    result = _png(page, page.locator("#inpaint-result img")).resize(original.size)
    change = np.abs(np.asarray(result, float) - np.asarray(original, float)).mean(axis=2)
    assert change[mask].mean() > 20 and change[mask].mean() > 2 * change[~mask].mean(), \
        (change[mask].mean(), change[~mask].mean())
    shot(page, "layout-inpaint-defaults")

    page.locator("#inpaint-editor").get_by_role("button", name="Clear canvas").click()
    button.click()
    toast = page.get_by_test_id("toast-body").filter(has_text="nothing painted")
    toast.first.wait_for(timeout=60_000)
    assert "mask_drawing='<nothing painted>'" in toast.first.inner_text()
    shot(page, "layout-inpaint-nothing-painted")


RUN_BUTTONS = {"cfg": "#cfg-generate", "scheduler": "#compare-btn", "explorer": "#explorer-generate", "lora": "#lora-btn"}


@pytest.mark.parametrize("tab", list(RUN_BUTTONS))
def test_each_lab_opens_with_a_run_button_and_one_hint(browser_page, server, tab):
    from labapp.trace_views import NO_TRACE

    page = open_page(browser_page, server, DESKTOPS[1])
    page.locator(f"#{tab}-tab-button").click()
    run = page.locator(RUN_BUTTONS[tab])
    run.wait_for(timeout=30_000)
    box = run.bounding_box()
    assert box and box["y"] + box["height"] <= DESKTOPS[1][1], f"{tab}: the run button is below the first screen"
    panel_text = page.locator(f"#{tab}-tab").inner_text()
    assert panel_text.count(NO_TRACE) <= 1, f"{tab}: the hint shows {panel_text.count(NO_TRACE)} times"
    if tab not in ("cfg", "explorer"):
        return
    run.click()  # runs Generate from the lab; the lab fills in
    if tab == "cfg":
        page.wait_for_function("() => document.querySelectorAll('#cfg-tab .caption-outside img').length === 3",
                               timeout=120_000)
    else:
        page.wait_for_function("() => +document.querySelector('#explore-frames .explore-frames').dataset.steps > 1",
                               timeout=120_000)
        assert NO_TRACE not in page.locator(f"#{tab}-tab").inner_text()
    shot(page, f"layout-{tab}-after-run")


def test_phone_tabs_plot_and_previews(browser_page, server):
    page = open_page(browser_page, server, PHONE)
    tabs = page.get_by_role("tab")
    assert tabs.count() == 6, [t.inner_text() for t in tabs.all()]  # five labs and the attention tab
    for t in tabs.all():
        box = t.bounding_box()
        assert box and 0 <= box["x"] and box["x"] + box["width"] <= PHONE[0], (t.inner_text(), box)
    assert page.get_by_role("button", name="More tabs").count() == 0 or \
        not page.get_by_role("button", name="More tabs").is_visible()
    page.locator("#generate-btn").scroll_into_view_if_needed()
    page.locator("#generate-btn").click()
    page.wait_for_function("() => { const r = document.querySelector('#preview-row').getBoundingClientRect();"
                           " return r.top >= -1 && r.top < innerHeight / 2; }", timeout=10_000)
    page.get_by_text("Done:").wait_for(timeout=120_000)
    shot(page, "layout-phone-after-run")
    page.locator("#scheduler-tab-button").click()
    plot = page.locator("#schedule-plot img").first
    plot.wait_for(timeout=30_000)
    box = plot.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE[0], f"the schedule plot spans {box}"
    shot(page, "layout-phone-schedule")


def test_a_link_restores_the_form(browser_page, server):
    page = open_page(browser_page, server, DESKTOPS[0])
    page.locator("#prompt textarea").fill("a small blue square in the bottom right")
    set_number(page, "#seed", 7)
    page.locator("#link-btn").click()
    page.wait_for_function("() => (document.querySelector('#share-link textarea, #share-link input') || {value: ''})"
                           ".value.includes('?')")
    link = page.locator("#share-link textarea, #share-link input").first.input_value()
    assert "seed=7" in link and "prompt=" in link and "steps=" not in link, link  # only what differs from defaults
    page.goto(link, wait_until="domcontentloaded")
    page.wait_for_function("() => (document.querySelector('#seed input') || {}).value === '7'", timeout=60_000)
    assert page.locator("#prompt textarea").input_value() == "a small blue square in the bottom right"
    page.get_by_text("Settings from the link loaded").wait_for(timeout=30_000)
    page.goto(server + "?steps=100000", wait_until="domcontentloaded")
    page.get_by_text("The link's settings were not loaded").wait_for(timeout=60_000)
    assert "steps=100000" in page.locator("#status").inner_text()
