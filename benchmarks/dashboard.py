"""Dashboard callback latency on a large run, measured through the real app in headless Chromium.

Serves ``dashboards.app.create_app`` over the synthetic run of ``benchmarks/analysis.py``
(1M tokens × 8 layers × 16 experts by default, written through the store), opens every page in
Chromium (Playwright) and records the duration of each ``/_dash-update-component`` request from
the browser's resource timing: what a user waits for after an interaction. Each page is visited
with several query strings (labels, layers, experts), first with cold caches and then again
(warm: the data layer's LRU cache holds the analysis tables). Prints p50/p95/max per page and
overall; ``--markdown`` gives the table for benchmarks/README.md. The issue's target: p95 ≤ 500 ms.

    python benchmarks/dashboard.py [--tokens 1000000] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def _callback_ms(page: object) -> list[float]:
    entries = page.evaluate(  # type: ignore[attr-defined]
        "performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('_dash-update-component')).map(e => e.duration)"
    )
    return [float(x) for x in entries]


def measure(base: str, w: Workload, settle_ms: int, timeout_ms: int) -> dict[tuple[str, str], list[float]]:
    """(page, "cold"|"warm") → callback durations in ms."""
    from playwright.sync_api import sync_playwright

    out: dict[tuple[str, str], list[float]] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            for phase in ("cold", "warm"):
                for name, paths in visits(w).items():
                    times: list[float] = []
                    for path in paths:
                        page = browser.new_page()
                        page.goto(base + path, wait_until="networkidle", timeout=timeout_ms)
                        page.wait_for_timeout(settle_ms)
                        times += _callback_ms(page)
                        page.close()
                    out[(name, phase)] = times
        finally:
            browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "moe-workbench-bench"))
    parser.add_argument(
        "--settle-ms", type=int, default=500, help="wait after network idle before reading timings"
    )
    parser.add_argument(
        "--timeout-ms", type=int, default=600_000, help="per page load (cold analyses can be slow)"
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
    data.clear_cache()
    server = make_server("127.0.0.1", 0, create_app(path).server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    start = time.perf_counter()
    try:
        timings = measure(f"http://127.0.0.1:{server.server_port}", w, args.settle_ms, args.timeout_ms)
    finally:
        server.shutdown()
    wall = time.perf_counter() - start
    rows = []
    for phase in ("cold", "warm"):
        everything: list[float] = []
        for (name, ph), times in timings.items():
            if ph != phase:
                continue
            everything += times
            rows.append((phase, name, times))
        rows.append((phase, "ALL", everything))
    header = "| phase | page | callbacks | p50 ms | p95 ms | max ms | p95 ≤ 500 ms |"
    lines = [header, "|---|---|---:|---:|---:|---:|---|"]
    for phase, name, times in rows:
        if not times:
            lines.append(f"| {phase} | {name} | 0 | – | – | – | – |")
            continue
        a = np.asarray(times)
        p95 = float(np.percentile(a, 95))
        lines.append(
            f"| {phase} | {name} | {a.size} | {np.percentile(a, 50):.0f} | {p95:.0f} | {a.max():.0f} | "
            f"{'yes' if p95 <= 500 else 'no'} |"
        )
    print("\n".join(lines) if args.markdown else "\n".join(line.replace("|", " ") for line in lines))
    print(f"# {w.describe()}; wall {wall:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
