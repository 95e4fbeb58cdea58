"""The one chromium launcher of the tests: Debian's chromium driven by Playwright (python), headless,
in fresh contexts of one chromium per session. Never `playwright install` (it downloads a browser).

``require_chromium()`` runs before the browser tier's first test (tests/labapp/browser/conftest.py):
locally a missing chromium or playwright skips the tier with the reason; in CI (env CI=true) it
fails with one clear line, so a broken install cannot turn the browser tier into a row of skips.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags chromium floods a closed network with retries.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing() -> str | None:
    """Why the browser tier cannot run here, or None when it can."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright python package is not installed (pip install -r requirements-dev.txt)"
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_chromium() -> None:
    """Skip (locally) or fail (CI) the calling test when chromium or playwright is missing."""
    import pytest

    reason = missing()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"the browser tier cannot run in CI (CI=true): {reason}", pytrace=False)
    pytest.skip(reason)


_browser = None  # the session's one chromium (shared_chromium)


@contextlib.contextmanager
def shared_chromium():
    """One chromium process for the whole test session (tests/labapp/browser/conftest.py); every
    ``chromium()`` context opened meanwhile is a fresh, isolated context of it."""
    global _browser
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        _browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield _browser
        finally:
            _browser.close()
            _browser = None


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A fresh browser context (own cookies and storage) of the shared chromium, or of a chromium of
    its own outside a test session; yields the context (the screenshot folder exists)."""
    from testkit.paths import ARTIFACTS

    os.makedirs(ARTIFACTS, exist_ok=True)
    if _browser is None:
        with shared_chromium(), chromium(width, height) as context:
            yield context
        return
    context = _browser.new_context(viewport={"width": width, "height": height})
    try:
        yield context
    finally:
        context.close()


def shot(page, name: str) -> None:
    """A full-page screenshot under test-artifacts/ (gitignored)."""
    from testkit.paths import ARTIFACTS

    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)
