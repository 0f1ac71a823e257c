"""Router confidence per layer (docs/methods.md §1): entropy, top-k margin and fragility of the routing.

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
  a 1% perturbation; each draw a function of (seed, prompt, position, layer, slot) only, so
  the result does not depend on batch size, stream order or threads). All three score maps are monotone per
  coordinate, so the top-k set of π is the top-k set of z (ties broken by lower expert id).
  Noise is drawn only for the experts that could change places at all when every
  ``|ε| <= 9`` (see ``_fragile_sorted``); that changes a token's outcome with probability
  below 1e-17 and skips most of the draws.

The routing rows' logits are streamed unsorted in batches of ``batch_rows``
(:func:`workbench.analysis.common.stream_logits`); each batch's tokens are sorted once and
processed in the transposed ``(E, n)`` layout a cache-sized chunk at a time, on two threads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import polars as pl
import pyarrow as pa
from scipy.special import ndtri

from workbench.analysis.common import (
    BatchLogits,
    check_widths,
    layer_index,
    layer_info,
    logits_matrix,
    map_ordered,
    row_chunks,
    signature_rows,
    stream_logits,
    transposed_f64,
)
from workbench.analysis.scores import router_scores, router_scores_t
from workbench.store import Store, queries, summaries

__all__ = ["CONFIDENCE_COLUMNS", "router_confidence"]

CONFIDENCE_COLUMNS: tuple[str, ...] = (
    "layer", "n_tokens", "entropy", "entropy_norm", "margin", "fragility",
)  # fmt: skip

#: The perturbation and seed whose fragility the run's summaries hold (router_confidence's defaults).
SUMMARY_NOISE = 0.01
SUMMARY_SEED = 0

_CONFIDENCE_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32,
    "n_tokens": pl.Int64,
    "entropy": pl.Float64,
    "entropy_norm": pl.Float64,
    "margin": pl.Float64,
    "fragility": pl.Float64,
}


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
    changed: np.ndarray
    if np.isnan(z).any() or np.isnan(perturbed).any():  # NaN orders differently in a partition
        changed = (_topk_sets(z, k) != _topk_sets(perturbed, k)).any(axis=1)
    else:
        changed = (_topk_mask(z, k) != _topk_mask(perturbed, k)).any(axis=1)
    return changed


#: Fragility draws noise only where a flip is possible at all if every ``|ε| <= _EPS_BOUND``.
#: :func:`_keyed_normals` maps 53-bit uniforms through the inverse normal CDF, so its |ε| never
#: exceeds ~8.3 and skipping the other draws changes nothing (for exact normals the
#: difference would have probability below 1e-17 per token); it skips most of the draws.
_EPS_BOUND = 9.0


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic): a bijective bit mixer."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return x


def _row_ids(prompt_id: np.ndarray, position: np.ndarray, layer: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per routing row, a function of (seed, prompt_id, position, layer) only."""
    base = (prompt_id.astype(np.int64).astype(np.uint64) << np.uint64(32)) ^ position.astype(np.int64).astype(
        np.uint64
    )
    salt = _mix(np.array([seed & (2**64 - 1)], dtype=np.uint64))[0]
    return _mix(_mix(base ^ salt) ^ layer.astype(np.int64).astype(np.uint64))


def _keyed_normals(row_ids: np.ndarray, slot: int | np.ndarray) -> np.ndarray:
    """Standard normals, one per (row id, slot): counter-based, so independent of batching and order.

    The row id and slot are mixed into 53 uniform bits, mapped through the inverse normal CDF.
    """
    slots = np.atleast_1d(np.asarray(slot, dtype=np.int64)).astype(np.uint64) + np.uint64(
        1
    )  # arrays wrap silently
    x = _mix(row_ids + slots * _GOLDEN)
    return np.asarray(ndtri(((x >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53))


def _entropy_margin_rows(z: np.ndarray, k: int, score_fn: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row entropy of ``π/Σπ`` and margin ``π(k) − π(k+1)`` of ``(n, E)`` float64 logits.

    The straightforward row-wise computation: the reference for the fast kernel and the path
    for rows holding NaN or infinite logits (0·log 0 = 0 and NaN scores count 0; NaN ranks
    last in the margin's descending sort).
    """
    n_experts = z.shape[1]
    pi = router_scores(z, score_fn, normalise=False)
    p = pi / pi.sum(axis=1, keepdims=True)
    positive = p > 0
    log_p = np.empty_like(p)
    np.log(p, out=log_p, where=positive)
    terms = np.zeros_like(p)
    np.multiply(p, log_p, out=terms, where=positive)
    ent = -terms.sum(axis=1)
    if k >= n_experts:
        return ent, np.full(len(z), np.nan)
    ranked = -np.sort(-pi, axis=1)
    return ent, ranked[:, k - 1] - ranked[:, k]


def _entropy_margin_sorted(zt: np.ndarray, k: int, score_fn: str | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_entropy_margin_rows` from finite logits sorted ascending per token, transposed to ``(E, n)``.

    Every score map is monotone, so the sorted scores are the score map of the sorted
    logits: the margin needs no sort of π. For softmax, with ``d = z − max z`` and
    ``S = Σ e^d``, ``H = log S − Σ e^d·d / S`` needs no logarithm per expert.
    """
    n_experts = zt.shape[0]
    fn = "softmax" if score_fn is None else score_fn
    if fn == "softmax":
        d = zt - zt[-1]
        e = np.exp(d)
        total = e.sum(axis=0)
        d *= e
        ent = np.log(total) - d.sum(axis=0) / total
        if k >= n_experts:
            return ent, np.full(zt.shape[1], np.nan)
        return ent, e[n_experts - k] / total - e[n_experts - k - 1] / total
    else:
        scores = router_scores_t(zt, fn, normalise=False)
        p = scores / scores.sum(axis=0)
        positive = p > 0
        terms = np.zeros_like(p)
        np.multiply(p, np.log(p, out=np.zeros_like(p), where=positive), out=terms, where=positive)
        ent = -terms.sum(axis=0)
    if k >= n_experts:
        return ent, np.full(zt.shape[1], np.nan)
    return ent, scores[n_experts - k] - scores[n_experts - k - 1]


def _perturbed_extreme(
    zc: np.ndarray, cols: range, limit: np.ndarray, c: float, noise: float, ids: np.ndarray
) -> np.ndarray:
    """Min (insiders) or max (outsiders) perturbed value over the band of the sorted ``(E, n)`` logits ``zc``.

    ``cols`` runs away from the top-k boundary: ascending over the insiders, whose band is
    ``z − c|z| <= limit``, or descending over the outsiders, whose band is ``z + c|z| >= limit``.
    Both sides are monotone in z (``c < 1``), so the band ends at the first column with no
    member. The first column (the k-th or (k+1)-th largest logit) is in the band of every
    candidate token, so it is perturbed whole; then only the band members. The normal of the
    j-th smallest logit of a token is :func:`_keyed_normals` of its row id (``ids``) and slot j.
    """
    inside = cols.step > 0
    first = zc[cols[0]]
    out: np.ndarray = first * (1.0 + noise * _keyed_normals(ids, cols[0]))
    for j in cols[1:]:
        col = zc[j]
        member = np.flatnonzero(col - c * np.abs(col) <= limit if inside else col + c * np.abs(col) >= limit)
        if member.size == 0:
            break
        vals = col[member] * (1.0 + noise * _keyed_normals(ids[member], j))
        out[member] = np.minimum(out[member], vals) if inside else np.maximum(out[member], vals)
    return out


def _fragile_sorted(zt: np.ndarray, k: int, noise: float, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flipped, undecided) per token from finite logits sorted ascending per token, ``(E, n)``.

    The top-k set changes under ``z·(1 + σε)`` iff some insider ``i``'s perturbed value falls
    below some outsider ``j``'s, which needs ``z_i − z_j <= σ(z_j ε_j − z_i ε_i) <= c(|z_i| + |z_j|)``
    with ``c = 9|σ|`` unless ``|ε| > 9`` for one of them (never for :func:`_keyed_normals`, see
    ``_EPS_BOUND``). ``z_i − z_j − c(|z_i| + |z_j|)`` grows with ``z_i`` and falls with ``z_j``,
    so with ``a``/``b`` the k-th/(k+1)-th largest logit only tokens with
    ``a − b <= c(|a| + |b|)`` can flip, and only insiders with ``z − c|z| <= b + c|b|`` and
    outsiders with ``z + c|z| >= a − c|a|`` (the band) need noise. ``undecided`` marks tokens
    this cannot settle — the k-th and (k+1)-th logits tie (lower ids win, so the expert ids
    matter), the extreme perturbed values tie, or ``c >= 1`` — for :func:`_topk_changed` on
    the unsorted logits.
    """
    n_experts, n = zt.shape
    flipped = np.zeros(n, dtype=bool)
    c = _EPS_BOUND * abs(noise)
    if noise == 0:
        return flipped, flipped.copy()
    if c >= 1.0:
        return flipped, ~flipped
    a, b = zt[n_experts - k], zt[n_experts - k - 1]
    undecided = a == b
    cand = np.flatnonzero((a - b <= c * (np.abs(a) + np.abs(b))) & ~undecided)
    if cand.size == 0:
        return flipped, undecided
    zc, ac, bc, idc = zt[:, cand], a[cand], b[cand], ids[cand]
    low_in = _perturbed_extreme(zc, range(n_experts - k, n_experts), bc + c * np.abs(bc), c, noise, idc)
    high_out = _perturbed_extreme(zc, range(n_experts - k - 1, -1, -1), ac - c * np.abs(ac), c, noise, idc)
    flipped[cand] = low_in < high_out
    undecided[cand[low_in == high_out]] = True
    return flipped, undecided


def _confidence_rows(
    z: np.ndarray, k: int, score_fn: str | None, noise: float, ids: np.ndarray
) -> np.ndarray:
    """``(n, 3)`` per-token entropy, margin and flipped (0/1) for ``(n, E)`` logits of one signature.

    Finite rows go through the sorted, transposed kernels a cache-sized chunk at a time;
    rows with NaN or infinite logits (and undecided fragility rows) take the row-wise path,
    perturbing every logit (expert e's normal: slot ``E + e`` of the row id in ``ids``).
    """
    n, n_experts = z.shape
    finite = np.isfinite(z).all(axis=1) if not np.isfinite(z).all() else None
    good = np.arange(n) if finite is None else np.flatnonzero(finite)
    zg = z if finite is None else z[good]
    # Per finite row (in zg's order): entropy, margin, flipped.
    fast = np.zeros((3, len(zg)))
    exact: list[np.ndarray] = []
    for chunk in row_chunks(len(zg)):
        zt = transposed_f64(np.sort(zg[chunk], axis=1))  # sorting is exact in the stored dtype
        fast[0, chunk], fast[1, chunk] = _entropy_margin_sorted(zt, k, score_fn)
        if k < n_experts:
            flipped, undecided = _fragile_sorted(
                zt, k, noise, ids[good[chunk]] if finite is not None else ids[chunk]
            )
            fast[2, chunk] = flipped
            exact.append(good[chunk][undecided])
    if finite is None:
        out = fast.T.copy()
    else:
        out = np.zeros((n, 3))
        out[good] = fast.T
        bad = np.flatnonzero(~finite)
        out[bad, 0], out[bad, 1] = _entropy_margin_rows(np.asarray(z[bad], dtype=np.float64), k, score_fn)
        exact.append(bad)
    redo = np.concatenate(exact) if exact else np.zeros(0, dtype=np.int64)
    if redo.size and k < n_experts:
        zr = np.asarray(z[redo], dtype=np.float64)
        eps = _keyed_normals(ids[redo][:, None], n_experts + np.arange(n_experts)[None, :])
        out[redo, 2] = _topk_changed(zr, zr * (1.0 + noise * eps), k)
    return out


def router_confidence(
    store: Store,
    run_id: str,
    layers: Iterable[int] | None = None,
    *,
    noise: float = SUMMARY_NOISE,
    seed: int = SUMMARY_SEED,
    batch_rows: int = 200_000,
) -> pl.DataFrame:
    """Mean per-token router entropy, margin ``π(k) − π(k+1)`` and routing fragility per layer.

    Needs the raw router logits (a run captured with ``--logits fp16`` or ``--logits fp32``);
    raises ``ValueError`` when the selected layers have none. Rows whose logits are NULL are
    skipped (``n_tokens`` counts the rows used). ``noise`` is the relative perturbation σ of
    the fragility test. Each token's normals are a counter-based function of ``(seed,
    prompt_id, position, layer)`` (:func:`_keyed_normals`), drawn only for the experts that
    could change places (see :func:`_fragile_sorted`): the result is deterministic for a given
    ``seed`` whatever the batch size, the (unsorted, parallel) order rows are streamed in, or
    the layers selected. With the default ``noise`` and ``seed`` and valid per-prompt summaries
    (:mod:`workbench.store.summaries`) the sums come from ``summary_confidence`` instead of the logits.
    """
    info = layer_info(store, run_id, layers)
    layer_list = [int(x) for x in info["layer"].to_list()]
    if not layer_list:
        return pl.DataFrame(schema=_CONFIDENCE_SCHEMA)
    if queries.n_logit_rows(store, run_id, layer_list) == 0:
        raise ValueError(
            f"run {run_id!r} has no router logits for the selected layers; router confidence needs them: "
            "capture the run with --logits fp16 or --logits fp32"
        )
    meta = {
        int(r["layer"]): (int(r["n_experts"]), int(r["top_k"]), r["score_fn"])
        for r in info.iter_rows(named=True)
    }
    if noise == SUMMARY_NOISE and seed == SUMMARY_SEED and summaries.usable(store, run_id, summaries.LOGITS):
        sums = queries.confidence_sums(store, run_id, layer_list)
        totals_by_layer = {
            int(r[0]): np.array(r[1:], dtype=np.float64)
            for r in sums.select("layer", "n", "entropy_sum", "margin_sum", "n_fragile").iter_rows()
        }
        totals = np.array([totals_by_layer.get(x, np.zeros(4)) for x in layer_list]).reshape(-1, 4)
        return _confidence_frame(layer_list, meta, totals)
    signatures = [meta[x] for x in layer_list]
    widths = np.array([meta[x][0] for x in layer_list], dtype=np.int64)
    n_layers = len(layer_list)

    def one_batch(item: tuple[pl.DataFrame, pa.Array]) -> np.ndarray:
        """``(L, 4)``: per selected layer n, Σ entropy, Σ margin, Σ flipped over the batch."""
        batch, column = item
        acc = np.zeros((n_layers, 4))
        if batch.height == 0:
            return acc
        li = layer_index(batch["layer"].to_numpy(), layer_list)
        logits = BatchLogits(column)
        check_widths(logits.lengths, li, widths, layer_list)
        ids = _row_ids(
            batch["prompt_id"].to_numpy(), batch["position"].to_numpy(), batch["layer"].to_numpy(), seed
        )
        for (n_experts, top_k, score_fn), rows in signature_rows(li, signatures):
            z = logits_matrix(logits, rows, n_experts)
            per_row = _confidence_rows(z, top_k, score_fn, noise, ids if rows is None else ids[rows])
            li_s = li if rows is None else li[rows]
            acc[:, 0] += np.bincount(li_s, minlength=n_layers)
            for col in range(3):
                acc[:, col + 1] += np.bincount(li_s, weights=per_row[:, col], minlength=n_layers)
        return acc

    batches = stream_logits(store, run_id, layer_list, batch_rows=batch_rows)
    totals = np.zeros((n_layers, 4))
    for part in map_ordered(one_batch, batches):
        totals += part
    return _confidence_frame(layer_list, meta, totals)


def _confidence_frame(
    layer_list: list[int], meta: dict[int, tuple[int, int, str | None]], totals: np.ndarray
) -> pl.DataFrame:
    """The result table from per-layer ``(n, Σ entropy, Σ margin, Σ flipped)`` (rows of ``totals``)."""
    rows = []
    for i, layer in enumerate(layer_list):
        n, s_ent, s_margin, s_flip = totals[i]
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
