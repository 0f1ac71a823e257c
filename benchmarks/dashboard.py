"""Dashboard callback latency and time-to-figure on a large run, measured through the real app in Chromium.

Serves ``dashboards.app.create_app`` over the synthetic run of ``benchmarks/analysis.py``
(1M tokens × 8 layers × 16 experts by default, written through the store; built once and cached
under ``--cache-dir``), opens every page in headless Chromium (Playwright) with several query
strings (labels, layers, experts) and records two things per visit:

* **callback latency**: the duration of every ``/_dash-update-component`` request, from the
  browser's resource timing — what a user waits for after an interaction. Callbacks never run an
  analysis inline: a table that is not ready is started in the data layer's background pool and
  the page shows "computing … for run R…" and polls; the polls are callbacks too and are counted.
* **time to figure**: from navigation start until the page is done — no ``.wb-pending``
  placeholder left, no callback in flight, none started for ``--settle-ms`` — read on the page's
  own clock by a probe that runs on its main thread, so the time the browser spends drawing the
  figures counts too: when the user sees the real figures.

Phases: ``cold`` — a fresh server with empty caches (no prewarm, no disk cache), so every first
visit starts its analyses; ``warm`` — the same visits again (tables in memory); ``restart`` — the
in-memory cache dropped, as for a new server process, but the parquet tables the cold phase wrote
under a fresh ``--disk-cache`` folder are there (what ``moe-workbench serve`` does by default).
Prints p50/p95/max per page and phase; ``--markdown`` gives the table for benchmarks/README.md.
The issue's target: p95 callback latency ≤ 500 ms.

    python benchmarks/dashboard.py [--tokens 1000000] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from analysis_data import RUN_A, Workload, cached_db

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


def visits(w: Workload) -> dict[str, list[str]]:
    """Page → the query strings visited (each one triggers that page's callbacks)."""
    run = f"run={RUN_A}"
    labels = w.label_names[:2]
    return {
        "runs": [f"/?{run}"],
        "routing": [f"/routing?{run}&label={lab}" for lab in labels],
        "specialisation": [f"/specialisation?{run}&label={lab}" for lab in labels],
        "health": [f"/health?{run}"],
        "coactivation": [f"/coactivation?{run}&layer={x}" for x in (0, w.layers - 1)],
        "resonance": [f"/resonance?{run}&target={labels[0]}&control={labels[1]}"],
        "expert": [f"/expert?{run}&layer={x}&expert={e}" for x, e in ((0, 0), (w.layers - 1, 3))],
    }


_WATCH = """
new MutationObserver(() => {
    if (document.querySelector('.wb-pending')) { window.__wbSawPending = true; }
}).observe(document, {childList: true, subtree: true});
"""
"""Remembers whether a placeholder was ever drawn (one can come and go between two probes)."""

_PROBE = """() => {
    const calls = performance.getEntriesByType('resource').filter(e => e.name.includes('_dash-update-component'));
    return {
        pending: document.querySelectorAll('.wb-pending').length,
        saw_pending: window.__wbSawPending === true,
        now: performance.now(),
        problems: Array.from(document.querySelectorAll('.wb-warning, .wb-error')).map(e => e.innerText),
        durations: calls.map(e => e.duration),
    };
}"""


@dataclass
class Visit:
    """One page load: its callback durations, when the last placeholder was filled, and whether there was one."""

    callbacks: list[float] = field(default_factory=list)
    to_figure_ms: float = 0.0
    had_placeholder: bool = False


def visit(browser: Any, url: str, settle_ms: int, timeout_ms: int) -> Visit:
    """Open ``url``; wait until no placeholder is left, no callback is in flight and none came for ``settle_ms``.

    Time to figure is the page clock at the first probe of that final quiet stretch: a probe is
    itself run by the page's main thread, so time the browser spends drawing the figures counts.
    """
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    flight = {"sent": 0, "ended": 0}

    def count(key: str) -> Any:
        def hook(request: Any) -> None:
            if "_dash-update-component" in request.url:
                flight[key] += 1

        return hook

    page.on("request", count("sent"))
    page.on("requestfinished", count("ended"))
    page.on("requestfailed", count("ended"))
    try:
        page.add_init_script(_WATCH)
        page.goto(url, wait_until="load", timeout=timeout_ms)
        seen, quiet_at, quiet_since, had = (-1, -1), 0.0, time.monotonic(), False
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            probe = page.evaluate(_PROBE)
            had = had or probe["pending"] > 0 or probe["saw_pending"]
            state = (flight["sent"], flight["ended"])
            busy = probe["pending"] > 0 or state[0] != state[1] or not probe["durations"]
            if busy or state != seen:
                seen, quiet_at, quiet_since = state, float(probe["now"]), time.monotonic()
            elif time.monotonic() - quiet_since >= settle_ms / 1000:
                for text in probe["problems"]:  # a page that explains instead of drawing: say so
                    print(f"# {url}: {text}", file=sys.stderr)
                return Visit([float(x) for x in probe["durations"]], quiet_at, had)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: still computing after {timeout_ms} ms")
            page.wait_for_timeout(50)
    finally:
        page.close()


def measure(
    base: str, w: Workload, phases: list[str], settle_ms: int, timeout_ms: int, before_phase: Any
) -> dict[tuple[str, str], list[Visit]]:
    """(page, phase) → its visits; ``before_phase(phase)`` runs first (to drop the memory cache)."""
    from playwright.sync_api import sync_playwright

    out: dict[tuple[str, str], list[Visit]] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            for phase in phases:
                before_phase(phase)
                for name, paths in visits(w).items():
                    out[(name, phase)] = [
                        visit(browser, base + path, settle_ms, timeout_ms) for path in paths
                    ]
        finally:
            browser.close()
    return out


def _stats(values: list[float]) -> tuple[str, str, str]:
    if not values:
        return "–", "–", "–"
    a = np.asarray(values)
    return f"{np.percentile(a, 50):.0f}", f"{np.percentile(a, 95):.0f}", f"{a.max():.0f}"


def table(timings: dict[tuple[str, str], list[Visit]], phases: list[str]) -> list[str]:
    """Markdown rows: callback p50/p95/max and time-to-figure (max over the page's visits) per page and phase."""
    lines = [
        "| phase | page | visits | callbacks | p50 ms | p95 ms | max ms | p95 ≤ 500 ms | placeholders | "
        "time to figure, max ms |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for phase in phases:
        every: list[Visit] = []
        for (name, ph), found in timings.items():
            if ph == phase:
                every += found
                lines.append(_row(phase, name, found))
        lines.append(_row(phase, "**ALL**", every))
    return lines


def _row(phase: str, name: str, found: list[Visit]) -> str:
    calls = [x for v in found for x in v.callbacks]
    p50, p95, top = _stats(calls)
    ok = "–" if not calls else ("yes" if float(np.percentile(calls, 95)) <= 500 else "**no**")
    held = sum(v.had_placeholder for v in found)
    ttf = max((v.to_figure_ms for v in found), default=0.0)
    return f"| {phase} | {name} | {len(found)} | {len(calls)} | {p50} | {p95} | {top} | {ok} | {held} | {ttf:.0f} |"


def _migrate(path: Path) -> None:
    """Bring a cached store written by an older moe-workbench to the current schema (the dashboard reads only)."""
    from workbench.store import SchemaVersionError, Store

    try:
        Store(path, read_only=True).close()
    except SchemaVersionError:
        print(f"# migrating {path} to the current store schema", file=sys.stderr)
        Store(path).close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "moe-workbench-bench"))
    parser.add_argument(
        "--settle-ms",
        type=int,
        default=600,
        help="quiet time (no callback, no placeholder) that ends a visit",
    )
    parser.add_argument(
        "--timeout-ms", type=int, default=600_000, help="per visit (a cold analysis can be slow)"
    )
    parser.add_argument(
        "--no-restart", action="store_true", help="skip the restart phase (parquet tables from disk)"
    )
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    import logging

    from werkzeug.serving import make_server

    from dashboards import data
    from dashboards.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request would drown the table
    w = Workload(tokens=args.tokens)
    path, built = cached_db(w, Path(args.cache_dir))
    print(f"# store {path} ({'built' if built else 'cached'}); {w.describe()}", file=sys.stderr)
    _migrate(path)
    phases = ["cold", "warm"] + ([] if args.no_restart else ["restart"])
    with tempfile.TemporaryDirectory(prefix="moe-workbench-dash-tables-") as tables:
        data.clear_cache()
        app = create_app(path, cache_dir=tables, prewarm=False)
        server = make_server("127.0.0.1", 0, app.server, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()

        def before_phase(phase: str) -> None:
            if phase == "restart":  # a new server process: nothing in memory, the parquet tables on disk
                data.clear_cache()

        start = time.perf_counter()
        try:
            timings = measure(
                f"http://127.0.0.1:{server.server_port}",
                w,
                phases,
                args.settle_ms,
                args.timeout_ms,
                before_phase,
            )
        finally:
            server.shutdown()
            data.shutdown()
        wall = time.perf_counter() - start
    lines = table(timings, phases)
    print("\n".join(lines) if args.markdown else "\n".join(line.replace("|", " ") for line in lines))
    print(f"# {w.describe()}; wall {wall:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
