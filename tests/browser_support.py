"""Headless Chromium for the browser tests: the Debian binary, its flags, and a clear failure when absent.

Chromium and Playwright are test requirements (``make test`` installs them), so a missing one
fails the test with the fix, never skips it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
#: No sandbox (root in CI), no GPU, and no background connections (the network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
INSTALL_HINT = (
    "`make test` installs them (apt: chromium chromium-driver; pip: the dev extra, which has playwright)"
)


def sync_playwright_or_fail() -> Any:
    """Playwright's sync API, or a failure saying that ``make test`` installs what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed: {INSTALL_HINT}")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail(f"Debian chromium is missing ({CHROMIUM}): {INSTALL_HINT}")
    return sync_playwright
