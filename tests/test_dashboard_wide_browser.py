"""The dashboard and the report at E = 256 (issue 14 item 6): every page readable and drawn in Chromium.

A run of 256 experts, top-8 (:mod:`wide_support`) makes every layer × expert view 32 times wider
than the tiny models' and the co-activation matrix 256 × 256. Each page of that run is loaded in
headless Chromium at a 1400 px wide window: it must draw (no "computing …" placeholder left, no
error box, no console error), fit the window's width (no horizontal scroll), send figures of a
reasonable size, and draw within a generous bound (a sanity check, not a benchmark). Full-page
screenshots go to ``test-output/dashboard-wide/`` (git-ignored; replaced on every run). The
HTML report of the same run must render every computed section with its figures, in a file of
bounded size. The wide model is attached, so the lab lists its 256 experts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, serving, sync_playwright_or_fail
from wide_support import N_EXPERTS, capture_wide_run, wide_model

from dashboards import data
from workbench.catalog import ANALYSES
from workbench.reports import write_report
from workbench.reports.html import plotly_js

pytestmark = pytest.mark.browser

RUN = "wide"
WIDTH = 1400
"""The browser window's width: no page may need a horizontal scroll bar at it."""
OVERFLOW_TOLERANCE = 4
"""Pixels of sub-pixel rounding allowed past the window's width."""
TIMEOUT_MS = 60_000
"""How long one page may take to draw, first analyses included (a sanity bound on a busy 2-core box)."""
SETTLE_MS = 1_000
"""Plotly animates a Sankey into place after it is drawn; a screenshot taken at once catches it midway."""
MAX_PAGE_SECONDS = 90.0
"""Most seconds from opening a page to all of it drawn (measured: 0.5–16 s, the first analysis page
slowest as the background workers start): a sanity bound, far from the measured times."""
MAX_PAGE_BYTES = 4_000_000
"""Most callback bytes (figures and tables, as JSON, every render of the page) one page may receive
at E = 256 (measured: 2.4 MB at most, the co-activation page; 5.5 MB before its matrix went float32
and its network was limited to the strongest pairs)."""
SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "dashboard-wide"
"""Where the page screenshots and the report go (git-ignored)."""
MAX_REPORT_FIGURE_BYTES = 5_000_000
"""Most bytes the report of the wide run may hold besides plotly.js (measured: 2.5 MB; 4.0 MB before
its 256 × 256 and layer × expert grids went out as float32)."""
MAX_REPORT_BYTES = 14_500_000
"""Most bytes of the whole report file, plotly.js (4.8 MB) included (measured: 7.3 MB)."""
NOT_COMPUTED = {"compare", "model", "contrast"}
"""What the report of the wide run lacks (a second run, the model, a target/control contrast):
analyses that need one of them are sections that say so, without a figure."""
EXPERT = (1, 200)
"""The expert card shown: an id above 127, the first one an int8 would wrap."""
# path → the elements that must be drawn (visible) there.
PAGES: dict[str, tuple[str, ...]] = {
    f"/?run={RUN}": ("#runs-table", "#runs-detail .dash-spreadsheet"),
    f"/routing?run={RUN}": ("#routing-heatmap .main-svg", "#routing-grid .main-svg", ".wb-token"),
    f"/specialisation?run={RUN}": ("#spec-heatmap .main-svg", "#spec-vocab .main-svg"),
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
    f"/expert?run={RUN}&layer={EXPERT[0]}&expert={EXPERT[1]}": (
        "#expert-title",
        "#expert-card .main-svg",
    ),
    f"/lab?run={RUN}": ("#lab-go", "#lab-experts"),
    f"/circuits?run={RUN}": ("#circ-go", "#circ-a"),
}
# path → what its page must say where it shows a part of a long list ("top N of M").
SAYS: dict[str, tuple[str, ...]] = {
    f"/health?run={RUN}": (f"uniform 1/{N_EXPERTS}", "The table lists the first 500 of"),
    f"/coactivation?run={RUN}": ("the strongest 40 of", "the 20 most frequent of each layer pair"),
    f"/expert?run={RUN}&layer={EXPERT[0]}&expert={EXPERT[1]}": (
        "The 8 most frequent of",
        "The 8 most similar of",
    ),
}


@pytest.fixture(scope="module")
def wide_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """(store, model): the E = 256 run captured into a fresh store, and the model it came from."""
    model = wide_model()
    db = tmp_path_factory.mktemp("dash-wide") / "wide.duckdb"
    capture_wide_run(db, run_id=RUN, model=model)
    return db, model


@pytest.fixture(scope="module")
def server(wide_db: tuple[Path, Any]) -> Iterator[str]:
    """The dashboard over the wide run with its model attached, on a free port; yields its base URL."""
    from dashboards.app import create_app

    data.clear_cache()
    db, model = wide_db
    with serving(create_app(db, model=model).server) as url:
        yield url


def _watch(page: Any, base: str) -> tuple[list[str], list[int]]:
    """Collect console and page errors, abort requests leaving the app, and count callback bytes."""
    errors: list[str] = []
    sizes: list[int] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def response(r: Any) -> None:
        if "_dash-update-component" in r.url and r.ok:
            sizes.append(len(r.body()))

    def route(r: Any) -> None:
        if r.request.url.startswith(base):
            r.continue_()
        else:
            errors.append(f"request outside the app: {r.request.url}")
            r.abort()

    page.on("response", response)
    page.route("**/*", route)
    return errors, sizes


def _drawn(page: Any, selectors: tuple[str, ...]) -> None:
    """Wait for ``selectors`` and for every "computing …" placeholder to be replaced by its result."""
    for selector in selectors:
        page.locator(selector).first.wait_for(state="visible", timeout=TIMEOUT_MS)
    page.wait_for_function("() => !document.querySelector('.wb-pending')", timeout=TIMEOUT_MS)


def test_every_page_at_256_experts_in_headless_chromium(server: str) -> None:
    sync_playwright = sync_playwright_or_fail()
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):  # this test's own earlier screenshots: each run writes a fresh set
        old.unlink()
    timings: dict[str, tuple[float, int]] = {}
    problems: list[str] = []  # every page is visited and pictured before the test fails on any of them
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            errors, sizes = _watch(page, server)
            for i, (path, selectors) in enumerate(PAGES.items()):
                sizes.clear()
                start = time.perf_counter()
                page.goto(server + path, wait_until="load")
                _drawn(page, selectors)
                timings[path] = (time.perf_counter() - start, sum(sizes))
                boxes = page.locator(".wb-error").all_inner_texts()
                problems += [f"{path}: error box {text!r}" for text in boxes]
                page.wait_for_timeout(SETTLE_MS)  # let plotly's Sankey finish laying out before the picture
                name = path.split("?")[0].strip("/") or "runs"
                page.screenshot(path=str(SHOTS / f"{i}-{name}.png"), full_page=True)
                scroll = page.evaluate("() => document.documentElement.scrollWidth")
                if scroll > WIDTH + OVERFLOW_TOLERANCE:
                    problems.append(f"{path}: {scroll} px wide in a {WIDTH} px window")
                problems += [f"{path}: {e}" for e in errors]
                errors.clear()
                text = page.locator("body").text_content() or ""
                problems += [
                    f"{path}: does not say {said!r}" for said in SAYS.get(path, ()) if said not in text
                ]
            # The network's and the Sankey's N come from the address (and their inputs) too.
            page.goto(f"{server}/coactivation?run={RUN}&top=10&paths=5", wait_until="load")
            _drawn(page, ("#coact-network .main-svg", "#coact-sankey .main-svg"))
            text = page.locator("body").text_content() or ""
            for said in ("the strongest 10 of", "the 5 most frequent of each layer pair"):
                if said not in text:
                    problems.append(f"/coactivation with top=10&paths=5: does not say {said!r}")
            assert page.locator("#coact-top").input_value() == "10"
        finally:
            browser.close()
    for path, (seconds, size) in timings.items():
        print(f"{path}: drawn in {seconds:.2f} s, {size / 1e6:.3f} MB of callback responses")
        if seconds > MAX_PAGE_SECONDS:
            problems.append(f"{path}: drawn in {seconds:.0f} s")
        if size > MAX_PAGE_BYTES:
            problems.append(f"{path}: {size / 1e6:.2f} MB of figures and tables at E = {N_EXPERTS}")
    assert problems == [], "\n".join(problems)


def _report_sections(text: str) -> dict[str, tuple[str, int]]:
    """{analysis: (status, number of figures)} of a report's HTML, one entry per section."""
    found = {}
    for match in re.finditer(
        r'<section id="[^"]*" data-analysis="([^"]+)" data-status="([^"]+)">(.*?)</section>', text, re.S
    ):
        found[match.group(1)] = (match.group(2), match.group(3).count('class="plotly-graph-div"'))
    return found


def test_the_report_at_256_experts(wide_db: tuple[Path, Any]) -> None:
    """Every section the run supports is computed with a figure, the file stays bounded, Chromium draws it all."""
    db, _ = wide_db
    SHOTS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = write_report(db, RUN, SHOTS / "report.html")
    built = time.perf_counter() - start
    text = report.read_text(encoding="utf-8")
    size = report.stat().st_size
    print(
        f"report: {size / 1e6:.2f} MB ({(size - len(plotly_js())) / 1e6:.2f} MB besides plotly.js), built in {built:.1f} s"
    )
    sections = _report_sections(text)
    assert set(sections) == set(ANALYSES)
    for name, (status, figures) in sections.items():
        if NOT_COMPUTED & set(ANALYSES[name].needs):
            assert status == "skipped", name
        else:
            assert status == "ok" and figures >= 1, (name, status, figures)
    assert size - len(plotly_js()) <= MAX_REPORT_FIGURE_BYTES, size
    assert size <= MAX_REPORT_BYTES, size

    sync_playwright = sync_playwright_or_fail()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://") else r.abort())
            page.goto(report.as_uri(), wait_until="load")
            expected = page.locator("div.plotly-graph-div").count()
            drawn = (
                "() => [...document.querySelectorAll('div.plotly-graph-div')]"
                ".filter(d => d.querySelector('svg.main-svg')).length"
            )
            page.wait_for_function(f"() => ({drawn})() === {expected}", timeout=TIMEOUT_MS)
            page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
            scroll = page.evaluate("() => document.documentElement.scrollWidth")
        finally:
            browser.close()
    assert expected == sum(figures for _, figures in sections.values())
    assert errors == [], errors
    assert scroll <= WIDTH + OVERFLOW_TOLERANCE, scroll
