"""The browser tier: one chromium for the whole session (testkit/browser.py); without chromium or
playwright the tier skips with the reason, and in CI (CI=true) it fails instead."""
import pytest

from testkit.browser import chromium, require_chromium, shared_chromium


@pytest.fixture(scope="session", autouse=True)
def one_chromium():
    require_chromium()
    with shared_chromium() as browser:
        yield browser


# One app on tiny components and one page on it per module (the inpaint and attention modules): a
# module that needs another app or page size defines its own `page`.
@pytest.fixture(scope="module")
def page():
    import torch

    from testkit.app_server import launch, tiny_engine

    torch.set_num_threads(1)
    demo, url = launch(tiny_engine(), concurrency_limit=1)
    with chromium() as context:
        page = context.new_page()
        page.console_errors = []
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        yield page
    demo.close()
