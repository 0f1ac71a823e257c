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


def marked_symbols(store: Store, run_id: str, patterns: Sequence[str], limit: int = 16) -> list[str]:
    """Up to ``limit`` token symbols of the run matching each regular expression of ``patterns``.

    Each pattern's scan stops at its ``limit``-th match, so a run whose text has spaces answers at once.
    """
    if not patterns:
        return []
    part = "(SELECT token FROM tokens WHERE run_id = ? AND regexp_matches(token, ?) LIMIT ?)"
    params: list[object] = []
    for pattern in patterns:
        params += [run_id, pattern, int(limit)]
    df = store.sql(" UNION ALL ".join([part] * len(patterns)), params)
    return [str(t) for t in df["token"].to_list()]


_SELECTED = (
    "SELECT r.prompt_id, r.position, "
    "  r.weights[list_position(r.experts, CAST(? AS SMALLINT))] AS weight "
    "FROM routing r WHERE r.run_id = ? AND r.layer = ? AND list_contains(r.experts, CAST(? AS SMALLINT))"
)


def expert_contexts(store: Store, run_id: str, layer: int, expert: int, n: int, seed: int) -> pl.DataFrame:
    """``pick, rank, prompt_id, position, weight, label``: an expert's strongest and a sample of its selections.

    ``pick`` is ``'top'`` for the ``n`` selections with the highest gate weight (ties, and runs
    without weights, by prompt_id then position) and ``'sample'`` for ``n`` drawn by a seeded hash
    of (prompt_id, position, ``seed``): the same store and seed give the same sample. ``rank``
    counts from 1 within each pick. The selections are read once (one scan of the layer's rows).
    """
    params = [expert, run_id, layer, expert]
    return store.sql(
        f"WITH sel AS MATERIALIZED ({_SELECTED}), "
        "picked AS ("
        "  SELECT 'top' AS pick, row_number() OVER (ORDER BY weight DESC NULLS LAST, prompt_id, position) AS rank,"
        "    prompt_id, position, weight FROM sel QUALIFY rank <= ? "
        "  UNION ALL "
        "  SELECT 'sample' AS pick, row_number() OVER (ORDER BY hash(prompt_id, position, ?), prompt_id, position)"
        "    AS rank, prompt_id, position, weight FROM sel QUALIFY rank <= ?"
        ") "
        "SELECT c.pick, c.rank, c.prompt_id, c.position, c.weight, p.label FROM picked c "
        "JOIN prompts p ON p.run_id = ? AND p.prompt_id = c.prompt_id ORDER BY c.pick DESC, c.rank",
        [*params, int(n), int(seed), int(n), run_id],
    )


def expert_context_labels(store: Store, run_id: str, layer: int, expert: int) -> pl.DataFrame:
    """``label, n``: how many of the expert's selections at ``layer`` fall on each prompt label (NULL too)."""
    return store.sql(
        f"SELECT p.label, count(*) AS n FROM ({_SELECTED}) s "
        "JOIN prompts p ON p.run_id = ? AND p.prompt_id = s.prompt_id GROUP BY p.label ORDER BY n DESC, p.label",
        [expert, run_id, layer, expert, run_id],
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
