"""HTML probing reports: planted findings become the right sentences, store strings are escaped,
nothing loads from the network, every analysis has a section, and headless Chromium renders the
page (every plotly figure drawn) with no console errors.

Chromium and Playwright are test requirements: ``make test`` installs them (Debian ``chromium``,
``playwright`` in the dev extra). When either is missing the browser test fails, saying so.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, sync_playwright_or_fail
from synthetic import save_run, skeleton
from typer.testing import CliRunner

from workbench.analysis.specialisation import specialised_cells
from workbench.catalog import ANALYSES, findings_for, run_analysis
from workbench.catalog.findings_specialisation import specialist_sentence
from workbench.cli import app
from workbench.plots.theme import FONT
from workbench.reports import write_report
from workbench.reports.html import anchor
from workbench.store import Store
from workbench.wording import Context

pytestmark = pytest.mark.browser

E, K = 8, 2
XSS = '<script>window.__xss = 1</script><img src="https://example.invalid/x.png">'
LABELS = ("code", "math", XSS)
PLANT_LAYER, PLANT_EXPERT, PLANT_PROB = 1, 5, 0.9
TOC_MARKER_PX = 32
"""Room the contents' second column needs for its item numbers ("20." at the page's size, and a space)."""


def _routing(rng: np.random.Generator, sk: Any, labels: list[str]) -> np.ndarray:
    """Uniform random top-2, plus the plants: code → layer 1 expert 5, math → layer 0 expert 2.

    Two plants, not one: permutation p-values bottom out at 1/(n_perm + 1), and BH over the 48
    cells divides by the number of discoveries, so a single plant would sit right at q ≈ 0.05.
    """
    experts = np.argsort(rng.random((sk.n_rows, E)), axis=1)[:, :K].astype(np.int16)
    for label, layer, expert in (("code", PLANT_LAYER, PLANT_EXPERT), ("math", 0, 2)):
        hit = (np.asarray(labels)[sk.pid] == label) & (sk.lay == layer) & (rng.random(sk.n_rows) < PLANT_PROB)
        others = np.array([e for e in range(E) if e != expert], np.int16)
        experts[hit, 0] = expert
        experts[hit, 1] = others[rng.integers(0, E - 1, size=int(hit.sum()))]
    return experts


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A planted run (code → layer 1 expert 5; a label and prompt text holding markup) and a rerun."""
    path = tmp_path_factory.mktemp("report") / "synthetic.duckdb"
    rng = np.random.default_rng(7)
    labels = [lab for lab in LABELS for _ in range(20)]
    sk = skeleton(labels, rng.integers(10, 21, size=len(labels)), (0, 1))
    texts = [f"{XSS} prompt {i}" for i in range(len(labels))]
    sk.prompts = sk.prompts.set_column(sk.prompts.schema.get_field_index("text"), "text", pa.array(texts))
    # code prompt i is paired with math prompt i (code first): a contrast set for the resonance map.
    pairs = [f"pair{i % 20}" if lab in ("code", "math") else None for i, lab in enumerate(labels)]
    sk.prompts = sk.prompts.set_column(
        sk.prompts.schema.get_field_index("pair_id"), "pair_id", pa.array(pairs, pa.string())
    )
    weights = np.tile(np.array([0.7, 0.3], np.float32), (sk.n_rows, 1))
    run = save_run(
        path,
        sk,
        experts=_routing(rng, sk, labels),
        weights=weights,
        n_experts=E,
        top_k=K,
        run_id="planted",
    )
    again = save_run(
        path,
        sk,
        experts=_routing(rng, sk, labels),
        weights=weights,
        n_experts=E,
        top_k=K,
        run_id="rerun",
    )
    return path, run, again


@pytest.fixture(scope="module")
def synthetic_report(synthetic_db: tuple[Path, str, str]) -> Path:
    path, run, again = synthetic_db
    return write_report(path, run, path.parent / "synthetic.html", compare=again)


@pytest.fixture(scope="module")
def tiny_ref_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real capture of tiny-ref on two prompts per domain (logits, expert stats), with the model."""
    from workbench.capture.engine import capture
    from workbench.data.suites import load_suite
    from workbench.models.loading import load_model
    from workbench.zoo.tiny_ref import model_dir

    prompts: dict[str, list[Any]] = {}
    for p in load_suite("domains"):
        prompts.setdefault(p.label, []).append(p)
    chosen = [p for group in prompts.values() for p in group[:2]]
    loaded = load_model(model_dir())
    db = tmp_path_factory.mktemp("tiny") / "tiny.duckdb"
    run = capture(loaded, chosen, db, run_id="tiny-ref-domains", progress=False, expert_stats=True)
    return write_report(db, run, db.parent / "tiny-ref.html", model=loaded)


class _Loads(HTMLParser):
    """Collects every src/href attribute and whether any script element has a src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.script_src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.urls.append(value)
                if tag == "script":
                    self.script_src.append(value)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_every_analysis_has_a_section(synthetic_report: Path) -> None:
    page = _text(synthetic_report)
    for name in ANALYSES:
        assert f'id="{anchor(name)}"' in page, name
        assert f'href="#{anchor(name)}"' in page, name  # table of contents
    assert "Traceback" not in page


def test_unavailable_analyses_say_why_and_how(synthetic_report: Path) -> None:
    page = html.unescape(_text(synthetic_report))
    assert "Not computed: the run stores no router logits; capture with --logits fp16" in page
    assert "Not computed: the run has no expert_stats; capture with --expert-stats" in page
    assert "Not computed: it runs the model; give --model with the model the run was captured from" in page
    # --compare was given, so drift ran against the rerun.
    assert 'data-analysis="drift" data-status="ok"' in _text(synthetic_report)
    assert "Routing between this run and rerun drifts most at layer" in page
    # The code/math pairs make a contrast set: the planted expert tops the resonance map.
    assert "Layer 1 expert 5 is selected for " in page and " of code tokens vs " in page


def test_planted_specialisation_sentence_comes_from_the_table(
    synthetic_db: tuple[Path, str, str], synthetic_report: Path
) -> None:
    path, run, _ = synthetic_db
    with Store(path, read_only=True) as st:
        df = run_analysis("specialisation", st, run)
    code = specialised_cells(df).filter(pl.col("label") == "code")
    top = code.row(0, named=True)
    assert (top["layer"], top["expert"]) == (PLANT_LAYER, PLANT_EXPERT)
    expected = (
        f"Label code uses layer {PLANT_LAYER} expert {PLANT_EXPERT} more than the other labels do: "
        f"{100 * top['share']:.0f}% of its tokens vs {100 * top['share_rest']:.0f}% of theirs ("
    )
    page = html.unescape(_text(synthetic_report))
    assert expected in page and specialist_sentence(top) in page
    assert "more than uniform" not in page
    assert 85 <= round(100 * top["share"]) <= 97  # the plant: 90% + 10% × k/E


def test_nulls_are_stated_honestly() -> None:
    df = pl.DataFrame({
        "layer": [0, 0, 0, 0], "expert": [0, 1, 0, 1], "label": ["a", "a", "math", "math"],
        "share": [1.0, 1.0, 1.0, 1.0], "share_rest": [0.9, 1.0, 0.9, 1.0], "specificity": [1.1, 1.0, 1.1, 1.0],
        "log_odds": [0.1, 0.0, 0.1, 0.0], "lo_low": [0.0] * 4, "lo_high": [0.2] * 4,
        "lift": [1.0, 1.0, 1.0, 1.0], "ci_low": [0.9] * 4, "ci_high": [1.0] * 4,
        "p": [0.3, 0.5, 0.2, 0.9], "q": [0.6, 0.6, 0.6, 0.9],
    })  # fmt: skip
    sentences = findings_for("specialisation", df, Context(n_experts=2, top_k=2))
    assert sentences[0].startswith("0 of 4 (layer, expert, label) cells")
    assert (
        "No expert is significantly specialised for math: no expert is used more by it than by the other labels "
        "at q < 0.05 (smallest q of a cell it over-uses = 0.6)."
    ) in sentences


def test_store_strings_are_escaped_and_nothing_loads_from_the_network(synthetic_report: Path) -> None:
    page = _text(synthetic_report)
    assert XSS not in page
    assert html.escape(XSS, quote=True) in page  # the label and the prompt text, shown as text
    parser = _Loads()
    parser.feed(page)
    assert parser.script_src == []  # plotly.js is inline, not from a CDN
    external = [u for u in parser.urls if u.startswith(("http://", "https://", "//"))]
    assert external == []
    assert page.count("Plotly.newPlot(") >= 1
    assert page.count('<script type="text/javascript">window.PlotlyConfig') == 1  # embedded once


def test_cli_report(synthetic_db: tuple[Path, str, str], tmp_path: Path) -> None:
    path, run, _ = synthetic_db
    out = tmp_path / "cli.html"
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["report", "--db", str(path), "--run", run, "--out", str(out), "-a", "load", "-a", "specialisation"],
    )
    assert res.exit_code == 0, res.output
    page = _text(out)
    assert f'id="{anchor("load")}"' in page and f'id="{anchor("drift")}"' not in page
    bad = runner.invoke(app, ["report", "--db", str(path), "--run", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "no run 'nope'" in bad.output


def _open(browser: Any, report: Path, shot: Path) -> dict[str, Any]:
    """Load ``report``; return console errors, page errors, outside requests and figure counts."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def route(r: Any) -> None:
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(report.as_uri(), wait_until="load")
    expected = page.locator("div.plotly-graph-div").count()
    drawn_js = (
        "() => [...document.querySelectorAll('div.plotly-graph-div')]"
        ".filter(d => d.classList.contains('js-plotly-plot') && d.querySelector('svg.main-svg')).length"
    )
    page.wait_for_function(f"() => ({drawn_js})() === {expected}", timeout=30_000)
    drawn = page.evaluate(drawn_js)
    xss = page.evaluate("() => window.__xss === undefined")
    # The contents' second column starts far enough right of the first for its numbers (which sit
    # outside the items) not to cover the first column's text, as they once did.
    toc_gap = page.evaluate(
        """() => {
            const boxes = [...document.querySelectorAll('nav.toc li')].map(li => li.getBoundingClientRect());
            const left = Math.min(...boxes.map(b => b.left));
            const first = boxes.filter(b => b.left === left), second = boxes.filter(b => b.left > left);
            if (!second.length) { return null; }
            return Math.min(...second.map(b => b.left)) - Math.max(...first.map(b => b.right));
        }"""
    )
    fonts = page.evaluate(
        "() => [...document.querySelectorAll('div.js-plotly-plot')].map(d => d._fullLayout.font.family)"
    )
    page.screenshot(path=str(shot), full_page=False)
    if expected:
        page.locator("div.plotly-graph-div").first.screenshot(path=str(shot.with_suffix(".figure.png")))
    page.close()
    return {
        "errors": errors, "outside": outside, "expected": expected, "drawn": drawn, "xss_safe": xss,
        "toc_gap": toc_gap, "fonts": fonts,
    }  # fmt: skip


def test_report_renders_in_headless_chromium(synthetic_report: Path, tiny_ref_report: Path) -> None:
    sync_playwright = sync_playwright_or_fail()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            results = {
                name: _open(browser, report, report.with_suffix(".png"))
                for name, report in (("synthetic", synthetic_report), ("tiny-ref", tiny_ref_report))
            }
        finally:
            browser.close()
    for name, res in results.items():
        assert res["errors"] == [], (name, res["errors"])
        assert res["outside"] == [], (name, res["outside"])
        assert res["xss_safe"], name
        assert res["drawn"] == res["expected"], (name, res)
        assert res["toc_gap"] is None or res["toc_gap"] >= TOC_MARKER_PX, (name, res["toc_gap"])
        assert set(res["fonts"]) == {FONT}, (
            name,
            set(res["fonts"]),
        )  # every figure in the workbench template
    # The real capture has logits, expert stats and the model: all but drift and resonance are drawn.
    assert results["tiny-ref"]["expected"] >= len(ANALYSES) - 2
    assert results["synthetic"]["expected"] >= 10
    assert tiny_ref_report.with_suffix(".png").stat().st_size > 10_000


def test_tiny_ref_report_states_real_findings(tiny_ref_report: Path) -> None:
    page = _text(tiny_ref_report)
    for name, spec in ANALYSES.items():
        # Not a contrast set and no --compare run: those two say why; everything else ran.
        status = "skipped" if {"compare", "contrast"} & set(spec.needs) else "ok"
        assert f'data-analysis="{name}" data-status="{status}"' in page, name
    text = html.unescape(page)
    assert "Qwen2MoeForCausalLM" in text  # header: architecture from the store
    seen = re.sub(r"<script.*?</script>", "", page, flags=re.S)  # what a reader sees: no raw BPE symbols
    assert not any(c in seen for c in ("Ġ", "Ċ"))
    assert "% of routed slots (95% CI " in text
    assert "accuracy (± " in text


def test_example_contexts_of_the_strongest_specialists(synthetic_report: Path) -> None:
    page = _text(synthetic_report)
    part = page[page.index('<section id="example-contexts">') :]
    part = part[: part.index("</section>")]
    text = html.unescape(part)
    # Both plants are specialists, each listed with top contexts and a sample (the token marked).
    assert (
        "Layer 1 · expert 5 (specialised to code)" in text
        and "Layer 0 · expert 2 (specialised to math)" in text
    )
    assert text.count("<h4>Top contexts</h4>") == text.count("<h4>Random sample</h4>") >= 2
    assert '<mark title="token id' in part
    assert XSS not in part  # labels reach the page escaped here too
