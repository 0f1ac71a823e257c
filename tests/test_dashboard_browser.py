"""The dashboard in headless Chromium: every page loads without console errors and draws its
figures and tables; a specialisation heatmap click opens the expert card; a resonance click
lists the driving tokens; the intervention lab runs an ablation on tiny-ref and shows the diff.
Screenshots go to a pytest tmp folder (printed with ``-rP``).

The app runs in a background thread on a free port over the synthetic run of
``test_dashboard.py`` (logits, a contrast set, a stored resonance map), with tiny-ref attached
from the start: Dash pages are created once per process, so the one app has the model. Chromium and Playwright
are test requirements (``make test`` installs them); when either is missing this test fails,
saying so, as ``test_report.py`` does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, sync_playwright_or_fail
from test_dashboard import PLANT, RUN, dashboard_db

from dashboards import data

TIMEOUT_MS = 20_000
# path → the elements that must be drawn (visible) there.
PAGES: dict[str, tuple[str, ...]] = {
    f"/?run={RUN}": ("#runs-table", "#runs-detail .dash-spreadsheet"),
    f"/routing?run={RUN}&label=code": ("#routing-heatmap .main-svg", "#routing-grid .main-svg", ".wb-token"),
    f"/specialisation?run={RUN}&label=code": ("#spec-heatmap .main-svg", "#spec-vocab .main-svg"),
    f"/health?run={RUN}": (
        "#health-load .main-svg",
        "#health-degradation .main-svg",
        "#health-balance .dash-spreadsheet",
    ),
    f"/coactivation?run={RUN}": ("#coact-matrix .main-svg", "#coact-sankey .main-svg"),
    f"/resonance?run={RUN}": ("#res-heatmap .main-svg",),
    f"/expert?run={RUN}&layer={PLANT[0]}&expert={PLANT[1]}": ("#expert-title", "#expert-card .main-svg"),
    f"/lab?run={RUN}": ("#lab-go", "#lab-experts"),
    f"/circuits?run={RUN}": ("#circ-go", "#circ-a"),
}
LAB = f"/lab?run={RUN}&layer=0&experts=1,3&semantics=reroute&labels=__typed__&text=The+cat+sat+on+the"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard over the synthetic run, served on a free port; yields its base URL."""
    from werkzeug.serving import make_server

    from dashboards.app import create_app
    from workbench.models.loading import load_model

    data.clear_cache()
    db = dashboard_db(tmp_path_factory.mktemp("dash-browser") / "dash.duckdb")
    srv = make_server("127.0.0.1", 0, create_app(db, model=load_model("tiny-ref")).server, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        thread.join(timeout=5)


def _watch(page: Any, base: str) -> tuple[list[str], list[str]]:
    """Collect console errors / page errors, and abort (and record) requests leaving the app."""
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def route(r: Any) -> None:
        if r.request.url.startswith(base):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return errors, outside


def _drawn(page: Any, selectors: tuple[str, ...]) -> None:
    for selector in selectors:
        page.locator(selector).first.wait_for(state="visible", timeout=TIMEOUT_MS)


def _click_cell(page: Any, graph: str, layer: int, expert: int, n_layers: int, n_experts: int) -> None:
    """Click the centre of heatmap cell (layer, expert): experts on x, layers on y (upwards)."""
    drag = page.locator(f"{graph} .nsewdrag").first
    box = drag.bounding_box()
    x = box["width"] * (expert + 0.5) / n_experts
    y = box["height"] * (1 - (layer + 0.5) / n_layers)
    drag.click(position={"x": x, "y": y})


def test_dashboard_in_headless_chromium(server: str, tmp_path: Path) -> None:
    sync_playwright = sync_playwright_or_fail()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors, outside = _watch(page, server)
            for i, (path, selectors) in enumerate(PAGES.items()):
                page.goto(server + path, wait_until="load")
                _drawn(page, selectors)
                assert page.locator(".wb-error").count() == 0, (
                    path,
                    page.locator(".wb-error").all_inner_texts(),
                )
                name = path.split("?")[0].strip("/") or "runs"
                page.screenshot(path=str(shots / f"{i}-{name}.png"), full_page=True)
                assert errors == [], (path, errors)

            # The navigation bar keeps the run the pages are showing.
            assert page.locator("#nav-health").get_attribute("href") == f"/health?run={RUN}"

            # A specialisation heatmap click opens the expert card of that cell (URL state included).
            page.goto(f"{server}/specialisation?run={RUN}&label=code", wait_until="load")
            _drawn(page, ("#spec-heatmap .main-svg",))
            _click_cell(page, "#spec-heatmap", *PLANT, n_layers=2, n_experts=8)
            page.wait_for_url(f"**/expert?run={RUN}&layer={PLANT[0]}&expert={PLANT[1]}", timeout=TIMEOUT_MS)
            title = page.locator("#expert-title")
            title.wait_for(state="visible", timeout=TIMEOUT_MS)
            assert title.inner_text() == f"Layer {PLANT[0]} · expert {PLANT[1]}"
            _drawn(page, ("#expert-card .main-svg",))
            page.screenshot(path=str(shots / "expert-from-click.png"), full_page=True)

            # A resonance click lists the expert's driving tokens, and the address keeps the cell.
            page.goto(f"{server}/resonance?run={RUN}", wait_until="load")
            _drawn(page, ("#res-heatmap .main-svg",))
            _click_cell(page, "#res-heatmap", *PLANT, n_layers=2, n_experts=8)
            page.locator("#resonance-tokens").wait_for(state="visible", timeout=TIMEOUT_MS)
            page.wait_for_url(f"**layer={PLANT[0]}&expert={PLANT[1]}", timeout=TIMEOUT_MS)
            page.screenshot(path=str(shots / "resonance-tokens.png"), full_page=True)

            # The lab reroutes two experts of tiny-ref in a background job and shows the diff.
            page.goto(server + LAB, wait_until="load")
            page.locator("#lab-go").click()
            _drawn(page, ("#lab-diff", "#lab-effects .main-svg", "#lab-shift .main-svg"))
            assert "reroute" in page.locator("#lab-output").inner_text()
            assert "Saved as intervention" in page.locator("#lab-output").inner_text()
            page.screenshot(path=str(shots / "lab-result.png"), full_page=True)
            assert errors == [], errors
            assert outside == [], outside
        finally:
            browser.close()
    written = sorted(p.name for p in shots.glob("*.png"))
    print(f"screenshots in {shots}: {written}")
    assert len(written) == len(PAGES) + 3
    assert all((shots / n).stat().st_size > 5_000 for n in written)
