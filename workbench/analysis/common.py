"""Small helpers every analysis shares: which layers to read, and the SQL clause that selects them."""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from workbench.store import Store


def layer_filter(layers: Iterable[int] | None, column: str = "layer") -> tuple[str, list[int]]:
    """An ``AND column IN (?, ...)`` clause and its parameters; empty for all layers, FALSE for none."""
    if layers is None:
        return "", []
    values = [int(x) for x in layers]
    if not values:
        return " AND FALSE", []
    return f" AND {column} IN ({', '.join('?' for _ in values)})", values


def layer_info(store: Store, run_id: str, layers: Iterable[int] | None) -> pl.DataFrame:
    """The run's ``layers`` rows (n_experts, top_k, score_fn, ...), restricted to ``layers``, by layer.

    Raises ``UnknownRunError`` (listing the runs that exist) for an unknown run.
    """
    info = store.layers(run_id)
    if layers is not None:
        info = info.filter(pl.col("layer").is_in(sorted({int(x) for x in layers})))
    return info.sort("layer")
