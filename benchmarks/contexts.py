"""Example-contexts benchmark (issue 16 item 2): an expert card's contexts on a 1M-token synthetic run.

The run is the analysis benchmark's (:mod:`benchmarks.analysis_data`: 1M tokens × 8 layers × 16
experts, top-2, written through the store and cached). For a few (layer, expert) cells it times,
best of ``--repeats``:

* ``expert_contexts``: what the expert card asks for (top 10 by gate weight, a seeded sample of 10,
  the label mix, windows of 8 tokens decoded either side), all from the store;
* ``naive polars``: the same top 10, sample and label mix computed in polars after reading the
  layer's routing rows and the run's prompts out of the store (what a notebook user would write),
  windows left out: the ratio says what doing it in SQL saves;
* ``expert_top_tokens``: the card's existing top-tokens read, as a yardstick at the same scale.

    python benchmarks/contexts.py                  # 1,000,000 tokens (the store is built once)
    python benchmarks/contexts.py --tokens 20000   # smoke size
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``workbench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl

from benchmarks.analysis_data import RUN_A, Workload, cached_db
from workbench.analysis.relevance import expert_top_tokens
from workbench.analysis.tokens import expert_contexts
from workbench.store import Store

CELLS = ((0, 4), (3, 9), (7, 15))
"""(layer, expert) cells timed: a planted partner expert, a label expert and an ordinary one."""


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(minimum seconds over ``repeats`` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def naive(store: Store, layer: int, expert: int, n: int, seed: int) -> pl.DataFrame:
    """Top ``n`` by weight, a random ``n`` and the label mix, in polars over the layer's rows read out."""
    rows = store.routing(RUN_A, layers=[layer], logits=False)
    sel = rows.filter(pl.col("experts").list.contains(expert)).with_columns(
        pl.col("weights")
        .list.get(pl.col("experts").list.eval(pl.element() == expert).list.arg_max())
        .alias("w")
    )
    labelled = sel.join(store.prompts(RUN_A).select("prompt_id", "label"), on="prompt_id")
    top = labelled.sort("w", descending=True).head(n)
    sample = labelled.sample(n, seed=seed)
    mix = labelled.group_by("label").len()
    return pl.concat(
        [top.select("prompt_id", "position", "label"), sample.select("prompt_id", "position", "label")]
    ).join(mix, on="label")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--cache-dir", default=str(Path(tempfile.gettempdir()) / "moe-workbench-bench"), help="cached stores"
    )
    args = p.parse_args(argv)
    w = Workload(tokens=args.tokens)
    start = time.perf_counter()
    path, built = cached_db(w, Path(args.cache_dir))
    print(f"# workload: {w.describe()}")
    print(
        f"# store: {path} ({'built in ' + format(time.perf_counter() - start, '.0f') + ' s' if built else 'cached'})"
    )
    print(
        "| layer | expert | selections | expert_contexts s | naive polars s | ratio | expert_top_tokens s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with Store(path, read_only=True) as store:
        for layer, expert in CELLS:
            ours_s, found = best_of(
                functools.partial(expert_contexts, store, RUN_A, layer, expert), args.repeats
            )
            naive_s, _ = best_of(functools.partial(naive, store, layer, expert, 10, 0), args.repeats)
            top_s, _ = best_of(
                functools.partial(expert_top_tokens, store, RUN_A, layer, expert), args.repeats
            )
            print(
                f"| {layer} | {expert} | {found.n_selected:,} | {ours_s:.3f} | {naive_s:.3f} | "
                f"{ours_s / naive_s:.2f} | {top_s:.3f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
