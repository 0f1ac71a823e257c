"""Readable tokens in headless Chromium at 1,400 px: the routing page's strip wraps a prompt of
hundreds of tokens without widening the page, and the routing page and the expert card (with its
example contexts) show decoded text, never a raw byte-level symbol (``Ġ``, ``Ċ``). The resonance
drill-down's text is checked without a browser (tests/test_token_contexts.py).

Each page is checked once what it shows here is drawn (other sections may still be computing: the
whole-page screenshot test covers them). One browser, one app over the planted store of tests/token_support.py (tiny-ref's real symbols), with
a long prose prompt added. Screenshots go to ``test-output/tokens/`` (git-ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import token_support as ts
from browser_support import CHROMIUM, CHROMIUM_ARGS, serving, sync_playwright_or_fail

from dashboards import data
from dashboards.views.contexts import CONTEXTS_SHOWN, SEED, WINDOW

pytestmark = pytest.mark.browser

WIDTH = 1400
TIMEOUT_MS = 60_000
SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "tokens"
LONG = 24
"""The prompt id of the long prose prompt (after the 24 prompts of token_support.texts())."""
PAGES = {
    f"/routing?run={ts.RUN}&label=prose&prompt={LONG}&layer={ts.LAYER}": "#routing-strip .wb-token",
    f"/expert?run={ts.RUN}&layer={ts.LAYER}&expert={ts.EXPERT}": "#expert-contexts-top mark",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from dashboards.app import create_app

    data.clear_cache()
    db = str(ts.worded_db(tmp_path_factory.mktemp("tokens-browser") / "w.duckdb", long_prompt_tokens=200))
    # The card's contexts, computed now into the data layer's cache (the app runs in this process): the
    # card then shows them at once instead of queueing them behind the pool's analyses. The pending path
    # itself is tested by tests/test_dashboard_pending.py.
    data.expert_contexts(db, ts.RUN, ts.LAYER, ts.EXPERT, n=CONTEXTS_SHOWN, window=WINDOW, seed=SEED)
    with serving(create_app(str(db)).server) as url:
        yield url


def test_token_views_wrap_and_read_as_text(server: str) -> None:
    sync_playwright = sync_playwright_or_fail()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            for i, (path, selector) in enumerate(PAGES.items()):
                page.goto(server + path, wait_until="load")
                page.locator(selector).first.wait_for(state="visible", timeout=TIMEOUT_MS)
                page.screenshot(path=str(SHOTS / f"{i}-{path.split('?')[0].strip('/')}.png"), full_page=True)
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= WIDTH, (path, width)
                body = page.inner_text("body")
                assert not any(c in body for c in ("Ġ", "Ċ", "ĉ")), path
                if path.startswith("/routing"):
                    tops = page.eval_on_selector_all(
                        "#routing-strip .wb-token", "els => els.map(e => e.getBoundingClientRect().top)"
                    )
                    assert len(tops) > 200 and len(set(tops)) > 3  # many tokens, wrapped over many lines
                    assert "·long" in body and "·line" in body
                if path.startswith("/expert"):
                    marked = page.locator("#expert-contexts-top mark").all_inner_texts()
                    assert marked and set(marked) == {"·return"}
                    assert "token id" in (
                        page.locator("#expert-contexts-top mark").first.get_attribute("title") or ""
                    )
            assert errors == [], errors
        finally:
            browser.close()
