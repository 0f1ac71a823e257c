"""Named queries for reading tokens as text: a run's tell-tale symbols, an expert's contexts and their windows.

Part of :mod:`workbench.store.queries` (its docstring gives the rules every query keeps). An
expert's "contexts" are the (prompt, position) tokens where it was selected at a layer, with the
gate weight it got there (``weights[i]`` where ``experts[i]`` is the expert).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl

    from workbench.store.backend import Store


def first_symbols(store: Store, run_id: str, limit: int = 4096) -> list[str]:
    """Up to ``limit`` token symbols of the run, whichever DuckDB reads first (no order, no full scan)."""
    df = store.sql(
        "SELECT token FROM tokens WHERE run_id = ? AND token IS NOT NULL LIMIT ?", [run_id, int(limit)]
    )
    return [str(t) for t in df["token"].to_list()]


def marked_symbols(store: Store, run_id: str, patterns: Sequence[str], limit: int = 64) -> list[str]:
    """Up to ``limit`` token symbols of the run matching any regular expression of ``patterns``.

    One scan of the run's tokens, stopping at the ``limit``-th match.
    """
    if not patterns:
        return []
    either = "|".join(f"({p})" for p in patterns)
    df = store.sql(
        "SELECT token FROM tokens WHERE run_id = ? AND regexp_matches(token, ?) LIMIT ?",
        [run_id, either, int(limit)],
    )
    return [str(t) for t in df["token"].to_list()]


_SELECTED = (
    "SELECT r.prompt_id, r.position, "
    "  r.weights[list_position(r.experts, CAST(? AS SMALLINT))] AS weight "
    "FROM routing r WHERE r.run_id = ? AND r.layer = ? AND list_contains(r.experts, CAST(? AS SMALLINT))"
)


def expert_contexts(store: Store, run_id: str, layer: int, expert: int, n: int, seed: int) -> pl.DataFrame:
    """``pick, rank, prompt_id, position, weight, n``: an expert's strongest selections, a sample, its count per prompt.

    Rows with ``pick`` ``'top'`` are the ``n`` selections of ``expert`` at ``layer`` with the highest
    gate weight (ties, and runs without weights, by prompt_id then position), ``rank`` 1.. in that
    order; ``'sample'`` rows are ``n`` drawn by a seeded hash of (prompt_id, position, ``seed``), ranked
    in draw order (the same store and seed give the same sample); ``'count'`` rows give ``n``, the
    expert's selections in each prompt (``rank``, ``position`` and ``weight`` NULL). One scan of the layer's routing rows answers all three.
    """
    top_order = "weight DESC NULLS LAST, prompt_id, position"
    sample_order = "hash(prompt_id, position, ?), prompt_id, position"
    return store.sql(
        f"WITH sel AS MATERIALIZED ({_SELECTED}) "
        f"SELECT 'top' AS pick, row_number() OVER (ORDER BY {top_order}) AS rank, prompt_id, position, weight, "
        f"  NULL::BIGINT AS n FROM (SELECT * FROM sel ORDER BY {top_order} LIMIT ?) "
        f"UNION ALL SELECT 'sample', row_number() OVER (ORDER BY {sample_order}), prompt_id, position, weight, NULL "
        f"  FROM (SELECT * FROM sel ORDER BY {sample_order} LIMIT ?) "
        "UNION ALL SELECT 'count', NULL, prompt_id, NULL, NULL, count(*) FROM sel GROUP BY prompt_id",
        [expert, run_id, layer, expert, int(n), int(seed), int(seed), int(n)],
    )


def token_windows(
    store: Store, run_id: str, prompt_ids: Sequence[int], positions: Sequence[int], before: int, after: int
) -> pl.DataFrame:
    """``prompt_id, centre, position, token_id, token``: the tokens from ``before`` before to ``after``
    after each (prompt_id, position) centre, by centre then position (a centre listed twice comes once)."""
    return store.sql(
        "SELECT DISTINCT c.prompt_id, c.centre, t.position, t.token_id, t.token "
        "FROM (SELECT unnest(?::INTEGER[]) AS prompt_id, unnest(?::INTEGER[]) AS centre) c "
        "JOIN tokens t ON t.run_id = ? AND t.prompt_id = c.prompt_id "
        "  AND t.position BETWEEN c.centre - ? AND c.centre + ? "
        "ORDER BY c.prompt_id, c.centre, t.position",
        [[int(p) for p in prompt_ids], [int(x) for x in positions], run_id, int(before), int(after)],
    )
