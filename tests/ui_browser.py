"""Headless Chromium for the UI tests: Debian's ``chromium`` driven by Playwright.

Playwright's own browser download is never used (it cannot work offline): the browser
is ``/usr/bin/chromium`` from Debian, installed by ``scripts/install-ui-test-deps``.
A missing browser or Playwright is a test failure that says how to install it, never a
silent skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Where screenshots are copied for people to look at, besides the pytest tmp dir.
SHARED_SCREENSHOTS = Path("/tmp/angosd-ui-screenshots")
_INSTALL = "run scripts/install-ui-test-deps and pip install -e '.[test]'"


def require_browser() -> None:
    """Fail (not skip) unless Playwright and Debian's Chromium are installed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(f"the Python package playwright is missing: {_INSTALL}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: {_INSTALL}")


@contextmanager
def chromium() -> Iterator[Any]:
    """A running headless Chromium (a Playwright ``Browser``), closed afterwards."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


class Screenshots:
    """Saves full-page screenshots under ``directory`` and copies them to `SHARED_SCREENSHOTS`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        SHARED_SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(self, page: Any, name: str) -> Path:
        """Screenshot ``page`` as ``name``.png; returns the path in ``directory``."""
        path = self.directory / f"{name}.png"
        page.screenshot(path=str(path), full_page=True, animations="disabled")
        shutil.copyfile(path, SHARED_SCREENSHOTS / path.name)
        return path
