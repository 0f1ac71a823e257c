"""The dashboard in headless Chromium: every page loads without console errors and draws its
figures and tables; a specialisation heatmap click opens the expert card; a resonance click
lists the driving tokens; the intervention lab runs an ablation on tiny-ref and shows every
generation (paged) and the per-token view of a prompt picked after the run.
Screenshots go to ``test-output/dashboard/`` at the repository root (git-ignored; replaced
on every run), so CI can keep them as artifacts.

Every page is also checked for the one look at a 1,400 px window: no horizontal overflow
(``scrollWidth`` past the window), every figure drawn in the workbench plotly template, and the
lab's buttons styled by the stylesheet (they were the browser's grey default).

The app runs in a background thread on a free port over the synthetic run of
``test_dashboard.py`` (logits, a contrast set, a stored resonance map), with tiny-ref attached
from the start: Dash pages are created once per process, so the one app has the model. Chromium and Playwright
are test requirements (``make test`` installs them); when either is missing this test fails,
saying so, as ``test_report.py`` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, serving, sync_playwright_or_fail
from test_dashboard import PLANT, RUN, dashboard_db

from dashboards import data
from workbench.plots.theme import FONT

pytestmark = pytest.mark.browser

TIMEOUT_MS = 20_000
WIDTH = 1400
"""The window's width: no page may be wider (issue 16: the routing page was 2,421 px)."""
OVERFLOW_TOLERANCE = 4
"""Pixels of sub-pixel rounding allowed past the window's width."""
FIGURE_FONTS = "() => [...document.querySelectorAll('.js-plotly-plot')].map(d => d._fullLayout.font.family)"
"""The font of every figure drawn on the page: the workbench template's (plotly's own is "Open Sans")."""
SETTLE_MS = 1_000
"""Plotly animates a Sankey into place after it is drawn; a screenshot taken at once catches it midway."""
SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "dashboard"
"""Where the page screenshots go (git-ignored)."""
BUTTON_BACKGROUND = "rgb(11, 92, 173)"
"""A primary button's background in dashboards/assets/style.css (#0b5cad)."""
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
    f"/coactivation?run={RUN}": (
        "#coact-matrix .main-svg",
        "#coact-network .main-svg",
        "#coact-sankey .main-svg",
    ),
    f"/resonance?run={RUN}": ("#res-heatmap .main-svg",),
    f"/expert?run={RUN}&layer={PLANT[0]}&expert={PLANT[1]}": (
        "#expert-title",
        "#expert-card .main-svg",
        "#expert-similar",
    ),
    f"/lab?run={RUN}": ("#lab-go", "#lab-cancel", "#lab-experts"),
    f"/circuits?run={RUN}": ("#circ-go", "#circ-a"),
}
LAB = f"/lab?run={RUN}&layer=0&experts=1,3&semantics=reroute&labels=code&n=6"
"""Six prompts of one label: more than one page of generations, and a choice of prompts to look at per token."""
PICK = """[id='{"result":0,"role":"lab-prompt"}']"""
"""The lab's prompt picker (a pattern-matching id: Dash writes it as JSON with sorted keys)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard over the synthetic run, served on a free port; yields its base URL."""
    from dashboards.app import create_app
    from workbench.models.loading import load_model

    data.clear_cache()
    db = dashboard_db(tmp_path_factory.mktemp("dash-browser") / "dash.duckdb")
    with serving(create_app(db, model=load_model("tiny-ref")).server) as url:
        yield url


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
    """Wait for ``selectors`` and for every "computing …" placeholder to be replaced by its result."""
    for selector in selectors:
        page.locator(selector).first.wait_for(state="visible", timeout=TIMEOUT_MS)
    page.wait_for_function("() => !document.querySelector('.wb-pending')", timeout=TIMEOUT_MS)


def _click_cell(page: Any, graph: str, layer: int, expert: int, n_layers: int, n_experts: int) -> None:
    """Click the centre of heatmap cell (layer, expert): experts on x, layers on y (upwards)."""
    drag = page.locator(f"{graph} .nsewdrag").first
    box = drag.bounding_box()
    x = box["width"] * (expert + 0.5) / n_experts
    y = box["height"] * (1 - (layer + 0.5) / n_layers)
    drag.click(position={"x": x, "y": y})


def _click_node(page: Any, graph: str, expert: int, n_experts: int) -> None:
    """Click expert ``expert``'s node of the co-activation network (nodes on the unit circle)."""
    import math

    x, y = math.cos(2 * math.pi * expert / n_experts), math.sin(2 * math.pi * expert / n_experts)
    px, py = page.evaluate(
        """([sel, x, y]) => {
            const gd = document.querySelector(sel + ' .js-plotly-plot');
            const fl = gd._fullLayout;
            return [fl._size.l + fl.xaxis.l2p(x), fl._size.t + fl.yaxis.l2p(y)];
        }""",
        [graph, x, y],
    )
    plot = page.locator(f"{graph} .js-plotly-plot")
    plot.scroll_into_view_if_needed()
    box = plot.bounding_box()  # in the viewport, where the mouse can reach it
    page.mouse.move(box["x"] + px, box["y"] + py)
    page.mouse.click(box["x"] + px, box["y"] + py)


def _column(page: Any, table: str, column: str) -> list[str]:
    """The shown cells of one column of a DataTable (the current page), stripped."""
    return [t.strip() for t in page.locator(f"#{table} td[data-dash-column='{column}']").all_inner_texts()]


def _column_becomes(page: Any, table: str, column: str, expected: list[str]) -> None:
    """Wait until the column shows ``expected`` (a callback redraws it), failing with what it shows."""
    for _ in range(TIMEOUT_MS // 100):
        if _column(page, table, column) == expected:
            return
        page.wait_for_timeout(100)
    assert _column(page, table, column) == expected


def test_dashboard_in_headless_chromium(server: str) -> None:
    sync_playwright = sync_playwright_or_fail()
    shots = SHOTS
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):  # this test's own earlier screenshots: each run writes a fresh set
        old.unlink()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            errors, outside = _watch(page, server)
            widths: dict[str, int] = {}
            for i, (path, selectors) in enumerate(PAGES.items()):
                page.goto(server + path, wait_until="load")
                _drawn(page, selectors)
                assert page.locator(".wb-error").count() == 0, (
                    path,
                    page.locator(".wb-error").all_inner_texts(),
                )
                name = path.split("?")[0].strip("/") or "runs"
                page.wait_for_timeout(SETTLE_MS)  # let plotly's Sankey finish laying out before the picture
                page.screenshot(path=str(shots / f"{i}-{name}.png"), full_page=True)
                assert errors == [], (path, errors)
                widths[name] = page.evaluate("() => document.documentElement.scrollWidth")
                assert set(page.evaluate(FIGURE_FONTS)) <= {FONT}, (path, page.evaluate(FIGURE_FONTS))
            print(f"page widths at a {WIDTH} px window: {widths}")
            too_wide = {n: w for n, w in widths.items() if w > WIDTH + OVERFLOW_TOLERANCE}
            assert too_wide == {}, f"pages wider than the {WIDTH} px window: {too_wide}"

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

            # A click on a cell of the routing token grid opens the card of that token's top-1 expert.
            page.goto(f"{server}/routing?run={RUN}&label=code", wait_until="load")
            _drawn(page, ("#routing-grid .main-svg",))
            grid = page.locator("#routing-grid .nsewdrag").first
            grid.scroll_into_view_if_needed()
            box = grid.bounding_box()
            grid.click(position={"x": box["width"] / 2, "y": box["height"] * 0.25})  # a layer-1 cell
            page.wait_for_url(f"**/expert?run={RUN}&layer=1&expert=*", timeout=TIMEOUT_MS)

            # A click on a node of the co-activation network opens that expert's card.
            page.goto(f"{server}/coactivation?run={RUN}&layer={PLANT[0]}&min=0", wait_until="load")
            _drawn(page, ("#coact-network .main-svg",))
            _click_node(page, "#coact-network", PLANT[1], n_experts=8)
            page.wait_for_url(f"**/expert?run={RUN}&layer={PLANT[0]}&expert={PLANT[1]}", timeout=TIMEOUT_MS)
            page.locator("#expert-title").wait_for(state="visible", timeout=TIMEOUT_MS)

            # A resonance click lists the expert's driving tokens, and the address keeps the cell.
            page.goto(f"{server}/resonance?run={RUN}", wait_until="load")
            _drawn(page, ("#res-heatmap .main-svg",))
            _click_cell(page, "#res-heatmap", *PLANT, n_layers=2, n_experts=8)
            page.locator("#resonance-tokens").wait_for(state="visible", timeout=TIMEOUT_MS)
            page.wait_for_url(f"**layer={PLANT[0]}&expert={PLANT[1]}", timeout=TIMEOUT_MS)
            page.screenshot(path=str(shots / "resonance-tokens.png"), full_page=True)

            # The lab reroutes two experts of tiny-ref on six prompts in a background job and shows the result.
            page.goto(server + LAB, wait_until="load")
            assert page.locator("#lab-cancel").is_disabled()  # nothing to cancel yet
            assert page.locator(
                "#lab-text"
            ).is_disabled()  # a label set is chosen: the typed prompt is not used
            page.locator("#lab-go").click()
            _drawn(
                page,
                (
                    "#lab-diff",
                    "#lab-effects .main-svg",
                    "#lab-shift .main-svg",
                    "#lab-per-token-figure .main-svg",
                ),
            )
            assert "reroute" in page.locator("#lab-output").inner_text()
            assert "Saved as intervention" in page.locator("#lab-output").inner_text()
            # Every prompt's generations, five per page.
            assert _column(page, "lab-diff", "prompt_id") == ["0", "1", "2", "3", "4"]
            page.locator("#lab-diff button.next-page").click()
            _column_becomes(page, "lab-diff", "prompt_id", ["5"])
            # Another prompt's per-token view, redrawn from the result in the page (texts "prompt 0" … "prompt 5").
            assert _column(page, "lab-per-token-table", "token")[-1] == "·0"  # the space made visible
            page.locator(PICK).click()
            page.get_by_role("option", name=re.compile("^prompt 1 ·")).click()
            _column_becomes(page, "lab-per-token-table", "token", ["<bos>", "p", "rom", "pt", "·1"])
            page.screenshot(path=str(shots / "lab-result.png"), full_page=True)
            fonts = page.evaluate(FIGURE_FONTS)
            assert len(fonts) >= 2 and set(fonts) == {FONT}, fonts  # the lab's figures: not plotly's grey
            assert page.evaluate("() => document.documentElement.scrollWidth") <= WIDTH + OVERFLOW_TOLERANCE
            page.mouse.move(0, 0)  # off the button (a hovered one is darker)
            go_button = "() => getComputedStyle(document.querySelector('#lab-go')).backgroundColor"
            assert page.evaluate(go_button) == BUTTON_BACKGROUND
            dropdown = "() => getComputedStyle(document.querySelector('#lab-layer')).backgroundColor"
            assert (
                page.evaluate(dropdown) == "rgb(255, 255, 255)"
            )  # a dropdown (a <button> itself) stays white
            assert errors == [], errors
            assert outside == [], outside
        finally:
            browser.close()
    written = sorted(p.name for p in shots.glob("*.png"))
    print(f"screenshots in {shots}: {written}")
    expected = [f"{i}-{path.split('?')[0].strip('/') or 'runs'}.png" for i, path in enumerate(PAGES)]
    expected += ["expert-from-click.png", "resonance-tokens.png", "lab-result.png"]
    assert sorted(expected) == written
    for name in expected:
        assert (shots / name).is_file() and (shots / name).stat().st_size > 5_000, name
