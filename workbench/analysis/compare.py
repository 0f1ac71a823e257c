"""Comparing runs (docs/methods.md §7): routing drift between two captures of the same prompts.

* **Routing drift / router saturation** (OLMoE), :func:`routing_drift`: for two runs over the
  same tokens, per layer the mean of ``|S ∩ S'| / k`` over the tokens present in both runs.
  Prompts are matched on their content hash (text and token ids, ``Store.match_prompts``),
  never on row index or prompt id, then tokens on ``(position, layer)``: a pair of runs that
  shares no prompt is refused (``PromptMismatchError``, a ``ValueError``), as is a run whose
  prompts have no hash; a partial overlap is computed on the shared prompts only, and the
  table says how many (``n_shared``, ``n_prompts_a``, ``n_prompts_b``; the sentence is
  :func:`drift_coverage`). ``k = max(|S|, |S'|)`` per token (the top-k
  of the two runs normally agree). 1 = identical routing; two independent uniform top-k
  routers give ``k/E`` in expectation (``E|S ∩ S'| = k²/E``), reported as ``chance``. The 95%
  CI is a prompt-cluster percentile bootstrap of the ratio of sums (``Σ_p overlap_p /
  Σ_p tokens_p``); layers over the same prompts share its draws. Raises ``ValueError`` when the
  shared prompts share no routed tokens.

Where every prompt pairs with its own prompt id, the tokens are paired by reading both runs in
step: first straight from their shards (:mod:`workbench.analysis.drift_scan`, the fast path), then
through DuckDB's unordered and sorted scans; a partial overlap, or rows that do not line up, go
through a DuckDB join.

Expert similarity (weights, and outputs on the run's tokens) needs the model, so it lives with
the interventions: :mod:`workbench.interventions.expert_weights` and
:mod:`workbench.interventions.expert_similarity`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import polars as pl

from workbench.analysis.drift_scan import shard_overlap
from workbench.analysis.stats import cluster_bootstrap
from workbench.store import Store, queries
from workbench.store.matching import coverage

__all__ = ["drift_coverage", "routing_drift"]


def routing_drift(
    store: Store,
    run_a: str,
    run_b: str,
    layers: Iterable[int] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> pl.DataFrame:
    """Mean top-k overlap ``|S ∩ S'| / k`` per layer between two runs (module docstring).

    One row per layer with matched tokens, sorted by layer. ``chance`` = ``k/E`` from run A's
    ``layers`` table (NaN for a layer it does not describe).
    """
    info = store.layers(run_a)  # raise UnknownRunError for unknown runs
    info_b = store.layers(run_b)
    match = store.match_prompts(run_a, run_b)  # refuses disjoint runs and runs without hashes
    layer_list = None if layers is None else [int(x) for x in layers]
    e_max = max([1, *info["n_experts"].to_list(), *info_b["n_experts"].to_list()])
    # the in-step scans are only valid when every prompt of both runs pairs with its own prompt_id
    per_prompt = None
    if match.identical:  # the shards read directly (cheapest), then DuckDB's unordered and sorted scans
        per_prompt = shard_overlap(store, run_a, run_b, layer_list, e_max)
        if per_prompt is None:
            per_prompt = _aligned_overlap(store, run_a, run_b, layer_list, ordered=False)
        if per_prompt is None:
            per_prompt = _aligned_overlap(store, run_a, run_b, layer_list, ordered=True)
    if per_prompt is None:  # join the shared prompts' tokens in DuckDB
        per_prompt = queries.matched_overlap(store, run_a, run_b, layer_list)
    if per_prompt.height == 0:
        raise ValueError(
            f"runs {run_a!r} and {run_b!r} share {match.n_shared} prompts but no routed tokens"
            f"{' in the selected layers' if layers is not None else ''} (matched on position and layer); "
            "drift needs two captures of the same prompts at the same layers"
        )
    return _drift_rows(per_prompt, info, n_boot=n_boot, seed=seed).with_columns(
        pl.lit(match.n_shared, pl.Int64).alias("n_shared"),
        pl.lit(match.n_a, pl.Int64).alias("n_prompts_a"),
        pl.lit(match.n_b, pl.Int64).alias("n_prompts_b"),
    )


def drift_coverage(df: pl.DataFrame, run_a: str, run_b: str) -> str:
    """The sentence saying how many prompts a :func:`routing_drift` table was computed on."""
    row = df.row(0, named=True)
    return coverage(run_a, run_b, int(row["n_shared"]), int(row["n_prompts_a"]), int(row["n_prompts_b"]))


def _aligned_frames(
    left: Iterator[pl.DataFrame], right: Iterator[pl.DataFrame]
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Equal-length slices of two frame streams, in step; a shorter stream ends with an empty slice."""
    buf_l: pl.DataFrame | None = None
    buf_r: pl.DataFrame | None = None
    while True:
        if buf_l is None or buf_l.height == 0:
            buf_l = next(left, None)
        if buf_r is None or buf_r.height == 0:
            buf_r = next(right, None)
        if buf_l is None or buf_r is None:
            rest = buf_l if buf_l is not None else buf_r
            if rest is not None and rest.height:  # one stream has rows the other lacks
                yield (rest, rest.clear()) if rest is buf_l else (rest.clear(), rest)
            return
        n = min(buf_l.height, buf_r.height)
        yield buf_l.slice(0, n), buf_r.slice(0, n)
        buf_l, buf_r = buf_l.slice(n), buf_r.slice(n)


def _aligned_overlap(
    store: Store, run_a: str, run_b: str, layers: list[int] | None, *, ordered: bool
) -> pl.DataFrame | None:
    """Per (layer, prompt) ``n`` and Σ overlap from two scans read in step, or None.

    Two captures of the same prompts are normally stored in the same (prompt, position,
    layer) order, so row i of one run is row i of the other: then no join is needed, and the
    overlap ``|S ∩ S'| / max(|S|, |S'|, 1)`` (distinct common ids, list lengths as stored) is
    counted in numpy. Every row's key is checked; on the first mismatch (or a NULL list or a
    negative id, which the SQL path handles) this gives up and returns None. Unordered scans
    (``ordered=False``) follow each run's shard order, which differs between runs whose writes were
    cut into parallel shards; ordered scans sort ranges of prompts (bounded memory) and always
    align two runs holding the same tokens.
    """
    e_max = max([1, *store.layers(run_a)["n_experts"].to_list(), *store.layers(run_b)["n_experts"].to_list()])
    rows_per_batch = min(1 << 18, max(1 << 12, (1 << 23) // e_max))  # two (rows × ids) bool matrices
    kw: dict[str, Any] = {"layers": layers, "logits": False, "batch_rows": rows_per_batch, "ordered": ordered}
    parts: list[pl.DataFrame] = []
    for a, b in _aligned_frames(store.iter_routing(run_a, **kw), store.iter_routing(run_b, **kw)):
        if a.height != b.height:
            return None
        for col in ("prompt_id", "position", "layer"):
            if not np.array_equal(a[col].to_numpy(), b[col].to_numpy()):
                return None
        if a["experts"].null_count() or b["experts"].null_count():
            return None
        len_a = a["experts"].list.len().to_numpy().astype(np.int64)
        len_b = b["experts"].list.len().to_numpy().astype(np.int64)
        ids_a = np.asarray(a["experts"].explode().drop_nulls().to_numpy(), dtype=np.int64)
        ids_b = np.asarray(b["experts"].explode().drop_nulls().to_numpy(), dtype=np.int64)
        if ids_a.size != len_a.sum() or ids_b.size != len_b.sum():
            return None
        if (ids_a.size and ids_a.min() < 0) or (ids_b.size and ids_b.min() < 0):
            return None
        width = int(max(ids_a.max(initial=-1), ids_b.max(initial=-1))) + 1
        if width > 2 * e_max + 64:  # ids far beyond the layers' experts: let DuckDB do it
            return None
        rows = np.arange(a.height)
        in_a = np.zeros((a.height, max(width, 1)), dtype=bool)
        in_b = np.zeros_like(in_a)
        in_a[np.repeat(rows, len_a), ids_a] = True
        in_b[np.repeat(rows, len_b), ids_b] = True
        common = np.count_nonzero(in_a & in_b, axis=1)
        overlap = common / np.maximum(np.maximum(len_a, len_b), 1)
        parts.append(
            pl.DataFrame({"layer": a["layer"], "prompt_id": a["prompt_id"], "overlap": overlap})
            .group_by("layer", "prompt_id")
            .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("overlap").sum())
        )
    if not parts:
        return pl.DataFrame(
            schema={"layer": pl.Int32, "prompt_id": pl.Int32, "n": pl.Int64, "overlap": pl.Float64}
        )
    return (
        pl.concat(parts)
        .group_by("layer", "prompt_id")
        .agg(pl.col("n").sum(), pl.col("overlap").sum())
        .sort("layer", "prompt_id")
        .select("layer", "prompt_id", "n", "overlap")
    )


def _drift_rows(per_prompt: pl.DataFrame, info: pl.DataFrame, *, n_boot: int, seed: int) -> pl.DataFrame:
    """One row per layer: overlap, bootstrap CI, chance, token and prompt counts.

    Layers over the same prompts share their bootstrap draws (one prompt-cluster resample gives every
    such layer's replicate), so the draws cost one layer's, not one per layer (docs/methods.md §7).
    """
    chance = {
        int(layer): (k / e if e else math.nan)
        for layer, e, k in info.select("layer", "n_experts", "top_k").iter_rows()
    }
    parts = {int(layer): part for (layer,), part in per_prompt.group_by(["layer"], maintain_order=True)}
    num = {layer: part["overlap"].to_numpy().astype(np.float64) for layer, part in parts.items()}
    den = {layer: part["n"].to_numpy().astype(np.float64) for layer, part in parts.items()}
    rng = np.random.default_rng(seed)
    interval: dict[int, tuple[float, float]] = {}
    for group in _same_prompts(parts):
        _, low, high = cluster_bootstrap(
            np.column_stack([num[x] for x in group]), np.column_stack([den[x] for x in group]),
            n_boot=n_boot, seed=rng,
        )  # fmt: skip
        interval.update({x: (float(lo), float(hi)) for x, lo, hi in zip(group, low, high, strict=True)})
    rows: list[dict[str, object]] = []
    for layer, part in parts.items():
        est = cluster_bootstrap(num[layer], den[layer], n_boot=0)[0]  # each layer's own sums, as before
        rows.append({
            "layer": layer,
            "overlap": float(est[0]), "ci_low": interval[layer][0], "ci_high": interval[layer][1],
            "chance": chance.get(layer, math.nan),
            "n_tokens": int(den[layer].sum()), "n_prompts": int(part.height),
        })  # fmt: skip
    schema = {
        "layer": pl.Int32, "overlap": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
        "chance": pl.Float64, "n_tokens": pl.Int64, "n_prompts": pl.Int64,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema).sort("layer")


def _same_prompts(parts: dict[int, pl.DataFrame]) -> list[list[int]]:
    """The layers grouped by identical prompt lists (each part sorted by prompt), in order of first layer."""
    groups: list[tuple[np.ndarray, list[int]]] = []
    for layer, part in parts.items():
        prompts = part["prompt_id"].to_numpy()
        for seen, members in groups:
            if np.array_equal(seen, prompts):
                members.append(layer)
                break
        else:
            groups.append((prompts, [layer]))
    return [members for _, members in groups]
