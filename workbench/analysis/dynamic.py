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
from scipy.stats import spearmanr

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
    rows: list[dict[str, object]] = []
    any_logits = False
    for layer, n_experts, score_fn in layer_info.select("layer", "n_experts", "score_fn").iter_rows():
        df = store.sql(
            "SELECT pr.label, t.nll, r.logits FROM routing r"
            " JOIN prompts pr ON pr.run_id = r.run_id AND pr.prompt_id = r.prompt_id"
            " LEFT JOIN tokens t ON t.run_id = r.run_id AND t.prompt_id = r.prompt_id AND t.position = r.position"
            " WHERE r.run_id = ? AND r.layer = ? AND r.logits IS NOT NULL"
            " ORDER BY r.prompt_id, r.position",
            [run_id, int(layer)],
        )
        if df.height == 0:
            continue
        any_logits = True
        width = df["logits"].list.len()
        if width.min() != width.max():
            raise ValueError(f"layer {layer}: router logits have differing lengths")
        n_scores = int(width[0])
        logits = df["logits"].explode().to_numpy().astype(np.float64).reshape(df.height, n_scores)
        scores = router_scores(logits, score_fn)
        label_col = df["label"]
        nll = df["nll"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        n_bins = max(int(n_experts), n_scores)
        # One boolean mask per label (NULL first), computed once per layer in polars rather than
        # by comparing Python objects token by token for every p.
        groups = sorted(set(label_col.unique().to_list()), key=lambda x: (x is not None, x or ""))
        masks = [
            (label_col.is_null() if label is None else (label_col == label).fill_null(False)).to_numpy()
            for label in groups
        ]
        # Sorted cumulative scores once per layer; k_at_p(scores, p) for every p reads them.
        cum = np.cumsum(-np.sort(-scores, axis=1), axis=1)
        for p in levels:
            reached = cum >= p - _TOL
            reached[:, -1] = True
            k = np.argmax(reached, axis=1).astype(np.int64) + 1
            for label, mask in zip(groups, masks, strict=True):
                k_l, nll_l = k[mask], nll[mask]
                ok = ~np.isnan(nll_l)
                rows.append({
                    "layer": int(layer), "label": label, "p": p, "mean_k": float(k_l.mean()),
                    "k_counts": np.bincount(k_l - 1, minlength=n_bins).tolist(), "n_tokens": int(k_l.size),
                    "spearman_nll": _spearman(k_l[ok], nll_l[ok]), "n_nll": int(ok.sum()),
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
