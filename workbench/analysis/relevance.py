"""Expert relevance to a label (docs/methods.md §2): ESFT scores, PreMoe's TCESS, vocabulary specialisation.

* **ESFT** (DeepSeek ESFT). Over the label-t tokens of layer l, the gate score
  ``GS[l,e,t] = mean_i g[i,l,e]`` (the applied gate weight, 0 when e is not selected) and the
  token selection ratio ``TSR[l,e,t] = mean_i 1[e ∈ S[i,l]] / k``. The label's expert set at
  layer l is the smallest set of experts whose scores, sorted in descending order and
  divided by the layer's total for that label, reach a cumulative share ``p`` (the expert
  that crosses p is included). The share is normalised **per (layer, label)**: the public
  ESFT script divides by the sum over all layers, which makes a layer's set depend on every
  other layer; we do not reproduce that.
* **TCESS** (PreMoe). ``mean_i π[i,l,e]`` over label-t tokens, with π recomputed from the
  stored logits (:func:`workbench.analysis.scores.router_scores`, normalised). With a
  threshold ``r`` only the tokens whose score for e is ``>= r`` count: the mean is over that
  subset (0 when it is empty), and ``n_counted`` says how many tokens it had.
* **Vocabulary specialisation** (OLMoE). Under top-1 routing (the first *routed* expert of
  the descending-weight list), ``max_e n(e,x) / n(x)`` for each token id x with
  ``n(x) >= min_count``, averaged over those token ids, per layer. 1 means every token id
  always goes to one expert; uniform routing gives about ``1/E`` (a little more, from noise).

Prompts with a NULL label are left out of the label-conditioned scores (ESFT, TCESS); the
vocabulary scores use every prompt. Expert ids ``>= n_experts`` (shared pseudo-experts) are
never counted. Counting happens in DuckDB, one grouped query over all layers; TCESS streams the
logits of all layers once, unsorted, in batches of ``_BATCH_ROWS`` rows. Where the run's summaries
are valid, the vocabulary scores read its ``vocab`` part (top-1 counts per layer, token id and
expert) and TCESS its ``logits`` part, instead of the rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

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
from workbench.analysis.scores import router_scores_t
from workbench.analysis.tokens import token_scheme, with_token_text
from workbench.store import Store, queries, summaries

__all__ = ["esft_scores", "expert_top_tokens", "tcess", "vocab_specialisation"]

#: Rows per streamed batch for the logit analyses: bounds their memory (~E·8 bytes a row).
_BATCH_ROWS = 262_144


def _cumulative_set(scores: np.ndarray, p: float) -> np.ndarray:
    """Boolean mask of the smallest set of entries whose descending cumulative share reaches ``p``."""
    total = float(scores.sum())
    mask = np.zeros(scores.shape, dtype=bool)
    if total <= 0:
        return mask
    order = np.argsort(-scores, kind="stable")
    cum = np.cumsum(scores[order]) / total
    n_in = int(np.searchsorted(cum, p - 1e-12, side="left")) + 1
    mask[order[: min(n_in, scores.size)]] = True
    return mask


def esft_scores(
    store: Store, run_id: str, *, layers: Iterable[int] | None = None, p: float = 0.2
) -> pl.DataFrame:
    """ESFT gate score and token selection ratio per (layer, expert, label), with each one's expert set.

    Columns ``layer, expert, label, gs, tsr, in_set_gs, in_set_tsr, n_tokens``; one row for
    every routed expert ``0..E-1`` of each selected layer and every non-null label with tokens
    there (unselected experts score 0). ``in_set_*`` marks the label's ESFT expert set at that
    layer for the score, with cumulative share ``p`` normalised within the layer.
    """
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    info = layer_info(store, run_id, layers)
    frames: list[pl.DataFrame] = []
    # One grouped pass over all selected layers (not one scan of the routing table per layer).
    all_sums = queries.label_gate_sums(store, run_id, info["layer"].to_list())
    all_totals = queries.label_token_counts(store, run_id, info["layer"].to_list())
    for layer, n_experts, top_k in info.select("layer", "n_experts", "top_k").iter_rows():
        sums = all_sums.filter(pl.col("layer") == layer)
        totals = all_totals.filter(pl.col("layer") == layer).select("label", "n_tokens")
        for label, n_tokens in totals.iter_rows():
            part = sums.filter(pl.col("label") == label)
            idx = part["expert"].to_numpy().astype(np.int64)
            gs = np.zeros(n_experts)
            tsr = np.zeros(n_experts)
            gs[idx] = part["w"].to_numpy().astype(np.float64) / n_tokens
            tsr[idx] = part["n"].to_numpy().astype(np.float64) / (n_tokens * top_k)
            frames.append(
                pl.DataFrame(
                    {
                        "layer": np.full(n_experts, layer, np.int32),
                        "expert": np.arange(n_experts, dtype=np.int32),
                        "label": [label] * n_experts,
                        "gs": gs,
                        "tsr": tsr,
                        "in_set_gs": _cumulative_set(gs, p),
                        "in_set_tsr": _cumulative_set(tsr, p),
                        "n_tokens": np.full(n_experts, n_tokens, np.int64),
                    }
                )
            )
    if not frames:
        return pl.DataFrame(
            schema={
                "layer": pl.Int32, "expert": pl.Int32, "label": pl.Utf8, "gs": pl.Float64, "tsr": pl.Float64,
                "in_set_gs": pl.Boolean, "in_set_tsr": pl.Boolean, "n_tokens": pl.Int64,
            }
        )  # fmt: skip
    return pl.concat(frames).sort("layer", "expert", "label")


@dataclass(frozen=True)
class _TcessSums:
    """Per (layer, label) group: Σ π per expert (thresholded when r is given), kept rows per expert, rows."""

    sums: np.ndarray
    kept: np.ndarray
    n_rows: np.ndarray

    def add(self, other: _TcessSums) -> _TcessSums:
        """The sums of two batches together."""
        return _TcessSums(self.sums + other.sums, self.kept + other.kept, self.n_rows + other.n_rows)


def _tcess_sums(
    z: np.ndarray, score_fn: str | None, group: np.ndarray, n_groups: int, r: float | None
) -> _TcessSums:
    """Group sums of the scores π of the ``(n, E)`` logits ``z`` over rows labelled ``group``.

    π is computed a chunk of rows at a time in the transposed layout
    (:func:`~workbench.analysis.scores.router_scores_t`), and summed per group with one
    ``bincount`` per expert: O(n·E), with no gather of rows and no (groups × n) indicator matrix.
    """
    n_experts = z.shape[1]
    sums = np.zeros((n_groups, n_experts))
    kept = np.zeros((n_groups, n_experts))
    for chunk in row_chunks(len(z)):
        pi_t = router_scores_t(transposed_f64(z[chunk]), score_fn)
        g = group[chunk]
        for e in range(n_experts):
            if r is None:
                sums[:, e] += np.bincount(g, weights=pi_t[e], minlength=n_groups)
            else:
                keep = pi_t[e] >= r
                sums[:, e] += np.bincount(g, weights=np.where(keep, pi_t[e], 0.0), minlength=n_groups)
                kept[:, e] += np.bincount(g, weights=keep, minlength=n_groups)
    return _TcessSums(sums, kept, np.bincount(group, minlength=n_groups).astype(np.float64))


def tcess(
    store: Store, run_id: str, *, layers: Iterable[int] | None = None, r: float | None = None
) -> pl.DataFrame:
    """PreMoe's task-conditioned expected selection score per (layer, expert, label).

    Columns ``layer, expert, label, tcess, n_counted, n_tokens``. Needs router logits (a run
    captured with ``--logits fp16`` or ``--logits fp32``); raises ``ValueError`` when the
    selected layers have none. Rows with NULL logits are skipped. ``r=None`` averages π over
    all label-t tokens; otherwise only over those whose score for e is ``>= r``.
    """
    info = layer_info(store, run_id, layers)
    meta = {
        int(layer): (int(e), fn) for layer, e, fn in info.select("layer", "n_experts", "score_fn").iter_rows()
    }
    label_names = sorted({x for x in store.prompts(run_id)["label"].to_list() if x is not None})
    n_labels = len(label_names)
    layer_list = list(meta)
    n_layers = len(layer_list)
    widths = np.array([meta[x][0] for x in layer_list], dtype=np.int64)
    signatures = [meta[x] for x in layer_list]
    if r is None and summaries.usable(store, run_id, summaries.LOGITS):
        from_summary = _tcess_from_summaries(store, run_id, layer_list, label_names, widths)
        return _tcess_frame(run_id, info, meta, label_names, from_summary[0], {}, from_summary[1], r)
    # Per (layer, label) group: Σ π (or Σ π·[π >= r]) per expert, tokens, and counted tokens.
    acc: dict[int, _TcessSums] = {}
    batches = stream_logits(store, run_id, layer_list, labels=label_names, batch_rows=_BATCH_ROWS)

    def one_batch(item: tuple[pl.DataFrame, pa.Array]) -> list[tuple[int, _TcessSums]]:
        """One streamed batch's group sums, per logits width (E) of its layers."""
        batch, column = item
        if batch.height == 0:
            return []
        codes = batch["label"].cast(pl.Enum(label_names)).to_physical().to_numpy().astype(np.int64)
        li = layer_index(batch["layer"].to_numpy(), layer_list)
        logits = BatchLogits(column)
        check_widths(logits.lengths, li, widths, layer_list)
        out = []
        for (n_experts, score_fn), rows in signature_rows(li, signatures):
            z = logits_matrix(logits, rows, n_experts)
            li_s, codes_s = (li, codes) if rows is None else (li[rows], codes[rows])
            part = _tcess_sums(z, score_fn, li_s * n_labels + codes_s, n_layers * n_labels, r)
            out.append((n_experts, part))
        return out

    for parts in map_ordered(one_batch, batches):  # one unsorted scan over all layers
        for n_experts, part in parts:
            if n_experts in acc:
                acc[n_experts] = acc[n_experts].add(part)
            else:
                acc[n_experts] = part
    sums: dict[int, np.ndarray] = {}
    n_rows: dict[int, np.ndarray] = {}
    kept: dict[int, np.ndarray] = {}
    for part in acc.values():
        for i, layer in enumerate(layer_list):
            block = slice(i * n_labels, (i + 1) * n_labels)
            if part.n_rows[block].sum() == 0 or part.sums.shape[1] != meta[layer][0]:
                continue
            sums[layer], kept[layer], n_rows[layer] = part.sums[block], part.kept[block], part.n_rows[block]
    return _tcess_frame(run_id, info, meta, label_names, sums, kept, n_rows, r)


def _tcess_from_summaries(
    store: Store, run_id: str, layer_list: list[int], label_names: list[str], widths: np.ndarray
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Σ π per (label, expert) and rows per label of each layer with logits, from the run's summaries."""
    code = {name: j for j, name in enumerate(label_names)}
    sums: dict[int, np.ndarray] = {}
    n_rows: dict[int, np.ndarray] = {}
    for layer, label, n in queries.label_logit_rows(store, run_id, layer_list).iter_rows():
        n_rows.setdefault(int(layer), np.zeros(len(label_names)))[code[label]] = n
    width = dict(zip(layer_list, widths.tolist(), strict=True))
    for layer, label, expert, total in queries.label_score_sums(store, run_id, layer_list).iter_rows():
        sums.setdefault(int(layer), np.zeros((len(label_names), width[int(layer)])))[code[label], expert] = (
            total
        )
    for (
        layer
    ) in n_rows:  # a layer whose labelled rows all have logits but no score rows cannot occur; keep shapes
        sums.setdefault(layer, np.zeros((len(label_names), width[layer])))
    return sums, n_rows


def _tcess_frame(
    run_id: str,
    info: pl.DataFrame,
    meta: dict[int, tuple[int, str | None]],
    label_names: list[str],
    sums: dict[int, np.ndarray],
    kept: dict[int, np.ndarray],
    n_rows: dict[int, np.ndarray],
    r: float | None,
) -> pl.DataFrame:
    """TCESS's table from per-layer Σ π (label × expert), kept rows (only with ``r``) and rows per label."""
    frames: list[pl.DataFrame] = []
    any_logits = bool(sums)
    for layer in sorted(sums):
        n_experts = meta[layer][0]
        for code, label in enumerate(label_names):
            n_tok = int(n_rows[layer][code])
            if n_tok == 0:
                continue
            if r is None:
                mean = sums[layer][code] / n_tok
                counted = np.full(n_experts, n_tok, np.int64)
            else:
                counted = kept[layer][code].astype(np.int64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = np.where(counted > 0, sums[layer][code] / np.maximum(counted, 1), 0.0)
            frames.append(
                pl.DataFrame(
                    {
                        "layer": np.full(n_experts, layer, np.int32),
                        "expert": np.arange(n_experts, dtype=np.int32),
                        "label": [label] * n_experts,
                        "tcess": mean,
                        "n_counted": counted,
                        "n_tokens": np.full(n_experts, n_tok, np.int64),
                    }
                )
            )
    if not any_logits and info.height > 0:
        raise ValueError(
            f"run {run_id!r} has no router logits for the selected layers; TCESS needs the full router "
            "scores: capture the run with --logits fp16 or --logits fp32"
        )
    if not frames:
        return pl.DataFrame(
            schema={
                "layer": pl.Int32, "expert": pl.Int32, "label": pl.Utf8, "tcess": pl.Float64,
                "n_counted": pl.Int64, "n_tokens": pl.Int64,
            }
        )  # fmt: skip
    return pl.concat(frames).sort("layer", "expert", "label")


def vocab_specialisation(
    store: Store, run_id: str, *, layers: Iterable[int] | None = None, min_count: int = 5
) -> pl.DataFrame:
    """OLMoE vocabulary specialisation per layer.

    Columns ``layer, vocab_specialisation, uniform, n_token_ids, n_tokens``: the mean over
    token ids with ``n(x) >= min_count`` of ``max_e n(e,x)/n(x)`` under top-1 routing, the
    uniform reference ``1/E``, how many token ids qualified and how many tokens they cover.
    ``vocab_specialisation`` is NaN for a layer where no token id qualifies.
    """
    info = layer_info(store, run_id, layers)
    rows: list[dict[str, object]] = []
    # One pass over all selected layers: the top-1 counts per (layer, token id, expert), from the
    # run's ``vocab`` summary or the rows, are reduced in DuckDB to (n_max, n_x) per (layer, token
    # id), sorted by token id, so only vocabulary-sized rows reach Python, in one order.
    maxima = (
        queries.summary_top1_token_maxima
        if summaries.usable(store, run_id, summaries.VOCAB)
        else queries.top1_token_maxima
    )
    all_ids = maxima(store, run_id, info["layer"].to_list())
    for layer, n_experts in info.select("layer", "n_experts").iter_rows():
        per_id = all_ids.filter((pl.col("layer") == layer) & (pl.col("n_x") >= min_count))
        value = (
            float(np.mean(per_id["n_max"].to_numpy() / per_id["n_x"].to_numpy()))
            if per_id.height
            else float("nan")
        )
        rows.append({
            "layer": layer, "vocab_specialisation": value, "uniform": 1.0 / n_experts,
            "n_token_ids": per_id.height, "n_tokens": int(per_id["n_x"].sum()) if per_id.height else 0,
        })  # fmt: skip
    schema = {
        "layer": pl.Int32, "vocab_specialisation": pl.Float64, "uniform": pl.Float64,
        "n_token_ids": pl.Int64, "n_tokens": pl.Int64,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row")


def expert_top_tokens(
    store: Store, run_id: str, layer: int, expert: int, *, n: int = 20, min_count: int = 5
) -> pl.DataFrame:
    """The token ids most specialised to one expert at one layer, under top-1 routing.

    Columns ``token_id, token, text, n_routed, n_total, share``: ``share = n(e,x)/n(x)``, over token
    ids with ``n(x) >= min_count`` that the expert receives at least once; sorted by share then
    ``n_routed`` (descending), the first ``n`` rows. ``token`` is the tokenizer's raw symbol, ``text``
    what it reads as (:func:`workbench.analysis.tokens.with_token_text`).
    """
    info = layer_info(store, run_id, [layer])
    if info.height == 0:
        raise ValueError(f"run {run_id!r} has no MoE layer {layer}")
    n_experts = int(info["n_experts"][0])
    if not 0 <= expert < n_experts:
        raise ValueError(f"expert must be in [0, {n_experts}), got {expert}")
    if summaries.usable(store, run_id, summaries.VOCAB):
        counts = queries.summary_top1_token_counts(store, run_id, layer)
    else:
        counts = queries.top1_token_counts(store, run_id, layer, n_experts)
    totals = counts.group_by("token_id").agg(pl.col("n").sum().alias("n_total"))
    names = queries.token_strings(store, run_id)
    top = (
        counts.filter(pl.col("expert") == expert)
        .join(totals, on="token_id")
        .filter(pl.col("n_total") >= min_count)
        .join(names, on="token_id", how="left")
        .select(
            "token_id",
            "token",
            pl.col("n").cast(pl.Int64).alias("n_routed"),
            pl.col("n_total").cast(pl.Int64),
            (pl.col("n") / pl.col("n_total")).cast(pl.Float64).alias("share"),
        )
        .sort(["share", "n_routed", "token_id"], descending=[True, True, False])
        .head(n)
    )
    return with_token_text(top, token_scheme(store, run_id)).select(
        "token_id", "token", "text", "n_routed", "n_total", "share"
    )
