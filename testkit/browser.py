"""The one chromium launcher of the tests: Debian's chromium driven by Playwright (python), headless,
in a throwaway profile. Never `playwright install` (it downloads a browser).

``require_chromium()`` is what a browser test module calls first: locally a missing chromium or
playwright skips the module with the reason; in CI (env CI=true) it fails with one clear line, so
a broken install cannot turn the browser tier into a row of skips.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile

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
    """Skip (locally) or fail (CI) the calling module when chromium or playwright is missing."""
    import pytest

    reason = missing()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"browser tier cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """Debian's chromium through Playwright, headless, in a throwaway profile; yields the browser
    context (the screenshot folder exists)."""
    from playwright.sync_api import sync_playwright

    from testkit.paths import ARTIFACTS

    os.makedirs(ARTIFACTS, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=FLAGS,
                                                           headless=True, viewport={"width": width, "height": height})
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def shot(page, name: str) -> None:
    """A full-page screenshot under test-artifacts/ (gitignored)."""
    from testkit.paths import ARTIFACTS

    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)
