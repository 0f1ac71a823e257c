"""Load and router health (docs/methods.md §1): expert load, balance, super experts.

Router confidence and fragility live in :mod:`workbench.analysis.confidence` (re-exported here).

Definitions (layer l, routed experts ``0..E-1``, top-k routing, N tokens at layer l):

* **Selection frequency** ``f[l, e] = n(e ∈ S) / (N·k)`` — the share of all top-k slots at the
  layer taken by expert e; over e it sums to 1, uniform routing gives ``1/E``.
  **Utilisation** ``E·f`` (1 = uniform). The 95% CI is a percentile bootstrap of the ratio
  of sums ``Σ_p n_p(e) / Σ_p N_p·k`` resampling prompts (the clusters, see
  :mod:`workbench.analysis.stats`). An expert is **dead** when ``f < dead_threshold / E``
  (default ``dead_threshold = 0.01``, i.e. ``f < 1/(100E)``).
* **Balance** per layer: coefficient of variation ``std(f)/mean(f)`` (population std over
  the E experts), normalised load entropy ``H(f)/log E`` (``0·log 0 = 0``; 1 = uniform),
  balancedness ``mean(f)/max(f)`` (1 = uniform), the number of dead experts, and routing
  collapse: the share of all selections taken by the ``ceil(0.1·E)`` most-selected experts
  (the top 10%; at least one expert).
* **Super experts** ("Unveiling Super Experts"): per (layer, expert) the maximum of
  ``expert_stats.out_norm`` (the norm of the expert's output on a token) over all tokens.
  An expert is flagged when its maximum exceeds the 99.5th percentile (linear
  interpolation) of the maxima of *all* experts in the selected layers AND exceeds one tenth
  of the largest maximum. Shared pseudo-experts (``expert >= n_experts``) take part in the
  pool and are marked ``shared``. With fewer than ~200 experts in the pool the percentile
  lies between the two largest maxima, so at most the single largest can be flagged.

Counting is done in DuckDB, resampling in numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import polars as pl

from workbench.analysis.common import layer_info
from workbench.analysis.confidence import CONFIDENCE_COLUMNS, router_confidence
from workbench.analysis.stats import cluster_bootstrap
from workbench.store import Store, queries

__all__ = [
    "BALANCE_COLUMNS",
    "CONFIDENCE_COLUMNS",
    "LOAD_COLUMNS",
    "SUPER_COLUMNS",
    "expert_load",
    "load_balance",
    "router_confidence",
    "super_experts",
]

LOAD_COLUMNS: tuple[str, ...] = (
    "layer", "expert", "n_selected", "f", "utilisation", "ci_low", "ci_high", "dead",
)  # fmt: skip
BALANCE_COLUMNS: tuple[str, ...] = (
    "layer", "n_experts", "top_k", "n_tokens", "cv", "entropy_norm", "balancedness", "n_dead", "top10_share",
)  # fmt: skip
SUPER_COLUMNS: tuple[str, ...] = ("layer", "expert", "shared", "max_out_norm", "n_tokens", "super")

_LOAD_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32,
    "expert": pl.Int32,
    "n_selected": pl.Int64,
    "f": pl.Float64,
    "utilisation": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "dead": pl.Boolean,
}
_BALANCE_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32,
    "n_experts": pl.Int32,
    "top_k": pl.Int32,
    "n_tokens": pl.Int64,
    "cv": pl.Float64,
    "entropy_norm": pl.Float64,
    "balancedness": pl.Float64,
    "n_dead": pl.Int64,
    "top10_share": pl.Float64,
}
_SUPER_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32,
    "expert": pl.Int32,
    "shared": pl.Boolean,
    "max_out_norm": pl.Float64,
    "n_tokens": pl.Int64,
    "super": pl.Boolean,
}


def expert_load(
    store: Store,
    run_id: str,
    layers: Iterable[int] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    dead_threshold: float = 0.01,
) -> pl.DataFrame:
    """Selection frequency ``f``, utilisation ``E·f``, prompt-bootstrap CI of f and dead flag per (layer, expert).

    One row per routed expert ``0..E-1`` of each selected layer that has tokens (unused
    experts get ``f = 0``), sorted by layer, expert. All prompts count, labelled or not.
    ``dead`` is ``f < dead_threshold / E``. Deterministic for a given ``seed``. Layers with the same
    prompts and tokens per prompt (every layer of a capture) share their bootstrap draws.
    """
    info = layer_info(store, run_id, layers)
    selections = queries.selections_per_prompt(store, run_id, info["layer"].to_list())
    tokens = queries.tokens_per_prompt(store, run_id, info["layer"].to_list())
    # Per layer: sorted prompt ids, slots per prompt (N_p·k) and (prompts × experts) selection counts.
    per_layer: list[tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]] = []
    for li, (layer, n_experts, top_k) in enumerate(info.select("layer", "n_experts", "top_k").iter_rows()):
        tok = tokens.filter(pl.col("layer") == layer)
        if tok.height == 0 or n_experts <= 0:
            continue
        pids = tok["prompt_id"].to_numpy().astype(np.int64)
        order = np.argsort(pids)
        pids = pids[order]
        den = tok["n_tokens"].to_numpy().astype(np.float64)[order] * top_k
        sel = selections.filter(
            (pl.col("layer") == layer) & (pl.col("expert") >= 0) & (pl.col("expert") < n_experts)
        )
        counts = np.zeros((pids.size, n_experts))
        rows = np.searchsorted(pids, sel["prompt_id"].to_numpy().astype(np.int64))
        counts[rows, sel["expert"].to_numpy().astype(np.int64)] = sel["n"].to_numpy()
        per_layer.append((li, int(layer), int(n_experts), pids, den, counts))
    # Layers with the same prompts and slots per prompt (every layer of a capture) share one set of
    # bootstrap draws, seeded by (seed, index of the group's first layer): one product for all.
    groups: list[list[tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]]] = []
    for item in per_layer:
        for group in groups:
            if np.array_equal(group[0][3], item[3]) and np.array_equal(group[0][4], item[4]):
                group.append(item)
                break
        else:
            groups.append([item])
    frames: list[pl.DataFrame] = []
    for group in groups:
        first, den = group[0][0], group[0][4]
        stacked = np.hstack([item[5] for item in group])
        rng = np.random.default_rng(np.random.SeedSequence([seed, first]))
        f_all, low_all, high_all = cluster_bootstrap(stacked, den, n_boot=n_boot, seed=rng)
        start = 0
        for _, layer, n_experts, _, _, counts in group:
            f, low, high = (x[start : start + n_experts] for x in (f_all, low_all, high_all))
            start += n_experts
            frames.append(
                pl.DataFrame(
                    {
                        "layer": np.full(n_experts, layer, np.int32),
                        "expert": np.arange(n_experts, dtype=np.int32),
                        "n_selected": counts.sum(axis=0).astype(np.int64),
                        "f": f,
                        "utilisation": f * n_experts,
                        "ci_low": low,
                        "ci_high": high,
                        "dead": f < dead_threshold / n_experts,
                    }
                )
            )
    if not frames:
        return pl.DataFrame(schema=_LOAD_SCHEMA)
    return pl.concat(frames).select(list(LOAD_COLUMNS)).cast(_LOAD_SCHEMA).sort("layer", "expert")  # type: ignore[arg-type]


def load_balance(
    store: Store,
    run_id: str,
    layers: Iterable[int] | None = None,
    *,
    dead_threshold: float = 0.01,
) -> pl.DataFrame:
    """Per-layer balance of the selection frequencies: CV, ``H(f)/log E``, ``mean/max``, dead count, top-10% share.

    Built on :func:`expert_load` (no bootstrap). ``n_tokens`` is N at the layer. Layers
    without tokens are left out.
    """
    load = expert_load(store, run_id, layers, n_boot=0, dead_threshold=dead_threshold)
    info = layer_info(store, run_id, layers)
    ntok = queries.tokens_per_layer(store, run_id, info["layer"].to_list())
    n_by_layer = dict(zip(ntok["layer"].to_list(), ntok["n"].to_list(), strict=True))
    rows: list[dict[str, object]] = []
    for layer, n_experts, top_k in info.select("layer", "n_experts", "top_k").iter_rows():
        part = load.filter(pl.col("layer") == layer).sort("expert")
        if part.height == 0:
            continue
        f = part["f"].to_numpy()
        mean = float(f.mean())
        positive = f[f > 0]
        entropy = float(-(positive * np.log(positive)).sum())
        n_top = max(1, math.ceil(0.1 * n_experts))
        total = float(f.sum())
        rows.append({
            "layer": layer,
            "n_experts": n_experts,
            "top_k": top_k,
            "n_tokens": int(n_by_layer.get(layer, 0)),
            "cv": float(f.std()) / mean if mean > 0 else math.nan,
            "entropy_norm": entropy / math.log(n_experts) if n_experts > 1 else math.nan,
            "balancedness": mean / float(f.max()) if f.max() > 0 else math.nan,
            "n_dead": int(part["dead"].sum()),
            "top10_share": float(np.sort(f)[::-1][:n_top].sum()) / total if total > 0 else math.nan,
        })  # fmt: skip
    if not rows:
        return pl.DataFrame(schema=_BALANCE_SCHEMA)
    return pl.DataFrame(rows).select(list(BALANCE_COLUMNS)).cast(_BALANCE_SCHEMA).sort("layer")  # type: ignore[arg-type]


def super_experts(
    store: Store,
    run_id: str,
    layers: Iterable[int] | None = None,
    *,
    percentile: float = 99.5,
    max_fraction: float = 0.1,
) -> pl.DataFrame:
    """Max output norm per (layer, expert) and the super-expert flag (see the module docstring).

    Needs ``expert_stats`` (a run captured with ``--expert-stats``); raises ``ValueError``
    when the run has none. Sorted by layer, expert.
    """
    info = store.layers(run_id)  # raises UnknownRunError for an unknown run
    if queries.n_expert_stats_rows(store, run_id) == 0:
        raise ValueError(
            f"run {run_id!r} has no expert_stats; super experts need per-expert output norms: "
            "capture the run with --expert-stats"
        )
    maxima = queries.expert_norm_maxima(store, run_id, layers)
    if maxima.height == 0:
        return pl.DataFrame(schema=_SUPER_SCHEMA)
    values_np = maxima["max_out_norm"].to_numpy().astype(np.float64)
    cut = float(np.quantile(values_np, percentile / 100.0))
    top = float(values_np.max())
    flag = (values_np > cut) & (values_np > max_fraction * top)
    out = maxima.with_columns(pl.Series("super", flag)).join(
        info.select("layer", "n_experts"), on="layer", how="left"
    )
    out = out.with_columns((pl.col("expert") >= pl.col("n_experts").fill_null(2**31 - 1)).alias("shared"))
    return out.select(list(SUPER_COLUMNS)).cast(_SUPER_SCHEMA).sort("layer", "expert")  # type: ignore[arg-type]
