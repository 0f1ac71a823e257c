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
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from workbench.analysis.common import layer_info, map_ordered
from workbench.analysis.stats import one_blas_thread
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


def _layer_samples(
    counts: pl.DataFrame, label_pids: np.ndarray, label_codes: np.ndarray, n_experts: int
) -> tuple[np.ndarray, np.ndarray]:
    """One layer's samples: each prompt's normalised expert histogram, and its label's code.

    ``counts`` holds the layer's ``prompt_id, expert, n`` rows of labelled prompts;
    ``label_pids`` (sorted) and ``label_codes`` give every labelled prompt's label as an integer
    (codes ordered as the labels sort, so a classifier sees the same classes in the same order
    as with the strings). The samples are the prompts with a selection at the layer, by prompt id.
    """
    row = np.searchsorted(label_pids, counts["prompt_id"].to_numpy())
    x = np.zeros((label_pids.size, n_experts))
    x[row, counts["expert"].to_numpy().astype(np.int64)] = counts["n"].to_numpy()
    present = np.flatnonzero(np.bincount(row, minlength=label_pids.size))
    x = x[present]
    x /= x.sum(axis=1, keepdims=True)
    return x, label_codes[present]


def _fold_accuracies(x: np.ndarray, y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Held-out accuracy of each ``StratifiedKFold`` fold of the StandardScaler + LogisticRegression probe.

    What ``cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
    x, y, cv=StratifiedKFold(n_folds, shuffle=True, random_state=seed))`` returns, to the same
    bits, without its per-fold cloning and scorer lookups. Runs on one OpenMP thread (the
    caller holds one BLAS thread): the fits are small (prompts × experts), and threads that
    wait for a busy machine's cores cost far more than they save.
    """
    with threadpool_limits(limits=1, user_api="openmp"):
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, y)
        out: list[float] = []
        for train, test in folds:
            scaler = StandardScaler().fit(x[train])
            model = LogisticRegression(max_iter=2000).fit(scaler.transform(x[train]), y[train])
            out.append(float(np.mean(model.predict(scaler.transform(x[test])) == y[test])))
    return np.asarray(out)


def routing_probe(
    store: Store, run_id: str, *, layers: Iterable[int] | None = None, folds: int = 5, seed: int = 0
) -> pl.DataFrame:
    """Cross-validated accuracy of predicting a prompt's label from its routing histogram, per layer.

    Columns ``layer, accuracy, accuracy_std, chance, n_prompts, n_folds``. The number of folds
    is ``min(folds, smallest label's prompt count)``; a layer with fewer than two labels or
    fewer than two prompts per label gets NaN accuracy. Layers are fitted on two threads, each
    fit on one BLAS and one OpenMP thread (the same bits as any thread count).
    """
    info = layer_info(store, run_id, layers)
    # one grouped pass over all selected layers; each prompt's label once, as a code
    everything = queries.prompt_expert_counts(store, run_id, info["layer"].to_list())
    labels = queries.prompt_labels(store, run_id, labelled_only=True)
    label_pids = labels["prompt_id"].to_numpy()
    codes = np.unique(labels["label"].to_numpy(), return_inverse=True)[1]  # in the names' sorted order
    by_layer = everything.partition_by("layer", as_dict=True, include_key=False)
    samples = [
        (int(layer), _layer_samples(by_layer[(layer,)], label_pids, codes, n_experts))
        for layer, n_experts in info.select("layer", "n_experts").iter_rows()
        if (layer,) in by_layer
    ]

    def one_layer(item: tuple[int, tuple[np.ndarray, np.ndarray]]) -> dict[str, object]:
        layer, (x, y) = item
        _, class_counts = np.unique(y, return_counts=True)
        n_folds = int(min(folds, class_counts.min()))
        acc = std = float("nan")
        if class_counts.size >= 2 and n_folds >= 2:
            scores = _fold_accuracies(x, y, n_folds, seed)
            acc, std = float(scores.mean()), float(scores.std())
        return {
            "layer": layer, "accuracy": acc, "accuracy_std": std,
            "chance": float(class_counts.max() / y.size), "n_prompts": int(y.size), "n_folds": n_folds,
        }  # fmt: skip

    with one_blas_thread():
        rows = list(map_ordered(one_layer, samples))
    schema = {
        "layer": pl.Int32, "accuracy": pl.Float64, "accuracy_std": pl.Float64, "chance": pl.Float64,
        "n_prompts": pl.Int64, "n_folds": pl.Int64,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row")
