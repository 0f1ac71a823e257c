"""Named queries for target/control contrast sets restricted to a token span (resonance maps).

Part of :mod:`workbench.store.queries` (its docstring gives the rules every query keeps).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from workbench.store.queries.filters import (
    TokenSpan,
    in_layers,
)

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl

    from workbench.store.backend import Store


# -- contrast sets over a token span -------------------------------------------------------
def _span_base(
    store: Store, run_id: str, target: str, control: str, span: TokenSpan | None, layers: Iterable[int] | None
) -> tuple[str, list[Any]]:
    """``FROM routing r JOIN prompts p ... WHERE`` the contrast set's rows in the span, and its parameters."""
    cond, cond_params = (span or TokenSpan()).condition(segmented=store.segment is not None)
    clause, values = in_layers(layers, "r.layer")
    base = (
        "FROM routing r JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id "
        f"WHERE r.run_id = ? AND p.label IN (?, ?) AND {cond}{clause}"
    )
    return base, [run_id, target, control, *cond_params, *values]


def span_token_counts(
    store: Store,
    run_id: str,
    target: str,
    control: str,
    span: TokenSpan | None = None,
    layers: Iterable[int] | None = None,
) -> pl.DataFrame:
    """``prompt_id, layer, n``: tokens in ``span`` per (prompt, layer) of the ``target``/``control`` prompts."""
    base, params = _span_base(store, run_id, target, control, span, layers)
    return store.sql(f"SELECT r.prompt_id, r.layer, count(*) AS n {base} GROUP BY ALL", params)


def span_selections(
    store: Store,
    run_id: str,
    target: str,
    control: str,
    span: TokenSpan | None = None,
    layers: Iterable[int] | None = None,
) -> pl.DataFrame:
    """``prompt_id, layer, expert, n, g``: selections and Σ gate weight per (prompt, layer, expert id) in ``span``."""
    base, params = _span_base(store, run_id, target, control, span, layers)
    return store.sql(
        "SELECT prompt_id, layer, CAST(expert AS INTEGER) AS expert, count(*) AS n, sum(weight) AS g FROM ("
        f"  SELECT r.prompt_id, r.layer, unnest(r.experts) AS expert, unnest(r.weights) AS weight {base}"
        ") GROUP BY ALL",
        params,
    )


def span_token_selections(
    store: Store,
    run_id: str,
    *,
    layer: int,
    expert: int,
    target: str,
    control: str,
    span: TokenSpan | None = None,
) -> pl.DataFrame:
    """``token_id, token, is_target, n, n_sel``: per token and class, tokens in ``span`` and how many selected ``expert``."""
    cond, cond_params = (span or TokenSpan()).condition(segmented=store.segment is not None)
    return store.sql(
        "SELECT t.token_id, any_value(t.token) AS token, p.label = ? AS is_target, count(*) AS n, "
        "  count(*) FILTER (WHERE list_contains(r.experts, ?)) AS n_sel "
        "FROM routing r "
        "JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id "
        "JOIN tokens t ON t.run_id = r.run_id AND t.prompt_id = r.prompt_id AND t.position = r.position "
        f"WHERE r.run_id = ? AND r.layer = ? AND p.label IN (?, ?) AND {cond} GROUP BY t.token_id, is_target",
        [target, expert, run_id, layer, target, control, *cond_params],
    )
