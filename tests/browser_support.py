"""Headless Chromium for the browser tests: which binary, its flags, and a clear failure when absent.

Chromium and Playwright are test requirements, so a missing one fails the test with how to get it,
never skips it. The binary is ``$CHROMIUM`` when set (any Chromium or Chrome), else Debian's
``/usr/bin/chromium``, else ``chromium``/``chromium-browser`` on ``PATH``. ``make test`` installs
Debian's with apt when it runs as root; without root it prints the same hint as these failures.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

DEBIAN_CHROMIUM = "/usr/bin/chromium"
#: Environment variable naming another Chromium/Chrome binary.
ENV_VAR = "CHROMIUM"
#: No sandbox (root in CI), no GPU, and no background connections (the network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
INSTALL_HINT = (
    "get a Chromium: Debian/Ubuntu: `sudo apt-get install chromium chromium-driver` "
    "(`make test` does this itself when run as root), or point the CHROMIUM environment variable at any "
    "Chromium or Chrome binary (no root needed: CHROMIUM=/path/to/chrome make test)"
)
PLAYWRIGHT_HINT = "`make test` installs it from requirements.lock (the dev extra has playwright)"


def find_chromium() -> str:
    """The browser binary to launch: ``$CHROMIUM``, Debian's, or one on ``PATH``; "" when none."""
    chosen = os.environ.get(ENV_VAR, "").strip()
    if chosen:
        return chosen
    if Path(DEBIAN_CHROMIUM).exists():
        return DEBIAN_CHROMIUM
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return ""


#: What the tests pass to ``chromium.launch(executable_path=...)`` (checked by sync_playwright_or_fail).
CHROMIUM = find_chromium() or DEBIAN_CHROMIUM


def chromium_problem() -> str:
    """Why the browser tests cannot launch a browser ("" when they can)."""
    chosen = os.environ.get(ENV_VAR, "").strip()
    if chosen:
        if not Path(chosen).is_file() or not os.access(chosen, os.X_OK):
            return f"{ENV_VAR}={chosen} is not an executable file; {INSTALL_HINT}"
        return ""
    if not find_chromium():
        return f"no Chromium found ({DEBIAN_CHROMIUM}, or chromium on PATH); {INSTALL_HINT}"
    return ""


def sync_playwright_or_fail() -> Any:
    """Playwright's sync API, or a failure saying how to get what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed: {PLAYWRIGHT_HINT}")
    problem = chromium_problem()
    if problem:
        pytest.fail(f"browser tests need Chromium: {problem}")
    return sync_playwright


@contextmanager
def serving(wsgi_app: Any) -> Iterator[str]:
    """Serve a WSGI app (the dashboard's Flask server) on a free loopback port; yields its base URL."""
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        thread.join(timeout=5)
