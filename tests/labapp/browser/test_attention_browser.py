"""The attention tab in a real browser (Playwright + Debian chromium, tiny components): record a
weighted prompt, see the words as chips, pick one, scrub the step slider, and a malformed prompt
refused by name. Screenshots in test-artifacts/ (gitignored)."""
from __future__ import annotations

import pytest

from testkit.browser import shot

pytestmark = pytest.mark.browser


def overlay_src(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} img").first.get_attribute("src") or ""


def test_record_pick_a_word_and_scrub(page):
    page.get_by_role("tab", name="What each word does").click()
    prompt = page.locator("#attention-prompt textarea")
    prompt.fill("a (red:1.4) [circle]")
    page.locator("#attention-record").click()
    chips = page.locator("#attention-words")
    chips.get_by_text("red ×1.4").wait_for(timeout=120_000)
    assert chips.get_by_text("circle ×0.91").count() == 1 and chips.get_by_text("a", exact=True).count() == 1
    page.wait_for_function("() => document.querySelector('#attention-over-image img') !== null")
    assert page.locator("#attention-curve").inner_text() is not None
    assert "nothing is measured" in page.locator("#attention-trust").inner_text()
    shot(page, "attention-recorded")

    before = overlay_src(page, "attention-over-image")
    chips.get_by_text("circle ×0.91").click()
    page.wait_for_function(f"() => (document.querySelector('#attention-over-image img') || {{}}).src !== {before!r}",
                           timeout=60_000)
    x0_before = overlay_src(page, "attention-over-x0")
    slider = page.locator("#attention-step input[type=number]")
    slider.fill("0")
    slider.press("Enter")
    page.wait_for_function(f"() => (document.querySelector('#attention-over-x0 img') || {{}}).src !== {x0_before!r}",
                           timeout=60_000)
    shot(page, "attention-word-step")
    assert not page.console_errors, page.console_errors


def test_malformed_emphasis_is_refused_by_name(page):
    page.get_by_role("tab", name="What each word does").click()
    page.locator("#attention-prompt textarea").fill("a (red circle")
    page.locator("#attention-record").click()
    page.get_by_text("is never closed").first.wait_for(timeout=60_000)
    assert "prompt=" in page.content()
    shot(page, "attention-refused")
