"""Co-activation and pathways (docs/methods.md §4): which experts fire together, within and across layers.

Within a layer ``l`` (N = tokens routed at l, ``S`` = a token's top-k set):

* ``n_a`` = tokens with ``a ∈ S``; ``n_ab`` = tokens with ``a ∈ S`` and ``b ∈ S``, counted
  over **all** ordered pairs ``a ≠ b`` of the top-k set (not only rank-adjacent pairs, as
  OLMoE's public script does), so ``n_ab == n_ba``.
* ``P(b | a) = n_ab / n_a``; ``P(b) = n_b / N``; ``lift = P(b | a) / P(b)`` (1 = independent).

Across layers (:func:`pathways`): for consecutive MoE layers ``l → l'`` of the run (the next
layer in the run's ``layers`` table, not necessarily ``l + 1``), ``n`` = tokens whose top-1
expert (first entry of ``experts``, the highest weight) is ``expert_from`` at ``l`` and
``expert_to`` at ``l'``; ``n_from`` = tokens with top-1 ``expert_from`` at ``l`` that are
also routed at ``l'``; ``p = n / n_from``.

Fixed partners (:func:`fixed_partners`, Dynamic-DINO): for expert ``a`` at layer ``l`` its
co-activations are ``C_a = Σ_b n_ab``; ``n_partners`` is the smallest ``m`` such that the
``m`` most frequent partners cover ``≥ coverage · C_a``. ``layer_mean`` is the mean of
``n_partners`` over the experts of that layer that have any co-activation.

Expert ids ``>= n_experts`` (shared pseudo-experts) are left out throughout. Counting runs in
numpy over one unsorted scan of the routing table, a batch at a time (pair counts as ``MᵀM`` of
per-token 0/1 expert rows; transitions from neighbouring rows of a token, which the store keeps
in (prompt, position, layer) order — checked, with a DuckDB self-join when it does not hold);
only observed pairs/transitions get a row (``n > 0``).
These are descriptive counts with no CI: they are used to look at structure, not to test it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl

from workbench.analysis.common import layer_groups
from workbench.store import Store, queries, summaries

__all__ = [
    "COACTIVATION_COLUMNS",
    "FIXED_PARTNER_COLUMNS",
    "PATHWAY_COLUMNS",
    "coactivation",
    "fixed_partners",
    "pathways",
]

COACTIVATION_COLUMNS: tuple[str, ...] = (
    "layer", "a", "b", "n_ab", "n_a", "n_b", "n_tokens", "p_b_given_a", "p_b", "lift",
)  # fmt: skip
PATHWAY_COLUMNS: tuple[str, ...] = ("layer_from", "layer_to", "expert_from", "expert_to", "n", "n_from", "p")
FIXED_PARTNER_COLUMNS: tuple[str, ...] = (
    "layer", "expert", "n_partners", "n_distinct_partners", "n_coactivations", "layer_mean",
)  # fmt: skip

_COACT_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32, "a": pl.Int32, "b": pl.Int32, "n_ab": pl.Int64, "n_a": pl.Int64, "n_b": pl.Int64,
    "n_tokens": pl.Int64, "p_b_given_a": pl.Float64, "p_b": pl.Float64, "lift": pl.Float64,
}  # fmt: skip
_PATH_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer_from": pl.Int32, "layer_to": pl.Int32, "expert_from": pl.Int32, "expert_to": pl.Int32,
    "n": pl.Int64, "n_from": pl.Int64, "p": pl.Float64,
}  # fmt: skip
_FIXED_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32, "expert": pl.Int32, "n_partners": pl.Int64, "n_distinct_partners": pl.Int64,
    "n_coactivations": pl.Int64, "layer_mean": pl.Float64,
}  # fmt: skip


def coactivation(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``n_ab``, ``P(b|a)``, ``P(b)`` and lift for every observed ordered pair ``a ≠ b`` per layer.

    Sorted by layer, a, b. ``n_tokens`` is N at that layer. Raises for an unknown run.
    """
    info = store.layers(run_id)  # raises UnknownRunError for an unknown run
    out = pair_table(store, run_id, info, layers)
    if out.height == 0:
        return pl.DataFrame(schema=_COACT_SCHEMA)
    out = out.with_columns(
        (pl.col("n_ab") / pl.col("n_a")).alias("p_b_given_a"),
        (pl.col("n_b") / pl.col("n_tokens")).alias("p_b"),
    ).with_columns((pl.col("p_b_given_a") / pl.col("p_b")).alias("lift"))
    return out.select(list(COACTIVATION_COLUMNS)).cast(_COACT_SCHEMA)  # type: ignore[arg-type]


def pathways(store: Store, run_id: str, top: int | None = 20) -> pl.DataFrame:
    """Top-1 transitions between consecutive MoE layers: ``n``, ``n_from`` and ``p = n / n_from``.

    Keeps the ``top`` most frequent transitions of each layer pair (``p`` is computed before
    truncating; ``None`` keeps all). Sorted by layer_from, descending n, expert_from, expert_to.
    """
    store.layers(run_id)
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1 or None, got {top}")
    trans = transition_table(store, run_id)
    out = (
        trans.with_columns(pl.col("n").sum().over("layer_from", "expert_from").alias("n_from"))
        .with_columns((pl.col("n") / pl.col("n_from")).alias("p"))
        .sort(["layer_from", "n", "expert_from", "expert_to"], descending=[False, True, False, False])
    )
    if top is not None:
        out = out.filter(pl.int_range(pl.len()).over("layer_from") < int(top))
    if out.height == 0:
        return pl.DataFrame(schema=_PATH_SCHEMA)
    return out.select(list(PATHWAY_COLUMNS)).cast(_PATH_SCHEMA)  # type: ignore[arg-type]


def fixed_partners(
    store: Store, run_id: str, coverage: float = 0.5, layers: Iterable[int] | None = None
) -> pl.DataFrame:
    """Per (layer, expert): the fewest partners covering ``≥ coverage`` of its co-activations.

    ``n_distinct_partners`` is how many partners it has at all, ``n_coactivations`` is
    ``C_a``; ``layer_mean`` repeats the layer's mean ``n_partners`` on each row. Experts with no
    co-activation (unused, or ``k = 1``) have no row. Sorted by layer, expert.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    pairs = coactivation(store, run_id, layers)
    if pairs.height == 0:
        return pl.DataFrame(schema=_FIXED_SCHEMA)
    ranked = pairs.select("layer", "a", "n_ab").sort(["layer", "a", "n_ab"], descending=[False, False, True])
    ranked = ranked.with_columns(
        pl.col("n_ab").sum().over("layer", "a").alias("total"),
        (pl.col("n_ab").cum_sum().over("layer", "a") - pl.col("n_ab")).alias("before"),
    )
    out = (
        ranked.group_by("layer", "a")
        .agg(
            (pl.col("before") < coverage * pl.col("total")).sum().alias("n_partners"),
            pl.len().alias("n_distinct_partners"),
            pl.col("n_ab").sum().alias("n_coactivations"),
        )
        .rename({"a": "expert"})
        .with_columns(pl.col("n_partners").mean().over("layer").alias("layer_mean"))
    )
    return out.select(list(FIXED_PARTNER_COLUMNS)).cast(_FIXED_SCHEMA).sort("layer", "expert")  # type: ignore[arg-type]


def pair_table(store: Store, run_id: str, info: pl.DataFrame, layers: Iterable[int] | None) -> pl.DataFrame:
    """``layer, a, b, n_ab, n_a, n_b, n_tokens`` of the selected layers, by layer, a, b.

    From the run's ``pairs`` summary when it is valid, else counted over the routing rows.
    """
    if summaries.usable(store, run_id, summaries.PAIRS):
        return queries.summary_pair_counts(store, run_id, layers)
    out = _pair_counts(store, run_id, info, layers)
    if out is None:  # negative expert ids: count them exactly as the SQL always did
        out = queries.pair_counts(store, run_id, layers)
    return out


def transition_table(store: Store, run_id: str) -> pl.DataFrame:
    """``layer_from, layer_to, expert_from, expert_to, n``: top-1 transitions of consecutive MoE layers.

    From the run's ``transitions`` summary when it is valid, else counted over the routing rows.
    """
    if summaries.usable(store, run_id, summaries.TRANSITIONS):
        return queries.summary_transitions(store, run_id)
    trans = _transitions(store, run_id)
    if trans is None:  # rows not stored in (prompt, position, layer) order: self-join in DuckDB
        trans = queries.top1_transitions(store, run_id)
    return trans


def _expert_lists(batch: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(flat expert ids as int64, list lengths) of a batch's ``experts`` column."""
    col = batch["experts"]
    lengths = col.list.len().fill_null(0).to_numpy().astype(np.int64)
    values = col.rechunk().to_arrow().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.int64), lengths


def _pair_counts(
    store: Store, run_id: str, info: pl.DataFrame, layers: Iterable[int] | None
) -> pl.DataFrame | None:
    """``layer, a, b, n_ab, n_a, n_b, n_tokens`` counted in numpy over one unsorted routing scan.

    Per layer the distinct routed experts of each token form a 0/1 row of ``M`` (tokens × E);
    ``n_a`` is the column sum and ``n_ab`` the off-diagonal of ``Mᵀ·M``, accumulated batch by
    batch (float32 products of 0/1 values are exact below 2^24 rows a batch). None when an
    expert id is negative (the SQL path keeps those as their own ids).
    """
    n_exp = {int(layer): int(e) for layer, e in info.select("layer", "n_experts").iter_rows()}
    wanted = sorted(n_exp) if layers is None else sorted({int(x) for x in layers} & set(n_exp))
    gram: dict[int, np.ndarray] = {}
    n_tok: dict[int, int] = {}
    e_max = max([1, *n_exp.values()])
    rows_per_batch = min(1 << 18, max(1 << 12, (1 << 24) // e_max))  # the float32 rows × E matrix: <= 64 MiB
    for batch in store.iter_routing(
        run_id, layers=wanted, logits=False, batch_rows=rows_per_batch, ordered=False
    ):
        values, lengths = _expert_lists(batch)
        if values.size and values.min() < 0:
            return None
        row_of = np.repeat(np.arange(batch.height), lengths)
        layer_col = batch["layer"].to_numpy()
        keys = np.array(sorted(n_exp), dtype=np.int64)
        e_of_row = np.array([n_exp[int(k)] for k in keys], dtype=np.int64)[np.searchsorted(keys, layer_col)]
        pick = values < e_of_row[row_of]  # routed experts only; a repeated id sets the same cell
        member_all = np.zeros((batch.height, max(n_exp.values(), default=0)), dtype=np.float32)
        member_all[row_of[pick], values[pick]] = 1.0
        for layer, rows_l in layer_groups(layer_col):
            e = n_exp[layer]
            member = member_all[rows_l, :e]
            g = member.T @ member
            gram[layer] = gram.get(layer, np.zeros((e, e), dtype=np.int64)) + np.rint(g).astype(np.int64)
            n_tok[layer] = n_tok.get(layer, 0) + int(rows_l.size)
    frames = []
    for layer in sorted(gram):
        g = gram[layer]
        single = np.diag(g)
        a, b = np.nonzero(g * (1 - np.eye(len(g), dtype=np.int64)))  # row-major: sorted by a, b
        frames.append(
            pl.DataFrame(
                {
                    "layer": np.full(a.size, layer, np.int32),
                    "a": a.astype(np.int32),
                    "b": b.astype(np.int32),
                    "n_ab": g[a, b],
                    "n_a": single[a],
                    "n_b": single[b],
                    "n_tokens": np.full(a.size, n_tok[layer]),
                }
            )
        )
    if not frames:
        return pl.DataFrame(
            schema={k: _COACT_SCHEMA[k] for k in ("layer", "a", "b", "n_ab", "n_a", "n_b", "n_tokens")}
        )
    return pl.concat(frames)


def _transitions(store: Store, run_id: str) -> pl.DataFrame | None:
    """``layer_from, layer_to, expert_from, expert_to, n`` from one unsorted scan, or None.

    Routing rows are normally stored in (prompt_id, position, layer) order, so a token's
    layers are adjacent rows: a transition is a pair of neighbouring rows of one token whose
    layers are consecutive MoE layers of the run. The order is checked row by row (and
    across batches); if it does not hold, or an expert id is negative, this returns None
    and the caller joins in DuckDB instead.
    """
    info = store.layers(run_id).sort("layer")
    layer_ids = info["layer"].to_numpy().astype(np.int64)
    n_exp = info["n_experts"].to_numpy().astype(np.int64)
    if layer_ids.size < 2:
        return pl.DataFrame(
            schema={k: _PATH_SCHEMA[k] for k in ("layer_from", "layer_to", "expert_from", "expert_to", "n")}
        )
    width = int(max(n_exp.max(), 1))
    counts = np.zeros((layer_ids.size - 1) * width * width, dtype=np.int64)
    prev: tuple[Any, ...] | None = None  # the last row of the previous batch
    for batch in store.iter_routing(run_id, logits=False, batch_rows=1 << 20, ordered=False):
        top1 = batch["experts"].list.first()
        cols: tuple[Any, ...] = (
            batch["prompt_id"].to_numpy().astype(np.int64),
            batch["position"].to_numpy().astype(np.int64),
            batch["layer"].to_numpy().astype(np.int64),
            top1.fill_null(-1).to_numpy().astype(np.int64),
            top1.is_null().to_numpy(),
        )
        if prev is not None:
            cols = tuple(np.concatenate([a, b]) for a, b in zip(prev, cols, strict=True))
        pid, pos, layer, first, missing = cols
        if ((first < 0) & ~missing).any():
            return None
        d_pid, d_pos, d_layer = np.diff(pid), np.diff(pos), np.diff(layer)
        if not ((d_pid > 0) | ((d_pid == 0) & ((d_pos > 0) | ((d_pos == 0) & (d_layer > 0))))).all():
            return None
        at = np.minimum(np.searchsorted(layer_ids, layer), layer_ids.size - 1)
        known = np.flatnonzero(layer_ids[at] == layer)  # rows of layers the run describes
        pid, pos, at, first, missing = pid[known], pos[known], at[known], first[known], missing[known]
        routed = ~missing & (first < n_exp[at])
        same_token = (pid[1:] == pid[:-1]) & (pos[1:] == pos[:-1])
        step = same_token & (at[1:] == at[:-1] + 1) & routed[:-1] & routed[1:]
        i = np.flatnonzero(step)
        codes = (at[i] * width + first[i]) * width + first[i + 1]
        counts += np.bincount(codes, minlength=counts.size)
        prev = tuple(c[known[-1:]] for c in cols) if known.size else prev
    hit = np.flatnonzero(counts)
    src, rest = np.divmod(hit, width * width)
    e_from, e_to = np.divmod(rest, width)
    return pl.DataFrame({
        "layer_from": layer_ids[src].astype(np.int32), "layer_to": layer_ids[src + 1].astype(np.int32),
        "expert_from": e_from.astype(np.int32), "expert_to": e_to.astype(np.int32), "n": counts[hit],
    })  # fmt: skip
