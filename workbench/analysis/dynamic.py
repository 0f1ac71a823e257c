"""Dynamic routing (METHODS.md §6, "Harder Tasks Need More Experts"): how many experts a token needs.

For token ``i`` at layer ``l`` with stored router logits ``z`` (length E) the score
distribution ``π`` is the router's own:

* ``softmax`` (also when the layer's ``score_fn`` is NULL): ``π = softmax(z)``;
* ``sigmoid``: ``π = σ(z) / Σ σ(z)`` (the correction bias, which only affects selection, is
  not applied); ``sqrtsoftplus``: likewise ``sqrt(softplus(z))`` normalised to sum 1;
* ``probs``: ``π = z`` as stored (the model already exposes probabilities).

``k_p[i, l]`` = the number of experts whose scores, sorted in descending order, first sum to
``≥ p`` (a tolerance of 1e-9 absorbs rounding): 1 when the top expert alone holds mass p.

Per (layer, label, p) :func:`dynamic_k` reports the mean ``k_p``, its distribution
(``k_counts[j]`` = tokens with ``k_p = j + 1``, length E), and Spearman's ρ between ``k_p`` and
the token's NLL over tokens with a non-null NLL (``n_nll``; NaN when fewer than 3 or either
side is constant). Tokens of one prompt are not independent, so no token-level p-value is
given. Prompts with a NULL label form their own group (label NULL). Rows whose logits are
NULL are skipped; a run (or layer selection) with no logits at all raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl
from scipy.stats import rankdata, spearmanr

from workbench.analysis.common import BatchLogits, layer_groups
from workbench.analysis.scores import router_scores
from workbench.store import Store

__all__ = ["DYNAMIC_K_COLUMNS", "dynamic_k", "k_at_p"]

DYNAMIC_K_COLUMNS: tuple[str, ...] = (
    "layer",
    "label",
    "p",
    "mean_k",
    "k_counts",
    "n_tokens",
    "spearman_nll",
    "n_nll",
)

_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "layer": pl.Int32,
    "label": pl.Utf8,
    "p": pl.Float64,
    "mean_k": pl.Float64,
    "k_counts": pl.List(pl.Int64),
    "n_tokens": pl.Int64,
    "spearman_nll": pl.Float64,
    "n_nll": pl.Int64,
}

_TOL = 1e-9


def k_at_p(scores: np.ndarray, p: float) -> np.ndarray:
    """Per row, the fewest top scores whose sum reaches ``p`` (int64, in 1..E)."""
    cum = np.cumsum(-np.sort(-np.asarray(scores, dtype=np.float64), axis=1), axis=1)
    reached = cum >= p - _TOL
    reached[:, -1] = True  # all E experts always count as enough (guards rounding / p = 1)
    return np.argmax(reached, axis=1).astype(np.int64) + 1


def _token_key(prompt_id: np.ndarray, position: np.ndarray) -> np.ndarray:
    """One sortable int64 per (prompt_id, position)."""
    return (prompt_id.astype(np.int64) << 32) + position.astype(np.int64)


def _spearman_cached(k: np.ndarray, nll: np.ndarray, nll_ranks: dict[int, np.ndarray], key: int) -> float:
    """:func:`_spearman` bit for bit, with the NLL ranks computed once per ``key``.

    ``spearmanr(k, nll)`` is ``np.corrcoef`` of the column-wise average ranks of the
    ``(n, 2)`` array ``[k, nll]``; the ranks of the small integers k come from their counts
    (the same half-integer averages ``rankdata`` gives).
    """
    if k.size < 3 or np.all(k == k[0]) or np.all(nll == nll[0]):
        return float("nan")
    if key not in nll_ranks:
        nll_ranks[key] = rankdata(nll)
    counts = np.bincount(k)
    below = np.cumsum(counts) - counts
    rank_k = 0.5 * (2 * below + counts + 1).astype(np.float64)
    ranked = np.column_stack([rank_k[k], nll_ranks[key]])
    return float(np.corrcoef(ranked, rowvar=False)[1, 0])


def _spearman(k: np.ndarray, nll: np.ndarray) -> float:
    if k.size < 3 or np.all(k == k[0]) or np.all(nll == nll[0]):
        return float("nan")
    return float(spearmanr(k, nll).statistic)


def dynamic_k(
    store: Store,
    run_id: str,
    p_levels: Sequence[float] = (0.5, 0.9),
    *,
    layers: Iterable[int] | None = None,
) -> pl.DataFrame:
    """Mean ``k_p``, its distribution and Spearman ρ(k_p, NLL) per (layer, label, p).

    Sorted by layer, label (NULL first), p. Needs router logits in the store.
    """
    levels = [float(x) for x in p_levels]
    if not levels or any(not 0.0 < x <= 1.0 for x in levels):
        raise ValueError(f"p_levels must be non-empty values in (0, 1], got {list(p_levels)}")
    layer_info = store.layers(run_id)  # raises UnknownRunError for an unknown run
    if layers is not None:
        layer_info = layer_info.filter(pl.col("layer").is_in(sorted({int(x) for x in layers})))
    meta = {int(r["layer"]): (int(r["n_experts"]), r["score_fn"]) for r in layer_info.iter_rows(named=True)}
    # Labels and NLLs are looked up per routing row in numpy (prompt- and token-sized tables),
    # so the routing table is read once, unsorted and a batch at a time, for all layers.
    prompts = store.sql("SELECT prompt_id, label FROM prompts WHERE run_id = ? ORDER BY prompt_id", [run_id])
    groups: list[str | None] = [None, *sorted({x for x in prompts["label"].to_list() if x is not None})]
    p_ids = prompts["prompt_id"].to_numpy().astype(np.int64)
    p_code = np.array([groups.index(x) for x in prompts["label"].to_list()], dtype=np.int64)
    toks = store.sql("SELECT prompt_id, position, nll FROM tokens WHERE run_id = ?", [run_id])
    t_key = _token_key(toks["prompt_id"].to_numpy(), toks["position"].to_numpy())
    t_order = np.argsort(t_key, kind="stable")
    t_key = t_key[t_order]
    t_nll = toks["nll"].cast(pl.Float64).fill_null(np.nan).to_numpy()[t_order]
    del toks
    # Per layer: the score width and, per batch, (group code, nll, k for every p) of each row.
    width: dict[int, int] = {}
    parts: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    batches = (
        store.iter_routing(run_id, layers=list(meta), logits=True, batch_rows=262_144, ordered=False)
        if meta
        else iter(())
    )
    for batch in batches:
        batch = batch.filter(pl.col("logits").is_not_null())
        pid = batch["prompt_id"].to_numpy().astype(np.int64)
        at = np.minimum(np.searchsorted(p_ids, pid), max(p_ids.size - 1, 0))
        known = (p_ids[at] == pid) if p_ids.size else np.zeros(pid.size, dtype=bool)  # the prompts join
        if not known.all():
            batch, pid, at = batch.filter(pl.Series(known)), pid[known], at[known]
        if batch.height == 0:
            continue
        code = p_code[at]
        key = _token_key(pid, batch["position"].to_numpy())
        t_at = np.minimum(np.searchsorted(t_key, key), max(t_key.size - 1, 0))
        nll = np.where(t_key[t_at] == key, t_nll[t_at], np.nan) if t_key.size else np.full(pid.size, np.nan)
        logits = BatchLogits(batch["logits"])
        for layer, rows_l in layer_groups(batch["layer"].to_numpy()):
            lengths = logits.lengths[rows_l]
            n_scores = int(lengths[0])
            if (lengths != n_scores).any() or width.setdefault(layer, n_scores) != n_scores:
                raise ValueError(f"layer {layer}: router logits have differing lengths")
            scores = router_scores(logits.rows(rows_l, n_scores), meta[layer][1])
            # Sorted cumulative scores once; k_at_p(scores, p) for every p reads them.
            cum = np.cumsum(-np.sort(-scores, axis=1), axis=1)
            ks = np.empty((len(levels), rows_l.size), dtype=np.int64)
            for i, p in enumerate(levels):
                reached = cum >= p - _TOL
                reached[:, -1] = True
                ks[i] = np.argmax(reached, axis=1) + 1
            small = np.int16 if n_scores < 2**15 else np.int64
            parts.setdefault(layer, []).append((code[rows_l].astype(np.int16), nll[rows_l], ks.astype(small)))
    rows: list[dict[str, object]] = []
    any_logits = bool(parts)
    for layer in sorted(parts):
        code = np.concatenate([c for c, _, _ in parts[layer]])
        nll_all = np.concatenate([x for _, x, _ in parts[layer]])
        ks = np.concatenate([k for _, _, k in parts[layer]], axis=1).astype(np.int64)
        del parts[layer]
        n_bins = max(meta[layer][0], width[layer])
        present = np.unique(code).tolist()  # NULL (code 0) first, then labels in sorted order
        masks = [code == g for g in present]
        oks = [~np.isnan(nll_all[mask]) for mask in masks]
        nll_ranks: dict[int, np.ndarray] = {}  # the NLL ranks of a group serve every p
        for i, p in enumerate(levels):
            k = ks[i]
            for g, mask, ok in zip(present, masks, oks, strict=True):
                k_l = k[mask]
                rows.append({
                    "layer": layer, "label": groups[g], "p": p, "mean_k": float(k_l.mean()),
                    "k_counts": np.bincount(k_l - 1, minlength=n_bins).tolist(), "n_tokens": int(k_l.size),
                    "spearman_nll": _spearman_cached(k_l[ok], nll_all[mask][ok], nll_ranks, g),
                    "n_nll": int(ok.sum()),
                })  # fmt: skip
    if not any_logits and layer_info.height > 0:
        raise ValueError(
            f"run {run_id!r} has no router logits for the selected layers; dynamic k needs them: "
            "capture the run again with --logits fp16 or --logits fp32"
        )
    if not rows:
        return pl.DataFrame(schema=_SCHEMA)
    out = pl.DataFrame(rows, schema=_SCHEMA).select(list(DYNAMIC_K_COLUMNS))
    return out.sort("layer", "label", "p", nulls_last=False)
