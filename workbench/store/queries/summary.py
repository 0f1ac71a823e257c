"""Named queries that only the per-prompt summaries answer: sums of per-token numbers computed from the logits.

Part of :mod:`workbench.store.queries` (its docstring gives the rules every query keeps). The caller
checks ``summaries.usable(store, run_id, "logits")`` first; the row path computes these numbers from
the logits itself (:mod:`workbench.analysis.confidence`, :mod:`workbench.analysis.relevance`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from workbench.store.queries.filters import in_layers

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl

    from workbench.store.backend import Store


def confidence_sums(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, n, entropy_sum, margin_sum, n_fragile``: per layer, rows with logits and the sums of router confidence."""
    clause, values = in_layers(layers)
    return store.sql(
        "SELECT layer, CAST(sum(n) AS BIGINT) AS n, sum(entropy_sum) AS entropy_sum, sum(margin_sum) AS margin_sum,"
        f" CAST(sum(n_fragile) AS BIGINT) AS n_fragile FROM summary_confidence WHERE run_id = ?{clause}"
        " GROUP BY layer ORDER BY layer",
        [run_id, *values],
    )


def label_score_sums(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, expert, score_sum``: Σ router score π per (layer, label, routed expert) of labelled prompts."""
    clause, values = in_layers(layers, "s.layer")
    return store.sql(
        "SELECT s.layer, p.label, s.expert, sum(s.score_sum) AS score_sum FROM summary_scores s"
        " JOIN prompts p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id"
        f" WHERE s.run_id = ? AND p.label IS NOT NULL{clause} GROUP BY s.layer, p.label, s.expert",
        [run_id, *values],
    )


def label_logit_rows(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, n``: routing rows with logits per (layer, label) of labelled prompts."""
    clause, values = in_layers(layers, "s.layer")
    return store.sql(
        "SELECT s.layer, p.label, CAST(sum(s.n) AS BIGINT) AS n FROM summary_confidence s"
        " JOIN prompts p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id"
        f" WHERE s.run_id = ? AND p.label IS NOT NULL{clause} GROUP BY s.layer, p.label",
        [run_id, *values],
    )


def summary_pair_counts(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, a, b, n_ab, n_a, n_b, n_tokens`` from the run's ``pairs`` summary, by layer, a, b.

    The same table as :func:`~workbench.store.queries.routing.pair_counts` counts from the rows.
    """
    clause, values = in_layers(layers)
    return store.sql(
        f"SELECT layer, a, b, n_ab, n_a, n_b, n_tokens FROM summary_pairs WHERE run_id = ?{clause}"
        " ORDER BY layer, a, b",
        [run_id, *values],
    )


def summary_transitions(store: Store, run_id: str) -> pl.DataFrame:
    """``layer_from, layer_to, expert_from, expert_to, n`` from the run's ``transitions`` summary.

    The same table as :func:`~workbench.store.queries.routing.top1_transitions` counts from the rows.
    """
    return store.sql(
        "SELECT layer_from, layer_to, expert_from, expert_to, n FROM summary_transitions WHERE run_id = ?",
        [run_id],
    )


def summary_top1_token_maxima(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, token_id, n_max, n_x`` from the run's ``vocab`` summary, sorted by layer, token id.

    The same table as :func:`~workbench.store.queries.routing.top1_token_maxima` counts from the rows.
    """
    clause, values = in_layers(layers)
    return store.sql(
        "SELECT layer, token_id, max(n) AS n_max, CAST(sum(n) AS BIGINT) AS n_x FROM summary_vocab"
        f" WHERE run_id = ?{clause} GROUP BY layer, token_id ORDER BY layer, token_id",
        [run_id, *values],
    )


def summary_top1_token_counts(store: Store, run_id: str, layer: int) -> pl.DataFrame:
    """``token_id, expert, n`` at one layer from the run's ``vocab`` summary.

    The same table as :func:`~workbench.store.queries.routing.top1_token_counts` counts from the rows.
    """
    return store.sql(
        "SELECT token_id, expert, n FROM summary_vocab WHERE run_id = ? AND layer = ?", [run_id, int(layer)]
    )


def dynamic_k_levels(store: Store, run_id: str) -> list[float]:
    """The levels p the run's ``dynamic`` summary holds (none for a run without logits)."""
    rows = store.sql("SELECT DISTINCT p FROM summary_dynamic_k WHERE run_id = ? ORDER BY p", [run_id])
    return [float(x) for x in rows["p"].to_list()]


def dynamic_k_cells(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, p, k, n, n_nll, rank_sum`` from the run's ``dynamic`` summary (label NULL included)."""
    clause, values = in_layers(layers)
    return store.sql(
        "SELECT layer, label, p, k, n, n_nll, rank_sum FROM summary_dynamic_k"
        f" WHERE run_id = ?{clause} ORDER BY layer, label NULLS FIRST, p, k",
        [run_id, *values],
    )


def dynamic_k_nll(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, rank_ss, n_prompts`` from the run's ``dynamic`` summary (label NULL included)."""
    clause, values = in_layers(layers)
    return store.sql(
        "SELECT layer, label, rank_ss, n_prompts FROM summary_dynamic_nll"
        f" WHERE run_id = ?{clause} ORDER BY layer, label NULLS FIRST",
        [run_id, *values],
    )
