"""The browser tier: one chromium for the whole session (testkit/browser.py); without chromium or
playwright the tier skips with the reason, and in CI (CI=true) it fails instead."""
import pytest

from testkit.browser import require_chromium, shared_chromium


@pytest.fixture(scope="session", autouse=True)
def one_chromium():
    require_chromium()
    with shared_chromium() as browser:
        yield browser
