"""Load and router health (METHODS.md §1): expert load, balance, router confidence, super experts.

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
* **Router confidence** per layer, from the stored raw logits ``z`` (length E):
  ``π = softmax(z)`` for ``score_fn = 'softmax'`` (also used when the layer has no
  ``score_fn`` recorded), ``π = sigmoid(z)`` for ``'sigmoid'`` and ``π = z`` for ``'probs'``
  (the logits column already holds probabilities). The per-token entropy ``H(π)`` is computed
  on ``π / Σ π`` — for sigmoid routers the scores do not sum to one, so they are normalised
  first; for softmax/probs this is a no-op up to rounding. ``entropy_norm = H/log E``. The
  margin is ``π(k) − π(k+1)``, the gap between the k-th and (k+1)-th largest scores on the
  model's own (unnormalised) scale; NaN when ``k >= E``. DeepSeek-V3's selection-only
  correction bias is not stored, so for sigmoid routers the top-k here is that of the
  unbiased scores.
* **Fragility**: the share of tokens whose top-k *set* changes when every logit is
  multiplied by ``1 + σ·ε`` with ``ε ~ N(0, 1)`` drawn independently per logit (``σ = 0.01``,
  a 1% perturbation; seeded, drawn batch by batch in store order). All three score maps are
  monotone per coordinate, so the top-k set of π is the top-k set of z (ties broken by
  lower expert id).
* **Super experts** ("Unveiling Super Experts"): per (layer, expert) the maximum of
  ``expert_stats.out_norm`` (the norm of the expert's output on a token) over all tokens.
  An expert is flagged when its maximum exceeds the 99.5th percentile (linear
  interpolation) of the maxima of *all* experts in the selected layers AND exceeds one tenth
  of the largest maximum. Shared pseudo-experts (``expert >= n_experts``) take part in the
  pool and are marked ``shared``. With fewer than ~200 experts in the pool the percentile
  lies between the two largest maxima, so at most the single largest can be flagged.

Counting is done in DuckDB; resampling and the per-token router maths in numpy, streaming
routing rows with :meth:`Store.iter_routing` in batches of ``batch_rows``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import polars as pl

from workbench.analysis.common import BatchLogits, layer_filter, layer_groups, layer_info
from workbench.analysis.scores import router_scores
from workbench.analysis.stats import cluster_bootstrap
from workbench.store import Store

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
CONFIDENCE_COLUMNS: tuple[str, ...] = (
    "layer", "n_tokens", "entropy", "entropy_norm", "margin", "fragility",
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
_CONFIDENCE_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32,
    "n_tokens": pl.Int64,
    "entropy": pl.Float64,
    "entropy_norm": pl.Float64,
    "margin": pl.Float64,
    "fragility": pl.Float64,
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
    ``dead`` is ``f < dead_threshold / E``. Deterministic for a given ``seed``.
    """
    info = layer_info(store, run_id, layers)
    clause, values = layer_filter(info["layer"].to_list())
    selections = store.sql(
        "SELECT prompt_id, layer, CAST(expert AS INTEGER) AS expert, count(*) AS n FROM ("
        f"  SELECT prompt_id, layer, unnest(experts) AS expert FROM routing WHERE run_id = ?{clause}"
        ") GROUP BY prompt_id, layer, expert",
        [run_id, *values],
    )
    tokens = store.sql(
        f"SELECT prompt_id, layer, count(*) AS n_tokens FROM routing WHERE run_id = ?{clause}"
        " GROUP BY prompt_id, layer",
        [run_id, *values],
    )
    frames: list[pl.DataFrame] = []
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
        rng = np.random.default_rng(np.random.SeedSequence([seed, li]))
        f, low, high = cluster_bootstrap(counts, den, n_boot=n_boot, seed=rng)
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
    clause, values = layer_filter(info["layer"].to_list())
    ntok = store.sql(
        f"SELECT layer, count(*) AS n FROM routing WHERE run_id = ?{clause} GROUP BY layer", [run_id, *values]
    )
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


def _topk_sets(z: np.ndarray, k: int) -> np.ndarray:
    """Sorted top-k expert ids per row (ties broken by lower id)."""
    idx = np.argsort(-z, axis=1, kind="stable")[:, :k]
    return np.sort(idx, axis=1)


def _topk_mask(z: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N, E) membership of each row's top-k, ``k < E`` (ties broken by lower id, as :func:`_topk_sets`)."""
    n_cols = z.shape[1]
    ranked = np.sort(z, axis=1)  # a small-row sort is SIMD and cheaper than a partition here
    kth = ranked[:, n_cols - k : n_cols - k + 1]  # the k-th largest value
    mask = z >= kth  # exactly k entries unless the (k+1)-th largest ties with the k-th
    crowded = np.flatnonzero(ranked[:, n_cols - k - 1] == ranked[:, n_cols - k])
    if crowded.size:  # values tied across the boundary: the lowest ids among them get the slots
        zc, kc = z[crowded], kth[crowded]
        above, tied = zc > kc, zc == kc
        room = k - above.sum(axis=1, keepdims=True)
        mask[crowded] = above | (tied & (np.cumsum(tied, axis=1) <= room))
    return mask


def _topk_changed(z: np.ndarray, perturbed: np.ndarray, k: int) -> np.ndarray:
    """Per row, whether the top-k *set* of ``perturbed`` differs from that of ``z``."""
    if k >= z.shape[1]:
        return np.zeros(len(z), dtype=bool)
    if np.isnan(z).any() or np.isnan(perturbed).any():  # NaN orders differently in a partition
        return (_topk_sets(z, k) != _topk_sets(perturbed, k)).any(axis=1)
    return (_topk_mask(z, k) != _topk_mask(perturbed, k)).any(axis=1)


def router_confidence(
    store: Store,
    run_id: str,
    layers: Iterable[int] | None = None,
    *,
    noise: float = 0.01,
    seed: int = 0,
    batch_rows: int = 200_000,
) -> pl.DataFrame:
    """Mean per-token router entropy, margin ``π(k) − π(k+1)`` and routing fragility per layer.

    Needs the raw router logits (a run captured with ``--logits fp16`` or ``--logits fp32``);
    raises ``ValueError`` when the selected layers have none. Rows whose logits are NULL are
    skipped (``n_tokens`` counts the rows used). ``noise`` is the relative perturbation σ of
    the fragility test. Deterministic for a given ``seed`` and ``batch_rows``.
    """
    info = layer_info(store, run_id, layers)
    layer_list = [int(x) for x in info["layer"].to_list()]
    if not layer_list:
        return pl.DataFrame(schema=_CONFIDENCE_SCHEMA)
    clause, values = layer_filter(layer_list)
    have = store.sql(
        f"SELECT count(*) AS n FROM routing WHERE run_id = ?{clause} AND logits IS NOT NULL",
        [run_id, *values],
    )
    if int(have["n"][0]) == 0:
        raise ValueError(
            f"run {run_id!r} has no router logits for the selected layers; router confidence needs them: "
            "capture the run with --logits fp16 or --logits fp32"
        )
    meta = {
        int(r["layer"]): (int(r["n_experts"]), int(r["top_k"]), r["score_fn"])
        for r in info.iter_rows(named=True)
    }
    acc = {layer: np.zeros(4) for layer in layer_list}  # n, Σ entropy, Σ margin, Σ flipped
    rng = np.random.default_rng(seed)
    for batch in store.iter_routing(run_id, layers=layer_list, logits=True, batch_rows=batch_rows):
        batch = batch.filter(pl.col("logits").is_not_null())
        if batch.height == 0:
            continue
        # Each layer's rows in stream order, layers in order of first appearance (as a
        # maintain_order group_by would give them, so the noise draws are unchanged), gathered
        # from one flat float64 copy of the batch's logits instead of list columns.
        logits = BatchLogits(batch["logits"])
        for layer, rows_l in layer_groups(batch["layer"].to_numpy()):
            n_experts, top_k, score_fn = meta[layer]
            if (logits.lengths[rows_l] != n_experts).any():
                raise ValueError(f"layer {layer}: logits rows must have length n_experts={n_experts}")
            z = logits.rows(rows_l, n_experts)
            pi = router_scores(z, score_fn, normalise=False)
            p = pi / pi.sum(axis=1, keepdims=True)
            positive = p > 0  # 0·log 0 = 0 (and NaN scores count 0), as np.where did, fewer temporaries
            log_p = np.empty_like(p)
            np.log(p, out=log_p, where=positive)
            terms = np.zeros_like(p)
            np.multiply(p, log_p, out=terms, where=positive)
            ent = -terms.sum(axis=1)
            if top_k < n_experts and np.isnan(pi).any():  # NaN ranks last in a descending sort
                ranked = -np.sort(-pi, axis=1)
                margin = ranked[:, top_k - 1] - ranked[:, top_k]
            elif top_k < n_experts:  # the k-th and (k+1)-th largest scores, from an ascending sort
                ranked = np.sort(pi, axis=1)
                margin = ranked[:, n_experts - top_k] - ranked[:, n_experts - top_k - 1]
            else:
                margin = np.full(len(z), np.nan)
            perturbed = z * (1.0 + noise * rng.standard_normal(z.shape))
            flipped = _topk_changed(z, perturbed, top_k)
            acc[layer] += [len(z), ent.sum(), margin.sum(), flipped.sum()]
    rows = []
    for layer in layer_list:
        n, s_ent, s_margin, s_flip = acc[layer]
        if n == 0:
            continue
        n_experts = meta[layer][0]
        rows.append({
            "layer": layer,
            "n_tokens": int(n),
            "entropy": s_ent / n,
            "entropy_norm": s_ent / n / math.log(n_experts) if n_experts > 1 else math.nan,
            "margin": s_margin / n,
            "fragility": s_flip / n,
        })  # fmt: skip
    if not rows:
        return pl.DataFrame(schema=_CONFIDENCE_SCHEMA)
    return pl.DataFrame(rows).select(list(CONFIDENCE_COLUMNS)).cast(_CONFIDENCE_SCHEMA).sort("layer")  # type: ignore[arg-type]


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
    any_stats = store.sql("SELECT count(*) AS n FROM expert_stats WHERE run_id = ?", [run_id])
    if int(any_stats["n"][0]) == 0:
        raise ValueError(
            f"run {run_id!r} has no expert_stats; super experts need per-expert output norms: "
            "capture the run with --expert-stats"
        )
    clause, values = layer_filter(layers)
    maxima = store.sql(
        "SELECT layer, CAST(expert AS INTEGER) AS expert, max(abs(out_norm)) AS max_out_norm, count(*) AS n_tokens"
        f" FROM expert_stats WHERE run_id = ?{clause} GROUP BY layer, expert",
        [run_id, *values],
    )
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
