"""The app in a real browser: Playwright (python) driving Debian's chromium, tiny components.

Screenshots go to test-artifacts/ (gitignored). Skipped, with the reason, when chromium or
playwright is missing (never `playwright install`: it downloads a browser).
"""
from __future__ import annotations

import pytest

from testkit.browser import chromium, shot

TABS = ["CFG lab", "Scheduler lab", "Timestep explorer", "LoRA mixer"]

pytestmark = pytest.mark.browser

# Counts every distinct src the preview <img> shows, so fast updates between polls are not missed.
WATCH_PREVIEWS = """
() => {
  window.__previews = new Set();
  const seen = () => document.querySelectorAll('#x0-preview img').forEach(i => i.src && window.__previews.add(i.src));
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     attributeFilter: ['src']});
}
"""


@pytest.fixture(scope="module")
def server():
    import torch

    from testkit.app_server import launch, tiny_engine

    torch.set_num_threads(1)
    demo, url = launch(tiny_engine(), concurrency_limit=2)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def page(server):
    with chromium() as context:
        page = context.new_page()
        page.console_errors = []
        # ImageEditor logs this while it loads the mask layer the inpaint editor opens with; the layer loads
        page.on("console", lambda m: m.type == "error" and "No draw texture found for layer" not in m.text
                and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        # Names the resource behind a console "Failed to load resource"; ERR_ABORTED is the page closing
        # its own event stream when a run ends, not a failure.
        page.on("requestfailed", lambda r: "ERR_ABORTED" not in (r.failure or "")
                and page.console_errors.append(f"request failed: {r.url} ({r.failure})"))
        page.goto(server, wait_until="domcontentloaded", timeout=60_000)
        yield page


@pytest.fixture(autouse=True)
def fresh_errors(page):
    """Each test answers for the errors raised while it ran (the page is shared by the module)."""
    page.console_errors.clear()
    yield


def test_generation_streams_previews_then_the_final_image(page):
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=120_000)
    assert page.get_by_text("Model:").count() >= 1
    page.evaluate(WATCH_PREVIEWS)
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#final-image img").wait_for(timeout=120_000)
    page.get_by_text("Done:").wait_for(timeout=30_000)
    previews = page.evaluate("() => window.__previews.size")
    assert previews >= 3, f"saw {previews} preview updates, expected >= 3"
    page.wait_for_timeout(1500)  # the explorer / CFG views rendered after the run
    shot(page, "generate")
    assert page.console_errors == [], page.console_errors


@pytest.mark.parametrize("tab", TABS)
def test_every_tab_renders_without_console_errors(page, tab):
    page.get_by_role("tab", name=tab).click()
    page.wait_for_timeout(800)
    if tab == "Timestep explorer":
        page.get_by_role("button", name="Load sample").click()
        page.wait_for_timeout(800)
        page.get_by_role("button", name="Add noise").click()
        page.get_by_text("signal sqrt(alpha_bar)").first.wait_for(timeout=60_000)
    if tab == "Scheduler lab":
        page.get_by_role("button", name="Compare samplers on the Generate prompt and seed").click()
        page.get_by_text("Heun - ").first.wait_for(timeout=60_000)
    if tab == "CFG lab":
        page.get_by_role("button", name="Run sweep").click()
        page.get_by_text("w = 12").first.wait_for(timeout=60_000)
    if tab == "LoRA mixer":  # the overview above the tabs holds the diagram and the formulas
        page.get_by_text("How the tabs fit together, and the formulas").click()
        page.locator("#overview .katex").first.wait_for(timeout=30_000)  # the formulas rendered
        assert page.locator("#overview").get_by_text("Timestep explorer:").count() >= 1
    page.wait_for_timeout(800)
    shot(page, tab.lower().replace(" ", "-"))
    assert page.console_errors == [], page.console_errors
