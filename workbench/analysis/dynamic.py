"""Dynamic routing (docs/methods.md §6, "Harder Tasks Need More Experts"): how many experts a token needs.

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
side is constant). Tokens of one prompt are not independent, so ρ's 95% CI and two-sided p
(``spearman_ci_low``, ``spearman_ci_high``, ``spearman_p``) are Fisher z ones
(:func:`workbench.analysis.rank.fisher_interval`, :func:`~workbench.analysis.rank.fisher_p`)
with the *prompts* as the independent units: ``n_prompts_nll``, the label's prompts with an
NLL, the smallest effective sample size a positive within-prompt correlation can give (design
effect ≤ tokens per prompt), so the interval is conservative. Prompts with a NULL label form their
own group (label NULL). Rows whose logits are NULL are skipped; a run (or layer selection) with no
logits at all raises ``ValueError``.

ρ comes from sufficient statistics (:mod:`workbench.analysis.dynamic_stats`): the k counts and the
sums of centred NLL ranks per k. :func:`k_stats` computes them in one pass over the rows; a complete
run keeps them for the default levels in its ``dynamic`` summary, which :func:`dynamic_k` reads
instead of the rows (same numbers, bit for bit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
from scipy.stats import rankdata

from workbench.analysis.common import (
    BatchLogits,
    layer_index,
    logits_matrix,
    map_ordered,
    row_chunks,
    signature_rows,
    sorted_index,
    stream_logits,
    transposed_f64,
)
from workbench.analysis.dynamic_stats import KStats, from_summary, table_rows
from workbench.analysis.scores import router_scores, router_scores_t
from workbench.store import Store, queries, summaries

__all__ = ["DYNAMIC_K_COLUMNS", "dynamic_k", "k_at_p", "k_stats"]

DYNAMIC_K_COLUMNS: tuple[str, ...] = (
    "layer",
    "label",
    "p",
    "mean_k",
    "k_counts",
    "n_tokens",
    "spearman_nll",
    "n_nll",
    "spearman_ci_low",
    "spearman_ci_high",
    "spearman_p",
    "n_prompts_nll",
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
    "spearman_ci_low": pl.Float64,
    "spearman_ci_high": pl.Float64,
    "spearman_p": pl.Float64,
    "n_prompts_nll": pl.Int64,
}

_TOL = 1e-9


def k_at_p(scores: np.ndarray, p: float) -> np.ndarray:
    """Per row, the fewest top scores whose sum reaches ``p`` (int64, in 1..E)."""
    cum = np.cumsum(-np.sort(-np.asarray(scores, dtype=np.float64), axis=1), axis=1)
    reached = cum >= p - _TOL
    reached[:, -1] = True  # all E experts always count as enough (guards rounding / p = 1)
    k: np.ndarray = np.argmax(reached, axis=1).astype(np.int64) + 1
    return k


def _token_key(prompt_id: np.ndarray, position: np.ndarray) -> np.ndarray:
    """One sortable int64 per (prompt_id, position)."""
    return (prompt_id.astype(np.int64) << 32) + position.astype(np.int64)


def _k_levels_rows(scores: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """``(len(levels), n)`` :func:`k_at_p` of ``(n, E)`` scores for every level (the row-wise path)."""
    cum = np.cumsum(-np.sort(-np.asarray(scores, dtype=np.float64), axis=1), axis=1)
    ks = np.empty((len(levels), len(cum)), dtype=np.int64)
    for i, p in enumerate(levels):
        reached = cum >= p - _TOL
        reached[:, -1] = True
        ks[i] = np.argmax(reached, axis=1) + 1
    return ks


def _k_levels_sorted(zt: np.ndarray, score_fn: str | None, levels: Sequence[float]) -> np.ndarray:
    """:func:`_k_levels_rows` of the scores of finite logits sorted ascending per token, ``(E, n)``.

    Every score map is monotone, so sorting the logits sorts the scores. The cumulative sum
    from the top, ``c_j``, only grows (scores are >= 0), so the first j with
    ``c_j >= p − tol`` is ``1 + #{j < E−1 : c_j < p − tol}``: a count, built row by row of
    the transposed layout with no per-token sort of π and no row-wise cumsum.
    """
    n_scores = zt.shape[0]
    if score_fn == "softmax":  # router_scores_t, with the max already in the last row
        pi_t = zt - zt[-1]
        np.exp(pi_t, out=pi_t)
        pi_t /= pi_t.sum(axis=0)
    else:
        pi_t = router_scores_t(zt, score_fn)
    cum = np.empty((max(n_scores - 1, 0), zt.shape[1]))  # cum[j]: the top j + 1 scores
    if n_scores > 1:
        cum[0] = pi_t[n_scores - 1]
    for j in range(1, n_scores - 1):
        np.add(cum[j - 1], pi_t[n_scores - 1 - j], out=cum[j])
    ks = np.empty((len(levels), zt.shape[1]), dtype=np.int64)
    for i, p in enumerate(levels):
        ks[i] = 1 + np.less(cum, p - _TOL).sum(axis=0, dtype=np.int32)  # rows added: no row-wise reduction
    return ks


def _k_levels(z: np.ndarray, score_fn: str | None, levels: Sequence[float]) -> np.ndarray:
    """``(len(levels), n)`` k_p of ``(n, E)`` logits; non-finite rows (and negative probs) row-wise."""
    fn = "softmax" if score_fn is None else score_fn
    ks = np.empty((len(levels), len(z)), dtype=np.int64)
    all_fast = bool(np.isfinite(z).all()) and (fn != "probs" or bool((z >= 0).all()))
    fast = (
        None if all_fast else np.isfinite(z).all(axis=1) & ((z >= 0).all(axis=1) if fn == "probs" else True)
    )
    good = None if fast is None else np.flatnonzero(fast)
    zg = z if good is None else z[good]
    for chunk in row_chunks(len(zg)):
        k_chunk = _k_levels_sorted(transposed_f64(np.sort(zg[chunk], axis=1)), fn, levels)
        ks[:, chunk if good is None else good[chunk]] = k_chunk
    if fast is not None and not fast.all():
        bad = np.flatnonzero(~fast)
        ks[:, bad] = _k_levels_rows(router_scores(np.asarray(z[bad], dtype=np.float64), fn), levels)
    return ks


@dataclass
class _Rows:
    """Per routing row (all batches, all layers): layer index, label group, token index (-1: none), k per level."""

    li: np.ndarray
    code: np.ndarray
    tok: np.ndarray
    ks: np.ndarray


class _Tokens:
    """The run's tokens sorted by (prompt_id, position), with their NLL, and a fast row lookup."""

    def __init__(self, store: Store, run_id: str, p_ids: np.ndarray) -> None:
        toks = queries.token_nll(store, run_id)
        key = _token_key(toks["prompt_id"].to_numpy(), toks["position"].to_numpy())
        nll = toks["nll"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        if key.size > 1 and not bool((key[1:] > key[:-1]).all()):  # usually stored in order already
            order = np.argsort(key, kind="stable")
            key, nll = key[order], nll[order]
        self.key, self.nll = key, nll
        self.start = np.searchsorted(key, p_ids.astype(np.int64) << 32)  # first token of each prompt

    def index(self, at: np.ndarray, key: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Token index of each routing row (``at``: its prompt's index), -1 where the token is missing.

        Positions are usually ``0..len-1`` per prompt, so ``start + position`` finds the token
        directly; rows where that guess misses fall back to a binary search.
        """
        n_tok = self.key.size
        if n_tok == 0 or self.start.size == 0:
            return np.full(key.size, -1, dtype=np.int64)
        guess: np.ndarray = np.clip(self.start[at] + position.astype(np.int64), 0, n_tok - 1)
        miss = np.flatnonzero(self.key[guess] != key)
        if miss.size:
            found = np.minimum(np.searchsorted(self.key, key[miss]), n_tok - 1)
            guess[miss] = np.where(self.key[found] == key[miss], found, -1)
        return guess


def _layer_widths(lengths: np.ndarray, li: np.ndarray, layer_list: list[int]) -> dict[int, int]:
    """The logits width of each layer in a batch; ``ValueError`` when one layer's rows differ."""
    if lengths.size and bool((lengths == lengths[0]).all()):
        return {layer_list[i]: int(lengths[0]) for i in np.flatnonzero(np.bincount(li)).tolist()}
    out: dict[int, int] = {}
    for i in np.flatnonzero(np.bincount(li)).tolist():
        own = lengths[li == i]
        if (own != own[0]).any():
            raise ValueError(f"layer {layer_list[i]}: router logits have differing lengths")
        out[layer_list[i]] = int(own[0])
    return out


def _token_ranks(tokens: _Tokens, p_ids: np.ndarray, p_code: np.ndarray, n_groups: int) -> _Ranks:
    """Centred average NLL ranks of every token within its label group (tokens with an NLL only).

    The ranks of a (layer, label) group depend only on its set of tokens, which is every token
    of the label with an NLL whenever no logits are missing: so one ``rankdata`` per label,
    before the pass, serves every such layer (checked afterwards by :func:`_shared_layers`).
    """
    n_tok = tokens.key.size
    t_pid = tokens.key >> 32
    at = sorted_index(p_ids, t_pid)
    known = (p_ids[at] == t_pid) if p_ids.size else np.zeros(n_tok, dtype=bool)
    usable = known & ~np.isnan(tokens.nll)
    code = np.where(usable, p_code[at] if p_ids.size else -1, -1)
    centred = np.zeros(n_tok)
    sum_yy = np.zeros(n_groups)
    n_prompts = np.zeros(n_groups, dtype=np.int64)
    for g in range(n_groups):
        members = np.flatnonzero(code == g)
        if members.size:
            centred[members] = rankdata(tokens.nll[members]) - (members.size + 1) / 2.0
            sum_yy[g] = float(centred[members] @ centred[members])
            n_prompts[g] = np.unique(t_pid[members]).size
    return _Ranks(usable, centred, sum_yy, n_prompts)


@dataclass
class _Ranks:
    """Per token: has a prompt and an NLL (``usable``), centred NLL rank in its group; Σ y² per group."""

    usable: np.ndarray
    centred: np.ndarray
    sum_yy: np.ndarray
    n_prompts: np.ndarray  # per group: prompts with at least one token with an NLL


@dataclass
class _Cells:
    """Bincounts per level over (layer, label group) cells × k: all rows, rows with an NLL, Σ centred NLL rank."""

    counts: np.ndarray
    counts_ok: np.ndarray
    sum_xy: np.ndarray

    def add(self, other: _Cells) -> _Cells:
        """The sum of two batches' counts (the k axis padded to the wider one)."""
        width = max(self.counts.shape[-1], other.counts.shape[-1])

        def pad(x: np.ndarray) -> np.ndarray:
            return np.pad(x, [(0, 0), (0, 0), (0, width - x.shape[-1])])

        return _Cells(
            pad(self.counts) + pad(other.counts),
            pad(self.counts_ok) + pad(other.counts_ok),
            pad(self.sum_xy) + pad(other.sum_xy),
        )


def _tokens_by_layer(li: np.ndarray, tok: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The layer indices and tokens of the batch's rows with an NLL (for :class:`_Coverage`)."""
    return li[ok], tok[ok]


class _Coverage:
    """Which usable tokens each layer's rows (with an NLL) hold, and how many rows that is.

    A layer whose rows number the usable tokens and cover all of them holds each exactly
    once: then the NLL ranks computed up front (:func:`_token_ranks`) are its ranks.
    """

    def __init__(self, n_layers: int, usable: np.ndarray) -> None:
        self.usable = usable
        self.seen = np.zeros((n_layers, usable.size), dtype=bool)
        self.rows = np.zeros(n_layers, dtype=np.int64)

    def add(self, li: np.ndarray, tok: np.ndarray) -> None:
        """Record one batch's rows with an NLL: their layer indices and tokens."""
        self.seen[li, tok] = True
        self.rows += np.bincount(li, minlength=self.rows.size)

    def shared(self) -> np.ndarray:
        """Per layer, whether its rows hold every usable token exactly once."""
        n_usable = int(self.usable.sum())
        full: np.ndarray = (self.rows == n_usable) & (self.seen.sum(axis=1) == n_usable)
        return full


def _cells(
    gid: np.ndarray, ks: np.ndarray, ok: np.ndarray, y: np.ndarray, n_cells: int, width: int
) -> _Cells:
    """:class:`_Cells` of one batch: ``gid`` each row's cell, ``ks`` its k per level, ``y`` its centred rank."""
    every = bool(ok.all())
    y_ok = y if every else y[ok]
    shape = (len(ks), n_cells, width)
    counts, counts_ok, sum_xy = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape)
    for i in range(len(ks)):
        cell = gid * width + ks[i] - 1
        cell_ok = cell if every else cell[ok]
        counts[i] = np.bincount(cell, minlength=n_cells * width).reshape(n_cells, width)
        counts_ok[i] = (
            counts[i] if every else np.bincount(cell_ok, minlength=n_cells * width).reshape(n_cells, width)
        )
        sum_xy[i] = np.bincount(cell_ok, weights=y_ok, minlength=n_cells * width).reshape(n_cells, width)
    return _Cells(counts, counts_ok, sum_xy)


def _own_ranks(stats: KStats, every: _Rows, li: int, ranks: _Ranks, nll: np.ndarray) -> None:
    """Rank the NLLs of layer ``li``'s rows within each label group on their own, into ``stats``.

    For a layer whose rows do not hold every usable token exactly once (some logits missing, say),
    the ranks shared by all layers are not its ranks: its groups' ``rank_sum`` and ``rank_ss`` are
    recomputed from its own rows (the k counts stay).
    """
    n_groups, width = len(stats.groups), stats.rank_sum.shape[-1]
    in_layer = np.flatnonzero(every.li == li)
    ok = every.tok[in_layer] >= 0
    ok[ok] = ranks.usable[every.tok[in_layer][ok]]
    for g in range(n_groups):
        c = li * n_groups + g
        sel = in_layer[ok & (every.code[in_layer] == g)]
        y = rankdata(nll[every.tok[sel]]) - (sel.size + 1) / 2.0 if sel.size else np.zeros(0)
        stats.rank_ss[c] = float(y @ y)
        for i in range(len(stats.levels)):
            stats.rank_sum[i][c] = np.bincount(every.ks[i][sel] - 1, weights=y, minlength=width)[:width]


def dynamic_k(
    store: Store,
    run_id: str,
    p_levels: Sequence[float] = (0.5, 0.9),
    *,
    layers: Iterable[int] | None = None,
) -> pl.DataFrame:
    """Mean ``k_p``, its distribution and Spearman ρ(k_p, NLL) per (layer, label, p), with its CI and p.

    Sorted by layer, label (NULL first), p. Needs router logits in the store. Reads the run's
    ``dynamic`` summary where it is valid and holds every level asked for (the same numbers).
    """
    levels = [float(x) for x in p_levels]
    if not levels or any(not 0.0 < x <= 1.0 for x in levels):
        raise ValueError(f"p_levels must be non-empty values in (0, 1], got {list(p_levels)}")
    layer_info = store.layers(run_id)  # raises UnknownRunError for an unknown run
    if layers is not None:
        layer_info = layer_info.filter(pl.col("layer").is_in(sorted({int(x) for x in layers})))
    stats = None
    if summaries.usable(store, run_id, summaries.DYNAMIC):
        stats = from_summary(store, run_id, levels, [int(x) for x in layer_info["layer"].to_list()])
    rows = table_rows(stats if stats is not None else k_stats(store, run_id, levels, layer_info))
    if not rows and layer_info.height > 0:
        raise ValueError(
            f"run {run_id!r} has no router logits for the selected layers; dynamic k needs them: "
            "capture the run again with --logits fp16 or --logits fp32"
        )
    out = pl.DataFrame(rows, schema=_SCHEMA)
    return out.select(list(DYNAMIC_K_COLUMNS)).sort("layer", "label", "p", nulls_last=False)


def k_stats(store: Store, run_id: str, levels: Sequence[float], layer_info: pl.DataFrame) -> KStats:
    """:class:`~workbench.analysis.dynamic_stats.KStats` of the run's rows at the layers of ``layer_info``.

    One unsorted pass over the routing rows with logits, a batch at a time, for all layers; labels
    and NLLs are looked up per row in numpy (prompt- and token-sized tables). Raises ``ValueError``
    where a layer's logits rows differ in length.
    """
    levels = list(levels)
    meta = {int(r["layer"]): (int(r["n_experts"]), r["score_fn"]) for r in layer_info.iter_rows(named=True)}
    prompts = queries.prompt_labels(store, run_id)
    groups: list[str | None] = [None, *sorted({x for x in prompts["label"].to_list() if x is not None})]
    p_ids = prompts["prompt_id"].to_numpy().astype(np.int64)
    p_code = np.array([groups.index(x) for x in prompts["label"].to_list()], dtype=np.int64)
    tokens = _Tokens(store, run_id, p_ids)
    ranker = ThreadPoolExecutor(max_workers=1)  # the ranks are needed from the first batch's end on
    ranks_future = ranker.submit(_token_ranks, tokens, p_ids, p_code, len(groups))
    layer_list = list(meta)
    score_fns = [meta[x][1] for x in layer_list]
    n_cells = len(layer_list) * len(groups)
    min_width = max((e for e, _ in meta.values()), default=1)

    def one_batch(
        item: tuple[pl.DataFrame, pa.Array],
    ) -> tuple[_Rows, _Cells, tuple[np.ndarray, np.ndarray], dict[int, int]] | None:
        """The batch's rows (k for every level) and the logits width of each layer in it."""
        batch, column = item
        pid = batch["prompt_id"].to_numpy().astype(np.int64)
        at = sorted_index(p_ids, pid)
        known = (p_ids[at] == pid) if p_ids.size else np.zeros(pid.size, dtype=bool)  # the prompts join
        if not known.all():
            keep = np.flatnonzero(known)
            batch, column, pid, at = batch[keep], column.take(pa.array(keep)), pid[keep], at[keep]
        if batch.height == 0:
            return None
        position = batch["position"].to_numpy()
        li = layer_index(batch["layer"].to_numpy(), layer_list)
        logits = BatchLogits(column)
        widths = _layer_widths(logits.lengths, li, layer_list)
        signatures = [(fn, widths.get(x, 0)) for x, fn in zip(layer_list, score_fns, strict=True)]
        ks = np.empty((len(levels), li.size), dtype=np.int32)
        for (score_fn, n_scores), rows in signature_rows(li, signatures):
            k_rows = _k_levels(logits_matrix(logits, rows, n_scores), score_fn, levels)
            ks[:, slice(None) if rows is None else rows] = k_rows
        tok = tokens.index(at, _token_key(pid, position), position)
        ranks = ranks_future.result()
        ok = tok >= 0
        ok[ok] = ranks.usable[tok[ok]]
        gid = li * len(groups) + p_code[at]
        width = max([min_width, *widths.values()])
        cells = _cells(gid, ks, ok, ranks.centred[np.maximum(tok, 0)], n_cells, width)
        by_layer = _tokens_by_layer(li, tok, ok)
        small = np.int16 if int(ks.max(initial=0)) < 2**15 else np.int32
        part = _Rows(li.astype(np.int16), p_code[at].astype(np.int16), tok.astype(np.int32), ks.astype(small))
        return part, cells, by_layer, widths

    batches = stream_logits(store, run_id, layer_list)
    ranker.shutdown(wait=False)  # the submitted ranking still runs; no further tasks
    width: dict[int, int] = {}
    parts: list[_Rows] = []
    cells: _Cells | None = None
    coverage: _Coverage | None = None
    for result in map_ordered(one_batch, batches):
        if result is None:
            continue
        part, batch_cells, by_layer, widths = result
        cells = batch_cells if cells is None else cells.add(batch_cells)
        if coverage is None:
            coverage = _Coverage(len(layer_list), ranks_future.result().usable)
        coverage.add(*by_layer)
        for layer, n_scores in widths.items():
            if width.setdefault(layer, n_scores) != n_scores:
                raise ValueError(f"layer {layer}: router logits have differing lengths")
        parts.append(part)
    ranks = ranks_future.result()
    if cells is None or coverage is None:
        empty = np.zeros((len(levels), 0, 1), np.int64)
        return KStats(
            [], groups, levels, empty, empty, empty.astype(np.float64), np.zeros(0), ranks.n_prompts, {}
        )
    stats = KStats(
        layer_list, groups, levels, cells.counts, cells.counts_ok, cells.sum_xy,
        np.tile(ranks.sum_yy, len(layer_list)), ranks.n_prompts, {x: max(meta[x][0], width[x]) for x in width},
    )  # fmt: skip
    own = [li for li in np.flatnonzero(~coverage.shared()).tolist() if layer_list[li] in width]
    if own:  # every batch's rows together, only when a layer needs its own ranks
        fields = ("li", "code", "tok", "ks")
        every = _Rows(*(np.concatenate([getattr(x, f) for x in parts], axis=-1) for f in fields))
        for li in own:
            _own_ranks(stats, every, li, ranks, tokens.nll)
    return stats
