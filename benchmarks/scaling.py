"""Scaling curves (issue 14 item 7): how the store, every analysis and the dashboard grow with a run.

For each size (tokens per run), the synthetic runs of ``analysis_data.py`` (8 layers × 16 experts,
top-2, fp16 logits, expert stats, labels; run ``bench-b`` a second capture of the same prompts) are
written through the store's real write path (``Store.write_batch``: shards, manifest, tokens,
prompts). Then, on run ``bench-a``:

- ``write s``: the time to write both runs (the writer path without a model; a model's forward comes
  on top and is measured by ``capture.py`` and ``writer.py``), including the per-prompt summaries
  that completing a run builds;
- ``summary s`` / ``summary MB``: of those, the seconds the summaries took (``summary_builds.build_s``
  of both runs, per part) and the bytes their tables take (copied alone into a fresh DuckDB file);
- ``store MB``: every file of the store (the DuckDB file and its shard folder);
- each catalogued analysis that needs no model: one cold wall time (the analyses have no cache), the
  CPU seconds of the process (all threads; on a busy box the wall time also counts other jobs) and
  its peak RSS above the RSS it started at (sampled every 2 ms);
- each dashboard page's server-side work: the view functions its callbacks call, from a cold data
  cache (``dashboards.data.clear_cache``), run ``--page-repeats`` times, the maximum reported (with
  3 repeats it bounds the 95th percentile of those 3 and no more); then the 95th percentile of 20
  warm loads (the page's tables cached, as when a user clicks around; figures are still built).

Results go to ``--out`` as JSON lines (one per size, appended, so a long size can be added later) and
``--render`` prints the markdown table and writes a log-log PNG of every curve (plotly, drawn by the
headless Chromium the browser tests use).

    python benchmarks/scaling.py --tokens 10000,100000,1000000 --out benchmarks/scaling.jsonl
    python benchmarks/scaling.py --render benchmarks/scaling.jsonl --png benchmarks/scaling.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.analysis import PeakRSS  # noqa: E402
from benchmarks.analysis_data import RUN_A, RUN_B, Workload, build  # noqa: E402
from workbench.catalog import ANALYSES, run_analysis  # noqa: E402
from workbench.store import Store, remove_store, store_size  # noqa: E402


def _pages(db: str) -> dict[str, list[Callable[[], Any]]]:
    """Each dashboard page's server-side work for run A: the view functions its callbacks call."""
    from dashboards import data
    from dashboards.views import coactivation, expert, health
    from workbench.catalog import figure_for

    def spec_figure() -> Any:
        return figure_for("specialisation", data.analysis(db, RUN_A, "specialisation"))

    return {
        "runs": [lambda: data.runs(db), lambda: data.run_info(db, RUN_A), lambda: data.layers(db, RUN_A)],
        "routing": [lambda: data.prompt_routing(db, RUN_A, 0), lambda: figure_for("load", data.analysis(db, RUN_A, "load"))],
        "specialisation": [spec_figure],
        "health": [lambda: health.load(db, RUN_A), lambda: health.balance(db, RUN_A)],
        "coactivation": [lambda: coactivation.matrix(db, RUN_A, None), lambda: coactivation.pathways(db, RUN_A)],
        "expert": [lambda: expert.expert_card(db, RUN_A, 3, 3)],
    }  # fmt: skip


#: Loads of each page once its tables are cached (what a user clicking around sees), for the p95.
WARM_LOADS = 20


def _timed(calls: list[Callable[[], Any]]) -> float:
    start = time.perf_counter()
    for call in calls:
        call()
    return time.perf_counter() - start


def _summary_cost(path: Path, workdir: Path) -> tuple[dict[str, float], float]:
    """Seconds per summary part (both runs) and the MB of the summary tables alone."""
    from workbench.store import summaries

    copy = workdir / "summaries-only.duckdb"
    copy.unlink(missing_ok=True)
    con = duckdb.connect(str(copy))
    try:
        con.execute("ATTACH ? AS src (READ_ONLY)", [str(path)])
        built = con.sql(
            "SELECT part, sum(build_s) AS s FROM src.summary_builds GROUP BY part ORDER BY part"
        ).fetchall()
        for table in (summaries.BUILDS, *(t for part in summaries.PART_TABLES.values() for t in part)):
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM src.{table}")
        con.execute("DETACH src")
    finally:
        con.close()
    size = copy.stat().st_size / 1e6
    copy.unlink()
    return {str(part): float(secs) for part, secs in built}, size


def measure(tokens: int, workdir: Path, page_repeats: int, existing: Path | None = None) -> dict[str, Any]:
    """Every number of one size; with ``existing`` (a store of this size written by ``analysis_data.build``,
    perhaps by an older release) that store is measured in place instead of writing one: opening it
    writable migrates it and builds its summaries (``migrate_s``), and the write is not timed."""
    from dashboards import data

    w = Workload(tokens=tokens)
    path = existing or workdir / f"scaling-{tokens}.duckdb"
    out: dict[str, Any] = {
        "tokens": tokens,
        "rows": tokens * w.layers,
        "layers": w.layers,
        "experts": w.experts,
    }
    start = time.perf_counter()
    if existing is None:
        remove_store(path)
        build(w, path)
        out["write_s"] = time.perf_counter() - start
    else:
        Store(path).close()
        out["write_s"] = None
        out["migrate_s"] = time.perf_counter() - start
    out["store_mb"] = store_size(path) / 1e6
    out["summary_s"], out["summary_mb"] = _summary_cost(path, workdir)
    analyses: dict[str, float | str] = {}
    peak: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds of this process (all threads): less sensitive to a busy box
    with Store(path, read_only=True) as st:
        for name, spec in sorted(ANALYSES.items()):
            if "model" in spec.needs or "contrast" in spec.needs:
                continue
            start = time.perf_counter()
            cpu_start = time.process_time()
            try:
                with PeakRSS() as rss:
                    run_analysis(name, st, RUN_A, compare=RUN_B if spec.is_compare else None)
                analyses[name] = time.perf_counter() - start
                cpu[name] = time.process_time() - cpu_start
                peak[name] = rss.delta_mib
            except Exception as exc:  # a refusal is a result of the table, not the end of the run
                analyses[name] = f"{type(exc).__name__}: {exc}"[:100]
            print(f"# {tokens:,} tokens  {name}: {analyses[name]}", file=sys.stderr, flush=True)
    out["analyses"] = analyses
    out["analyses_peak_mib"] = peak
    out["analyses_cpu_s"] = cpu
    pages: dict[str, float] = {}
    warm: dict[str, float] = {}
    for page, calls in _pages(str(path)).items():
        times = []
        for _ in range(page_repeats):
            data.clear_cache()
            times.append(_timed(calls))
        pages[page] = max(times)
        warm_times = [_timed(calls) for _ in range(WARM_LOADS)]  # the data cache now holds the page's tables
        warm[page] = float(np.percentile(warm_times, 95))
        print(
            f"# {tokens:,} tokens  page {page}: cold {pages[page]:.2f}s, warm p95 {warm[page]:.3f}s",
            file=sys.stderr,
            flush=True,
        )
    data.shutdown()
    out["pages"] = pages
    out["pages_warm_p95"] = warm
    if existing is None:
        remove_store(path)
    return out


def load_results(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["tokens"])


def render(results: list[dict[str, Any]]) -> str:
    """The markdown table: one row per quantity, one column per size."""
    sizes = [r["tokens"] for r in results]
    head = "| | " + " | ".join(f"{n:,} tokens" for n in sizes) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|"]

    def row(label: str, values: list[Any], fmt: str = "{:.2f}") -> None:
        cells = [
            fmt.format(v) if isinstance(v, (int, float)) else "—" if v is None else "error" for v in values
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("routing rows", [r["rows"] for r in results], "{:,}")
    row("write both runs, s (summaries included)", [r["write_s"] for r in results])
    for part in sorted({p for r in results for p in r.get("summary_s", {})}):
        row(f"of which summaries `{part}`, s", [r.get("summary_s", {}).get(part) for r in results])
    row("open an existing v4 store: migrate + summaries, s", [r.get("migrate_s") for r in results])
    row("store MB (file + shards)", [r["store_mb"] for r in results])
    row("of which summaries, MB", [r.get("summary_mb") for r in results])
    for name in sorted({n for r in results for n in r["analyses"]}):
        row(f"analysis `{name}`, s", [r["analyses"].get(name) for r in results])
    row(
        "largest peak ΔRSS of one analysis, MiB",
        [max(r["analyses_peak_mib"].values()) if r.get("analyses_peak_mib") else None for r in results],
        "{:.0f}",
    )
    for page in sorted({p for r in results for p in r["pages"]}):
        row(f"page `{page}`, s (max of cold loads)", [r["pages"].get(page) for r in results])
    for page in sorted({p for r in results for p in r.get("pages_warm_p95", {})}):
        row(f"page `{page}`, ms (p95 of {WARM_LOADS} warm loads)",
            [1000 * r["pages_warm_p95"][page] if page in r.get("pages_warm_p95", {}) else None for r in results], "{:.0f}")  # fmt: skip
    return "\n".join(lines)


def png(results: list[dict[str, Any]], target: Path) -> None:
    """Log-log curves of every timing, drawn to PNG by headless Chromium (no kaleido needed)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sizes = [r["tokens"] for r in results]
    fig = make_subplots(
        rows=1, cols=3, subplot_titles=("write + store", "analyses (cold)", "dashboard pages (cold)")
    )
    fig.add_trace(go.Scatter(x=sizes, y=[r["write_s"] for r in results], name="write s"), 1, 1)
    fig.add_trace(go.Scatter(x=sizes, y=[r["store_mb"] for r in results], name="store MB"), 1, 1)
    for name in sorted({n for r in results for n in r["analyses"]}):
        ys = [r["analyses"].get(name) for r in results]
        fig.add_trace(
            go.Scatter(x=sizes, y=[y if isinstance(y, float) else None for y in ys], name=name), 1, 2
        )
    for page in sorted({p for r in results for p in r["pages"]}):
        fig.add_trace(
            go.Scatter(x=sizes, y=[r["pages"].get(page) for r in results], name=f"page {page}"), 1, 3
        )
    fig.update_xaxes(type="log", title_text="tokens per run")
    fig.update_yaxes(type="log")
    fig.add_hline(y=2.0, line_dash="dot", annotation_text="2 s", row=1, col=2)  # type: ignore[arg-type]
    fig.update_yaxes(title_text="seconds (write) · MB (store)", row=1, col=1)
    fig.update_yaxes(title_text="seconds", row=1, col=2)
    fig.update_yaxes(title_text="seconds", row=1, col=3)
    fig.update_layout(width=1800, height=900, template="plotly_white", legend={"font": {"size": 11}})
    html = Path(tempfile.mkdtemp()) / "scaling.html"
    fig.write_html(html, include_plotlyjs=True)
    sys.path.insert(0, str(ROOT / "tests"))
    from browser_support import CHROMIUM, CHROMIUM_ARGS, sync_playwright_or_fail

    with sync_playwright_or_fail()() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1800, "height": 900})
        page.goto(html.as_uri())
        page.wait_for_timeout(1000)
        page.screenshot(path=str(target))
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", default="10000,100000,1000000", help="comma-separated tokens per run")
    parser.add_argument("--out", type=Path, default=Path("scaling.jsonl"), help="JSON lines to append to")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the stores are built (default: a temp dir)"
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help="measure this existing store of the one --tokens size in place (migrated, summaries built) instead of writing one",
    )
    parser.add_argument("--page-repeats", type=int, default=3, help="cold loads per dashboard page")
    parser.add_argument(
        "--render", type=Path, default=None, help="print the table of these JSON lines and stop"
    )
    parser.add_argument("--png", type=Path, default=None, help="with --render: also write the curves here")
    args = parser.parse_args(argv)
    if args.render is not None:
        results = load_results(args.render)
        print(render(results))
        if args.png is not None:
            png(results, args.png)
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wb-scaling-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for tokens in (int(t) for t in args.tokens.split(",")):
        result = measure(tokens, workdir, args.page_repeats, args.store)
        with args.out.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
    print(render(load_results(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
