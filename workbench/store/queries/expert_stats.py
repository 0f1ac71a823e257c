"""Named queries over ``expert_stats``: output norms, zero fractions and shared-expert mass.

Where the run's per-prompt summaries are valid, they are answered from ``summary_stats`` (rows,
non-NULL values, sums and the largest ``|out_norm|`` per prompt, layer and expert) instead of the rows.

Part of :mod:`workbench.store.queries` (its docstring gives the rules every query keeps).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from workbench.store.queries.filters import (
    count_rows,
    in_layers,
)
from workbench.store.summaries import usable

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl

    from workbench.store.backend import Store


# -- expert_stats ------------------------------------------------------------------------------
def n_expert_stats_rows(store: Store, run_id: str) -> int:
    """How many ``expert_stats`` rows the run has (0: captured without ``--expert-stats``)."""
    if usable(store, run_id):
        return count_rows(
            store,
            "SELECT CAST(coalesce(sum(n), 0) AS BIGINT) AS n FROM summary_stats WHERE run_id = ?",
            [run_id],
        )
    return count_rows(store, "SELECT count(*) AS n FROM expert_stats WHERE run_id = ?", [run_id])


def expert_norm_maxima(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, expert, max_out_norm, n_tokens``: the largest ``|out_norm|`` and row count per (layer, expert id)."""
    clause, values = in_layers(layers)
    if usable(store, run_id):
        return store.sql(
            "SELECT layer, expert, max(norm_absmax) AS max_out_norm, CAST(sum(n) AS BIGINT) AS n_tokens"
            f" FROM summary_stats WHERE run_id = ?{clause} GROUP BY layer, expert",
            [run_id, *values],
        )
    return store.sql(
        "SELECT layer, CAST(expert AS INTEGER) AS expert, max(abs(out_norm)) AS max_out_norm, count(*) AS n_tokens"
        f" FROM expert_stats WHERE run_id = ?{clause} GROUP BY layer, expert",
        [run_id, *values],
    )


def expert_stats_means(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, expert, mean_zero_frac, mean_out_norm, n_tokens`` per (layer, expert id) of ``expert_stats``."""
    clause, values = in_layers(layers)
    if usable(store, run_id):
        return store.sql(
            "SELECT layer, expert, sum(zero_sum) / sum(n_zero) AS mean_zero_frac,"
            " sum(norm_sum) / sum(n_norm) AS mean_out_norm, CAST(sum(n) AS BIGINT) AS n_tokens"
            f" FROM summary_stats WHERE run_id = ?{clause} GROUP BY layer, expert",
            [run_id, *values],
        )
    return store.sql(
        "SELECT layer, CAST(expert AS INTEGER) AS expert, avg(zero_frac) AS mean_zero_frac,"
        " avg(out_norm) AS mean_out_norm, count(*) AS n_tokens"
        f" FROM expert_stats WHERE run_id = ?{clause} GROUP BY layer, expert",
        [run_id, *values],
    )


def shared_norm_mass(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, expert, mass, n``: Σ out_norm and rows per (layer, label, shared expert) of labelled prompts."""
    clause, values = in_layers(layers, "s.layer")
    if usable(store, run_id):
        return store.sql(
            "SELECT s.layer, p.label, s.expert, sum(s.norm_sum) AS mass, CAST(sum(s.n) AS BIGINT) AS n"
            " FROM summary_stats s JOIN prompts p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id"
            " JOIN layers l ON l.run_id = s.run_id AND l.layer = s.layer"
            f" WHERE s.run_id = ? AND p.label IS NOT NULL AND s.expert >= l.n_experts{clause}"
            " GROUP BY s.layer, p.label, s.expert",
            [run_id, *values],
        )
    return store.sql(
        "SELECT s.layer, p.label, CAST(s.expert AS INTEGER) AS expert, sum(s.out_norm) AS mass, count(*) AS n"
        " FROM expert_stats s JOIN prompts p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id"
        " JOIN layers l ON l.run_id = s.run_id AND l.layer = s.layer"
        f" WHERE s.run_id = ? AND p.label IS NOT NULL AND s.expert >= l.n_experts{clause}"
        " GROUP BY s.layer, p.label, s.expert",
        [run_id, *values],
    )


def shared_norm_totals(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``label, shared_norm, total_norm``: Σ out_norm of shared experts and of all experts, per label."""
    clause, values = in_layers(layers, "s.layer")
    if usable(store, run_id):
        return store.sql(
            "SELECT p.label, sum(CASE WHEN s.expert >= l.n_experts THEN s.norm_sum ELSE 0 END) AS shared_norm,"
            " sum(s.norm_sum) AS total_norm"
            " FROM summary_stats s JOIN prompts p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id"
            " JOIN layers l ON l.run_id = s.run_id AND l.layer = s.layer"
            f" WHERE s.run_id = ? AND p.label IS NOT NULL{clause} GROUP BY p.label",
            [run_id, *values],
        )
    return store.sql(
        "SELECT p.label, sum(CASE WHEN s.expert >= l.n_experts THEN s.out_norm ELSE 0 END) AS shared_norm,"
        " sum(s.out_norm) AS total_norm"
        " FROM expert_stats s JOIN prompts p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id"
        " JOIN layers l ON l.run_id = s.run_id AND l.layer = s.layer"
        f" WHERE s.run_id = ? AND p.label IS NOT NULL{clause} GROUP BY p.label",
        [run_id, *values],
    )
