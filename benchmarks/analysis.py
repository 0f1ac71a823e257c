"""Analysis-suite benchmark (issue 4): every catalogued analysis on a 1M-token synthetic run.

The run is written through :class:`workbench.store.Store` (``create_run`` / ``write_batch``, the path
capture uses) by :mod:`benchmarks.analysis_data` and cached by parameters. Each analysis is timed
best-of-N through :func:`workbench.catalog.run_analysis`; its peak memory is the peak
resident set size (psutil, sampled every 2 ms in a thread, so it includes DuckDB's native memory)
minus the RSS just before the first call. Then the data are loaded once into flat pandas frames and
a straightforward pandas version of the same point estimates (:mod:`benchmarks.analysis_pandas`) is
timed the same way, **compute only** (the one-off load into pandas is reported separately), and its
numbers are checked against the workbench's.

    python benchmarks/analysis.py                     # 1,000,000 tokens (DB built once, ~25 s)
    python benchmarks/analysis.py --tokens 20000      # smoke size
    python benchmarks/analysis.py --markdown          # the table for benchmarks/README.md
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``workbench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import polars as pl
import psutil

from benchmarks.analysis_data import RUN_A, RUN_B, Workload, cached_db
from benchmarks.analysis_pandas import BASELINES, Baseline, load
from workbench.catalog import ANALYSES, run_analysis
from workbench.store import Store

TARGET_S = 2.0
#: What the synthetic store provides; analyses needing anything else are listed as skipped.
SUPPORTED_NEEDS = {"routing", "logits", "weights", "expert_stats", "compare"}


@dataclass
class Row:
    name: str
    needs: str
    wb_s: float = float("nan")
    wb_mib: float = float("nan")
    pd_s: float = float("nan")
    max_diff: float = float("nan")
    agree: bool | None = None
    computes: str = ""
    note: str = ""
    result: Any = field(default=None, repr=False)

    @property
    def ratio(self) -> float:
        return self.pd_s / self.wb_s if self.wb_s > 0 else float("nan")


class PeakRSS:
    """Peak RSS of this process above its RSS at entry, sampled in a background thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(best wall seconds, peak RSS delta MiB of the first call, result of the first call)."""
    times = []
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    for _ in range(repeats - 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), mem.delta_mib, result


def compare(wb: pl.DataFrame, base: pd.DataFrame, spec: Baseline, rtol: float = 1e-6) -> tuple[float, bool]:
    """Max abs difference of the value columns (matched on keys) and whether all are close."""
    left = wb.select(*spec.keys, *spec.values).to_pandas()
    right = base[list(spec.keys) + list(spec.values)]
    for key in spec.keys:
        if pd.api.types.is_numeric_dtype(left[key]):
            left[key] = left[key].astype(np.float64)
            right = right.assign(**{key: right[key].astype(np.float64)})
        else:  # strings; a NULL label matches a NULL label
            left[key] = left[key].astype(object).where(left[key].notna(), "<null>")
            right = right.assign(**{key: right[key].astype(object).where(right[key].notna(), "<null>")})
    merged = left.merge(right, on=list(spec.keys), how="left", suffixes=("_wb", "_pd"))
    worst, ok = 0.0, True
    for col in spec.values:
        a = merged[f"{col}_wb"].to_numpy(np.float64)
        b = merged[f"{col}_pd"].to_numpy(np.float64)
        if spec.fill_zero:
            b = np.where(np.isnan(b), 0.0, b)
        both_nan = np.isnan(a) & np.isnan(b)
        diff = np.where(both_nan, 0.0, np.abs(a - b))
        worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
        ok = ok and bool(np.all(both_nan | np.isclose(a, b, rtol=rtol, atol=1e-9)))
    return worst, ok and len(merged) > 0


def run(args: argparse.Namespace) -> tuple[Workload, list[Row], float, float]:
    w = Workload(tokens=args.tokens, seed=args.seed)
    start = time.perf_counter()
    path, built = cached_db(w, Path(args.cache_dir))
    build_s = time.perf_counter() - start
    print(f"# store: {path} ({'built' if built else 'cached'} in {build_s:.1f}s)", file=sys.stderr)
    names = args.only or list(ANALYSES)
    rows: list[Row] = []
    with Store(path, read_only=True) as st:
        for name in names:
            spec = ANALYSES[name]
            row = Row(name, "+".join(n for n in spec.needs if n != "routing") or "routing")
            compare_run = RUN_B if spec.is_compare else None
            other = sorted(set(spec.needs) - SUPPORTED_NEEDS)
            if other:
                why = "the model's weights" if "model" in other else "/".join(other) + " data"
                row.note = f"skipped: needs {why} (not in this synthetic store)"
                rows.append(row)
                continue
            try:
                row.wb_s, row.wb_mib, row.result = best_of(
                    functools.partial(run_analysis, name, st, RUN_A, compare=compare_run), args.repeats
                )
            except Exception as exc:  # a failure is a row of the table, not the end of the benchmark
                row.note = f"failed: {type(exc).__name__}: {exc}"[:120]
            rows.append(row)
            print(f"#   {name}: {row.wb_s:.2f}s", file=sys.stderr)
        start = time.perf_counter()
        frames = load(st.con, RUN_A, RUN_B, w.experts, w.top_k)
        load_s = time.perf_counter() - start
    for row in rows:
        spec_b = BASELINES.get(row.name)
        if spec_b is None and row.note.startswith("skipped"):
            continue
        if spec_b is None:
            row.computes = (
                "no pandas baseline: specialists need permutation q-values (not reimplemented)"
                if row.name == "underfitting"
                else "no pandas baseline"
            )
            continue
        row.computes = spec_b.computes
        if row.result is None:
            continue
        try:
            row.pd_s, _, base = best_of(functools.partial(spec_b.fn, frames), args.repeats)
            row.max_diff, row.agree = compare(row.result, base, spec_b)
        except Exception as exc:
            row.note = f"baseline failed: {type(exc).__name__}: {exc}"[:120]
            row.agree = False
    return w, rows, build_s, load_s


def _fmt(x: float, spec: str) -> str:
    return "—" if x != x else format(x, spec)


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        flag = " ⚠" if r.wb_s > TARGET_S else ""
        agree = "—" if r.agree is None else ("yes" if r.agree else "NO")
        out.append([
            r.name, r.needs, _fmt(r.wb_s, ".2f") + flag, _fmt(r.wb_mib, ".0f"), _fmt(r.pd_s, ".2f"),
            _fmt(r.ratio, ".2f"), f"{agree} ({_fmt(r.max_diff, '.1e')})" if r.agree is not None else agree,
            r.note or r.computes,
        ])  # fmt: skip
    return out


HEADERS = [
    "analysis",
    "needs",
    "workbench s",
    "peak ΔRSS MiB",
    "pandas s",
    "pandas/wb",
    "agree (max abs Δ)",
    "pandas computes",
]


def print_table(
    w: Workload, rows: list[Row], build_s: float, load_s: float, args: argparse.Namespace
) -> None:
    cores = len(os.sched_getaffinity(0))
    head = (
        f"workload: {w.describe()}\nmachine: {cores} cores; best of {args.repeats}; store build/cache "
        f"{build_s:.1f}s; load into pandas (not in 'pandas s') {load_s:.1f}s"
    )
    if args.markdown:
        print(head.replace("\n", "  \n"))
        print()
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "---|" * len(HEADERS))
        for cells in table_rows(rows):
            print("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="analysis suite", caption=head)
    for h in HEADERS:
        table.add_column(h, overflow="fold")
    for cells in table_rows(rows):
        table.add_row(*cells)
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1_000_000, help="tokens in the synthetic run")
    parser.add_argument("--repeats", type=int, default=3, help="best of N wall times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir", default=str(Path(tempfile.gettempdir()) / "moe-workbench-bench"), help="cached stores"
    )
    parser.add_argument("--only", nargs="*", choices=sorted(ANALYSES), help="run only these analyses")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    w, rows, build_s, load_s = run(args)
    print_table(w, rows, build_s, load_s, args)
    bad = [r.name for r in rows if r.agree is False or r.note.startswith("failed")]
    if bad:
        print(f"MISMATCH or failure: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
