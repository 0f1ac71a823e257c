"""The summary parts the store cannot build alone (:mod:`workbench.store.summaries`): logits, pairs, transitions, vocab, dynamic.

The ``pairs`` and ``transitions`` parts are co-activation's and pathways' whole-run counts, counted by
their own code (:func:`~workbench.analysis.coactivation.pair_table`,
:func:`~workbench.analysis.coactivation.transition_table`) on the token rows. The ``vocab`` part is
vocabulary specialisation's top-1 counts per (layer, token id, expert), counted by the row path's
query; the ``dynamic`` part is dynamic k's sufficient statistics at the default levels, computed by
its own pass (:func:`~workbench.analysis.dynamic.k_stats`, :mod:`workbench.analysis.dynamic_stats`).

Router confidence and TCESS turn every routing row's logits into per-token numbers (entropy,
margin, fragility, router scores π) before they sum them; no count the store keeps gives those.
This module computes, in one streamed pass over the run's logits with the analyses' own kernels:

* ``summary_confidence``: per (prompt, layer), the rows with logits ``n``, Σ entropy, Σ margin and
  the rows whose top-k set flips under router-confidence's default perturbation
  (``σ = 0.01``, ``seed = 0``; :data:`~workbench.analysis.confidence.SUMMARY_NOISE`);
* ``summary_scores``: per (prompt, layer, routed expert), Σ π (TCESS's scores, normalised).

:func:`build_logit_summaries` is registered with the store when :mod:`workbench.analysis` is
imported, so the store builds this part with the rest of a run's summaries. The per-token values
are exactly the ones the analyses compute on the row path (same functions, same keyed noise);
only the order of the floating-point sums differs.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from workbench.analysis.coactivation import pair_table, transition_table
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
from workbench.analysis.confidence import SUMMARY_NOISE, SUMMARY_SEED, _confidence_rows, _row_ids
from workbench.analysis.dynamic import k_stats
from workbench.analysis.dynamic_stats import SUMMARY_LEVELS, to_tables
from workbench.analysis.scores import router_scores_t
from workbench.store import Store, queries, summaries

__all__ = [
    "build_dynamic_summaries",
    "build_logit_summaries",
    "build_pair_summaries",
    "build_transition_summaries",
    "build_vocab_summaries",
    "prompt_ranges",
]

#: Routing rows per streamed batch.
_BATCH_ROWS = 200_000

_CONF_SCHEMA = {
    "prompt_id": pl.Int32, "layer": pl.Int32, "n": pl.Int64, "entropy_sum": pl.Float64,
    "margin_sum": pl.Float64, "n_fragile": pl.Int64,
}  # fmt: skip
_SCORE_SCHEMA = {"prompt_id": pl.Int32, "layer": pl.Int32, "expert": pl.Int32, "score_sum": pl.Float64}


def build_logit_summaries(store: Store, run_id: str) -> dict[str, pa.Table]:
    """``summary_confidence`` and ``summary_scores`` of the run (empty tables when it has no logits).

    Raises ``ValueError`` where the analyses would (logits rows whose length is not the layer's E).
    """
    info = layer_info(store, run_id, None)
    layer_list = [int(x) for x in info["layer"].to_list()]
    meta = {
        int(r["layer"]): (int(r["n_experts"]), int(r["top_k"]), r["score_fn"])
        for r in info.iter_rows(named=True)
    }
    signatures = [meta[x] for x in layer_list]
    widths = np.array([meta[x][0] for x in layer_list], dtype=np.int64)
    n_layers = max(1, len(layer_list))
    layer_arr = np.array(layer_list or [0], dtype=np.int64)

    def one_batch(item: tuple[pl.DataFrame, pa.Array]) -> tuple[pl.DataFrame, pl.DataFrame]:
        batch, column = item
        pid = batch["prompt_id"].to_numpy().astype(np.int64)
        li = layer_index(batch["layer"].to_numpy(), layer_list)
        logits = BatchLogits(column)
        check_widths(logits.lengths, li, widths, layer_list)
        ids = _row_ids(pid, batch["position"].to_numpy(), batch["layer"].to_numpy(), SUMMARY_SEED)
        keys, group = np.unique(pid * n_layers + li, return_inverse=True)
        n_groups = keys.size
        conf = np.zeros((n_groups, 4))
        e_max = int(widths.max(initial=1))
        scores = np.zeros((n_groups, e_max))
        has = np.zeros((n_groups, e_max), dtype=bool)
        for (n_experts, top_k, score_fn), rows in signature_rows(li, signatures):
            z = logits_matrix(logits, rows, n_experts)
            g = group if rows is None else group[rows]
            per_row = _confidence_rows(z, top_k, score_fn, SUMMARY_NOISE, ids if rows is None else ids[rows])
            conf[:, 0] += np.bincount(g, minlength=n_groups)
            for col in range(3):
                conf[:, col + 1] += np.bincount(g, weights=per_row[:, col], minlength=n_groups)
            has[np.unique(g), :n_experts] = True
            for chunk in row_chunks(len(z)):
                pi_t = router_scores_t(transposed_f64(z[chunk]), score_fn)
                for e in range(n_experts):
                    scores[:, e] += np.bincount(g[chunk], weights=pi_t[e], minlength=n_groups)
        prompt_ids = keys // n_layers
        layers = layer_arr[keys % n_layers]
        conf_df = pl.DataFrame(
            {
                "prompt_id": prompt_ids, "layer": layers, "n": conf[:, 0].astype(np.int64),
                "entropy_sum": conf[:, 1], "margin_sum": conf[:, 2], "n_fragile": np.rint(conf[:, 3]).astype(np.int64),
            }
        ).cast(_CONF_SCHEMA)  # type: ignore[arg-type]  # fmt: skip
        gi, ei = np.nonzero(has)
        score_df = pl.DataFrame(
            {"prompt_id": prompt_ids[gi], "layer": layers[gi], "expert": ei, "score_sum": scores[gi, ei]}
        ).cast(_SCORE_SCHEMA)  # type: ignore[arg-type]
        return conf_df, score_df

    conf_parts: list[pl.DataFrame] = [pl.DataFrame(schema=_CONF_SCHEMA)]
    score_parts: list[pl.DataFrame] = [pl.DataFrame(schema=_SCORE_SCHEMA)]
    for conf_df, score_df in map_ordered(
        one_batch, stream_logits(store, run_id, layer_list, batch_rows=_BATCH_ROWS)
    ):
        conf_parts.append(conf_df)
        score_parts.append(score_df)
    # a prompt's rows may come in several batches (the scan is unsorted): add their sums up
    confidence = pl.concat(conf_parts).group_by("prompt_id", "layer").agg(pl.all().sum())
    scores = pl.concat(score_parts).group_by("prompt_id", "layer", "expert").agg(pl.col("score_sum").sum())
    return {"summary_confidence": confidence.to_arrow(), "summary_scores": scores.to_arrow()}


_PAIR_SCHEMA = {
    "layer": pl.Int32, "a": pl.Int32, "b": pl.Int32, "n_ab": pl.Int64, "n_a": pl.Int64, "n_b": pl.Int64,
    "n_tokens": pl.Int64,
}  # fmt: skip
_TRANSITION_SCHEMA = {
    "layer_from": pl.Int32, "layer_to": pl.Int32, "expert_from": pl.Int32, "expert_to": pl.Int32, "n": pl.Int64,
}  # fmt: skip


def build_pair_summaries(store: Store, run_id: str) -> dict[str, pa.Table]:
    """``summary_pairs``: co-activation's pair counts of every layer, as its row path counts them."""
    table = pair_table(store, run_id, store.layers(run_id), None)
    return {"summary_pairs": table.select(list(_PAIR_SCHEMA)).cast(_PAIR_SCHEMA).to_arrow()}  # type: ignore[arg-type]


def build_transition_summaries(store: Store, run_id: str) -> dict[str, pa.Table]:
    """``summary_transitions``: pathways' top-1 transition counts, as its row path counts them."""
    table = transition_table(store, run_id)
    return {"summary_transitions": table.select(list(_TRANSITION_SCHEMA)).cast(_TRANSITION_SCHEMA).to_arrow()}  # type: ignore[arg-type]


_VOCAB_SCHEMA = {"layer": pl.Int32, "token_id": pl.Int32, "expert": pl.Int32, "n": pl.Int64}

#: Routing rows (tokens × layers) per query of the vocab build. DuckDB hashes the routing side of
#: the token join (~80 B a row), so this bounds the build's memory (one query over 80M rows took 6 GiB).
_VOCAB_CHUNK_ROWS = 4_000_000


def prompt_ranges(prompt_ids: np.ndarray, rows: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Consecutive ``(first, last)`` prompt-id ranges of the sorted ``prompt_ids`` holding about ``limit`` rows each.

    A range closes once its rows reach ``limit``, so it holds at most ``limit`` + one prompt's rows.
    """
    ranges: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, n in enumerate(rows.tolist()):
        total += n
        if total >= limit or i == len(rows) - 1:
            ranges.append((int(prompt_ids[start]), int(prompt_ids[i])))
            start, total = i + 1, 0
    return ranges


def build_vocab_summaries(store: Store, run_id: str) -> dict[str, pa.Table]:
    """``summary_vocab``: top-1 routed choices per (layer, token id, expert), as vocab's row path counts them.

    Counted a range of prompts at a time (:data:`_VOCAB_CHUNK_ROWS`), then added up.
    """
    per_prompt = queries.prompt_token_counts(store, run_id)
    n_layers = max(1, store.layers(run_id).height)
    ranges = prompt_ranges(
        per_prompt["prompt_id"].to_numpy(), per_prompt["n_tokens"].to_numpy() * n_layers, _VOCAB_CHUNK_ROWS
    )
    parts = [pl.DataFrame(schema=_VOCAB_SCHEMA)]
    parts += [queries.top1_token_table(store, run_id, a, b).cast(_VOCAB_SCHEMA) for a, b in ranges]  # type: ignore[arg-type]
    table = pl.concat(parts).group_by("layer", "token_id", "expert").agg(pl.col("n").sum())
    return {"summary_vocab": table.select(list(_VOCAB_SCHEMA)).cast(_VOCAB_SCHEMA).to_arrow()}  # type: ignore[arg-type]


def build_dynamic_summaries(store: Store, run_id: str) -> dict[str, pa.Table]:
    """dynamic k's sufficient statistics at :data:`~workbench.analysis.dynamic_stats.SUMMARY_LEVELS`, every layer
    (empty tables when the run has no logits)."""
    return to_tables(k_stats(store, run_id, SUMMARY_LEVELS, store.layers(run_id)))


summaries.register(summaries.LOGITS, build_logit_summaries)
summaries.register(summaries.PAIRS, build_pair_summaries)
summaries.register(summaries.TRANSITIONS, build_transition_summaries)
summaries.register(summaries.VOCAB, build_vocab_summaries)
summaries.register(summaries.DYNAMIC, build_dynamic_summaries)
