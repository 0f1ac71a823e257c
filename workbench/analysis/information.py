"""How much label information routing carries, per layer (docs/methods.md §2, "information").

* **Mutual information** ``I(expert; label)`` with the expert taken as each token's **top-1
  routed expert** (the first expert id ``< n_experts`` of the descending-weight list), so every
  token contributes exactly one (label, expert) pair. Plug-in estimate from the token-level
  contingency table, in nats, and normalised by the token-level ``H(label)`` so that 1 means the
  top-1 choice determines the label. The plug-in estimate is biased upwards by roughly
  ``(T-1)(E-1) / (2N)`` nats (T labels, N tokens); ``bias`` reports that Miller–Madow term.
* **Routing probe**: each labelled prompt becomes the normalised histogram of the experts it
  selected at that layer (all top-k selections, counts divided by their sum); a
  ``StandardScaler`` + ``LogisticRegression`` pipeline predicts the label, scored by
  ``StratifiedKFold`` over prompts (a prompt is one sample, so its tokens never straddle train
  and test). ``chance`` is the majority-label share of the prompts.

Prompts with a NULL label are left out; shared pseudo-experts (ids ``>= n_experts``) never count.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workbench.analysis.common import layer_info
from workbench.store import Store, queries

__all__ = ["routing_mutual_information", "routing_probe"]


def _entropy(counts: np.ndarray) -> float:
    total = counts.sum()
    if total <= 0:
        return 0.0
    q = counts[counts > 0] / total
    return float(-(q * np.log(q)).sum())


def routing_mutual_information(
    store: Store, run_id: str, *, layers: Iterable[int] | None = None
) -> pl.DataFrame:
    """``I(top-1 expert; label)`` per layer.

    Columns ``layer, mi, h_label, mi_norm, bias, n_tokens, n_labels`` (mi, h_label and bias in
    nats; ``mi_norm = mi / h_label``, NaN when there is a single label).
    """
    info = layer_info(store, run_id, layers)
    rows: list[dict[str, object]] = []
    # one grouped pass over all selected layers
    everything = queries.top1_label_counts(store, run_id, info["layer"].to_list())
    for layer, n_experts in info.select("layer", "n_experts").iter_rows():
        df = everything.filter(pl.col("layer") == layer)
        if df.height == 0:
            continue
        labels = sorted(set(df["label"].to_list()))
        code = {name: i for i, name in enumerate(labels)}
        table = np.zeros((len(labels), n_experts))
        table[[code[x] for x in df["label"].to_list()], df["expert"].to_numpy().astype(np.int64)] = df[
            "n"
        ].to_numpy()
        n = table.sum()
        h_label = _entropy(table.sum(axis=1))
        mi = h_label + _entropy(table.sum(axis=0)) - _entropy(table.ravel())
        used_e = int((table.sum(axis=0) > 0).sum())
        rows.append({
            "layer": layer, "mi": max(mi, 0.0), "h_label": h_label,
            "mi_norm": max(mi, 0.0) / h_label if h_label > 0 else float("nan"),
            "bias": (len(labels) - 1) * max(used_e - 1, 0) / (2 * n),
            "n_tokens": int(n), "n_labels": len(labels),
        })  # fmt: skip
    schema = {
        "layer": pl.Int32, "mi": pl.Float64, "h_label": pl.Float64, "mi_norm": pl.Float64,
        "bias": pl.Float64, "n_tokens": pl.Int64, "n_labels": pl.Int64,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row")


def routing_probe(
    store: Store, run_id: str, *, layers: Iterable[int] | None = None, folds: int = 5, seed: int = 0
) -> pl.DataFrame:
    """Cross-validated accuracy of predicting a prompt's label from its routing histogram, per layer.

    Columns ``layer, accuracy, accuracy_std, chance, n_prompts, n_folds``. The number of folds
    is ``min(folds, smallest label's prompt count)``; a layer with fewer than two labels or
    fewer than two prompts per label gets NaN accuracy.
    """
    info = layer_info(store, run_id, layers)
    rows: list[dict[str, object]] = []
    # one grouped pass over all selected layers
    everything = queries.prompt_expert_counts(store, run_id, info["layer"].to_list())
    for layer, n_experts in info.select("layer", "n_experts").iter_rows():
        df = everything.filter(pl.col("layer") == layer).drop("layer")
        if df.height == 0:
            continue
        pids = np.unique(df["prompt_id"].to_numpy())
        x = np.zeros((pids.size, n_experts))
        x[np.searchsorted(pids, df["prompt_id"].to_numpy()), df["expert"].to_numpy().astype(np.int64)] = df[
            "n"
        ].to_numpy()
        x /= x.sum(axis=1, keepdims=True)
        label_of = dict(zip(df["prompt_id"].to_list(), df["label"].to_list(), strict=False))
        y = np.array([label_of[int(p)] for p in pids], dtype=object)
        _, class_counts = np.unique(y, return_counts=True)
        chance = float(class_counts.max() / y.size)
        n_folds = int(min(folds, class_counts.min()))
        if class_counts.size < 2 or n_folds < 2:
            acc = std = float("nan")
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            scores = cross_val_score(model, x, y, cv=cv, scoring="accuracy")
            acc, std = float(scores.mean()), float(scores.std())
        rows.append({
            "layer": layer, "accuracy": acc, "accuracy_std": std, "chance": chance,
            "n_prompts": int(pids.size), "n_folds": n_folds,
        })  # fmt: skip
    schema = {
        "layer": pl.Int32, "accuracy": pl.Float64, "accuracy_std": pl.Float64, "chance": pl.Float64,
        "n_prompts": pl.Int64, "n_folds": pl.Int64,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row")
