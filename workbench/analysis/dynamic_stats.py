"""Dynamic k's sufficient statistics (docs/methods.md §6): all that mean k_p, its distribution and ρ(k_p, NLL) need.

Per (layer, label group) cell, level p and k = 1..n_bins: the rows ``n``, the rows with an NLL
``n_nll`` and ``rank_sum``, the sum of those rows' centred NLL ranks; per cell ``rank_ss``, the sum
of the squared centred NLL ranks; per label group the prompts with an NLL. Spearman's ρ is the
Pearson correlation of the two rank vectors. k takes few integer values, so its average ranks follow
from its counts, and the NLL ranks enter the correlation only through their sum per k value and
their sum of squares: these numbers give ρ exactly (:func:`spearman_from_counts`).

Centred ranks are multiples of 1/2 and a cell's ``rank_sum`` stays far below 2**52, so it is exact in
float64 in any order of addition; ``rank_ss`` is computed once per cell. That is why the run's
``dynamic`` summary (:func:`to_tables`, :func:`from_summary`) gives the row pass's numbers bit for
bit: the same :class:`KStats` either way, then the same :func:`table_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from workbench.analysis.rank import fisher_interval, fisher_p
from workbench.store import Store, queries

__all__ = ["SUMMARY_LEVELS", "KStats", "from_summary", "spearman_from_counts", "table_rows", "to_tables"]

#: The levels p the run's ``dynamic`` summary holds (dynamic_k's default); other levels read the rows.
SUMMARY_LEVELS: tuple[float, ...] = (0.5, 0.9)


@dataclass
class KStats:
    """Sufficient statistics per (layer index, label group) cell ``li * len(groups) + g``.

    ``counts``, ``counts_ok`` and ``rank_sum`` are ``(levels, cells, width)`` over k = 1..width;
    ``rank_ss`` is per cell, ``n_prompts`` per group; ``n_bins`` gives the k bins reported for each
    layer that has rows (its E, or its logits width if larger).
    """

    layers: list[int]
    groups: list[str | None]
    levels: list[float]
    counts: np.ndarray
    counts_ok: np.ndarray
    rank_sum: np.ndarray
    rank_ss: np.ndarray
    n_prompts: np.ndarray
    n_bins: dict[int, int]


def spearman_from_counts(counts: np.ndarray, sum_xy_by_k: np.ndarray, sum_yy: float) -> float:
    """Spearman's ρ of k and NLL from the group's k counts, ``Σ centred NLL rank`` per k and ``Σ y²``.

    The average ranks of the small integers k follow from their counts; with both rank vectors
    centred on ``(m + 1)/2`` (their exact mean), ρ is their Pearson correlation, as
    ``np.corrcoef`` of the ranks computes it (the half-integer sums are exact). NaN below 3 values
    or when either side is constant (one k value; ``sum_yy == 0``: every NLL equal).
    """
    m = int(counts.sum())
    if m < 3 or int((counts > 0).sum()) < 2 or sum_yy == 0:
        return float("nan")
    below = np.cumsum(counts) - counts
    x = below + (counts + 1) / 2.0 - (m + 1) / 2.0
    sxy = float(x @ sum_xy_by_k) / (m - 1)
    sxx = float(counts @ (x * x)) / (m - 1)
    rho = sxy / np.sqrt(sxx) / np.sqrt(sum_yy / (m - 1))
    return float(np.clip(rho, -1.0, 1.0))


def _present(stats: KStats) -> list[tuple[int, int, int]]:
    """``(layer index, group, cell)`` of every cell with rows, layer by layer."""
    n_groups = len(stats.groups)
    n_rows = stats.counts[0].sum(axis=1) if stats.levels else np.zeros(0)
    return [
        (li, g, li * n_groups + g)
        for li, layer in enumerate(stats.layers)
        if layer in stats.n_bins
        for g in range(n_groups)
        if n_rows[li * n_groups + g] > 0
    ]


def table_rows(stats: KStats) -> list[dict[str, object]]:
    """dynamic_k's output rows, one per (present layer × label group, level)."""
    out: list[dict[str, object]] = []
    for li, g, c in _present(stats):
        layer = stats.layers[li]
        bins = stats.n_bins[layer]  # every k of the layer is <= bins; the same arrays on either path
        for i, p in enumerate(stats.levels):
            k_ok = stats.counts_ok[i][c][:bins]
            rho = spearman_from_counts(k_ok, stats.rank_sum[i][c][:bins], float(stats.rank_ss[c]))
            k_counts = stats.counts[i][c][:bins]
            n_rows, n_ok = int(k_counts.sum()), int(k_ok.sum())
            units = min(int(stats.n_prompts[g]), n_ok)
            ci_low, ci_high = fisher_interval(rho, units)
            out.append({
                "layer": layer, "label": stats.groups[g], "p": p,
                "mean_k": float(k_counts @ np.arange(1, k_counts.size + 1)) / n_rows,
                "k_counts": k_counts.tolist(), "n_tokens": n_rows,
                "spearman_nll": rho, "n_nll": n_ok, "spearman_ci_low": ci_low,
                "spearman_ci_high": ci_high, "spearman_p": fisher_p(rho, units), "n_prompts_nll": units,
            })  # fmt: skip
    return out


_K_SCHEMA = {
    "layer": pl.Int32, "label": pl.Utf8, "p": pl.Float64, "k": pl.Int32, "n": pl.Int64, "n_nll": pl.Int64,
    "rank_sum": pl.Float64,
}  # fmt: skip
_NLL_SCHEMA = {"layer": pl.Int32, "label": pl.Utf8, "rank_ss": pl.Float64, "n_prompts": pl.Int64}


def to_tables(stats: KStats) -> dict[str, pa.Table]:
    """The ``dynamic`` summary part: ``summary_dynamic_k`` (every k bin of every present cell and level)
    and ``summary_dynamic_nll`` (per present cell: Σ y², the label's prompts with an NLL)."""
    k_rows: dict[str, list[object]] = {name: [] for name in _K_SCHEMA}
    nll_rows: dict[str, list[object]] = {name: [] for name in _NLL_SCHEMA}
    for li, g, c in _present(stats):
        layer, label, bins = stats.layers[li], stats.groups[g], stats.n_bins[stats.layers[li]]
        for i, p in enumerate(stats.levels):
            k_rows["layer"] += [layer] * bins
            k_rows["label"] += [label] * bins
            k_rows["p"] += [p] * bins
            k_rows["k"] += list(range(1, bins + 1))
            k_rows["n"] += stats.counts[i][c][:bins].tolist()
            k_rows["n_nll"] += stats.counts_ok[i][c][:bins].tolist()
            k_rows["rank_sum"] += stats.rank_sum[i][c][:bins].tolist()
        for name, value in zip(
            _NLL_SCHEMA, (layer, label, float(stats.rank_ss[c]), int(stats.n_prompts[g])), strict=True
        ):
            nll_rows[name].append(value)
    return {
        "summary_dynamic_k": pl.DataFrame(k_rows, schema=_K_SCHEMA).to_arrow(),
        "summary_dynamic_nll": pl.DataFrame(nll_rows, schema=_NLL_SCHEMA).to_arrow(),
    }


def from_summary(store: Store, run_id: str, levels: Sequence[float], layers: list[int]) -> KStats | None:
    """The :class:`KStats` of ``levels`` at ``layers`` from the run's ``dynamic`` summary.

    None when the summary lacks one of the levels (the caller reads the rows). A run without logits
    has an empty summary: the stats then have no cells, as the row pass's would.
    """
    cells = queries.dynamic_k_cells(store, run_id, layers)
    stored = set(queries.dynamic_k_levels(store, run_id))
    if stored and not set(levels) <= stored:
        return None
    nll = queries.dynamic_k_nll(store, run_id, layers)
    present = sorted({int(x) for x in nll["layer"].to_list()})
    groups: list[str | None] = [None, *sorted({x for x in nll["label"].to_list() if x is not None})]
    code = {label: g for g, label in enumerate(groups)}
    n_cells = len(present) * len(groups)
    n_bins = {int(layer): int(k) for layer, k in cells.group_by("layer").agg(pl.col("k").max()).iter_rows()}
    width = max(n_bins.values(), default=1)
    shape = (len(levels), n_cells, width)
    counts, counts_ok, rank_sum = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape)
    rank_ss, n_prompts = np.zeros(n_cells), np.zeros(len(groups), np.int64)
    li_of = {layer: li for li, layer in enumerate(present)}
    for layer, label, ss, n_p in nll.iter_rows():
        rank_ss[li_of[int(layer)] * len(groups) + code[label]] = ss
        n_prompts[code[label]] = n_p
    cell = np.array(
        [li_of[int(x)] * len(groups) + code[y] for x, y in zip(cells["layer"], cells["label"], strict=True)],
        dtype=np.int64,
    )
    k_index = cells["k"].to_numpy().astype(np.int64) - 1
    p_stored = cells["p"].to_numpy()
    for i, p in enumerate(levels):
        rows = np.flatnonzero(p_stored == p)
        counts[i, cell[rows], k_index[rows]] = cells["n"].to_numpy()[rows]
        counts_ok[i, cell[rows], k_index[rows]] = cells["n_nll"].to_numpy()[rows]
        rank_sum[i, cell[rows], k_index[rows]] = cells["rank_sum"].to_numpy()[rows]
    return KStats(present, groups, list(levels), counts, counts_ok, rank_sum, rank_ss, n_prompts, n_bins)
