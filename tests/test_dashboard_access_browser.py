"""The token-protected dashboard in headless Chromium, over a loopback socket (issue 15 item 5).

Served with a token as ``serve`` does, through 127.0.0.1 only: without the token a page, a Dash
callback POST and an asset are refused (401, and a wrong token 403); the address ``serve`` prints
(``/?token=…``) lets the browser in, leaves the token out of the address bar, and the page then
renders with its own callbacks and assets carried by the cookie.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, serving, sync_playwright_or_fail
from test_dashboard import RUN, dashboard_db
from test_dashboard_access import CALLBACK  # the lab's URL-state callback: cheap, and answers without a model

from dashboards import data
from dashboards.access import new_token

pytestmark = pytest.mark.browser

TIMEOUT_MS = 20_000
TOKEN = new_token()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard over the synthetic run, behind ``TOKEN``, on a free loopback port."""
    from dashboards.app import create_app

    data.clear_cache()
    db = dashboard_db(tmp_path_factory.mktemp("access-browser") / "dash.duckdb")
    with serving(create_app(db, token=TOKEN).server) as url:
        yield url


def test_the_browser_gets_in_only_with_the_token(server: str) -> None:
    sync_playwright = sync_playwright_or_fail()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            failed: list[str] = []
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)

            # no token: the page, a callback and an asset are refused
            refused = page.goto(f"{server}/?run={RUN}")
            assert refused is not None and refused.status == 401
            assert "needs its access token" in page.inner_text("body")
            assert page.locator("#runs-table").count() == 0
            callback = context.request.post(
                f"{server}/_dash-update-component", data=json.dumps(CALLBACK),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            assert callback.status == 401
            assert context.request.get(f"{server}/assets/style.css").status == 401
            assert context.request.get(f"{server}/_dash-layout").status == 401
            wrong = page.goto(f"{server}/?token={TOKEN[:-2]}zz")
            assert wrong is not None and wrong.status == 403

            # the printed address: in, the token gone from the address, the page drawn
            page.close()  # a fresh tab: the refused pages' own console messages stay with the old one
            page = context.new_page()
            errors.clear()
            failed.clear()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(f"{server}/?token={TOKEN}&run={RUN}", wait_until="load")
            page.locator("#runs-table").wait_for(state="visible", timeout=TIMEOUT_MS)
            page.locator("#runs-detail .dash-spreadsheet").first.wait_for(state="visible", timeout=TIMEOUT_MS)
            assert "token" not in page.url and f"run={RUN}" in page.url
            assert failed == [] and errors == [], (failed, errors)
            cookies = {c["name"]: c for c in context.cookies()}
            (cookie,) = [c for name, c in cookies.items() if name.startswith("moe-workbench-token-")]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # page scripts cannot read it

            # the cookie now carries the token for the page's own requests
            callback = context.request.post(
                f"{server}/_dash-update-component", data=json.dumps(CALLBACK),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            assert callback.status == 200, callback.text()
            assert context.request.get(f"{server}/assets/style.css").status == 200
            assert failed == [] and errors == [], (failed, errors)

            # another browser (no cookie) is still refused
            other = browser.new_context()
            assert other.request.get(f"{server}/?run={RUN}").status == 401
            other.close()
        finally:
            browser.close()
