"""DuckDB run store: schema v1 + migrations, atomic Arrow ingest, polars readers.

Usage::

    from workbench import store
    with store.open("runs.duckdb") as st:
        run_id = st.create_run(model=..., architecture=..., probe=..., n_experts=8,
                               top_k=2, config={...}, layers=[...])
        st.write_batch(run_id, prompts=..., tokens=..., routing=...)
        st.set_status(run_id, "complete")
        df = st.routing(run_id, layers=[1], labels=["math"])

The analyses' grouped reads (selections per prompt, top-1 counts, gate mass ...) are the named,
parameterised functions of :mod:`workbench.store.queries`, e.g. ``queries.tokens_per_layer(st, run_id)``.
"""

from __future__ import annotations

from pathlib import Path

from workbench.store.backend import Store
from workbench.store.errors import SchemaVersionError, StoreError, StoreLockedError, UnknownRunError
from workbench.store.maintenance import compact_store, copy_store, move_store, remove_store, store_size
from workbench.store.matching import PromptMatch, PromptMismatchError
from workbench.store.schema import SCHEMA_VERSION
from workbench.store.tables import RUN_STATUSES

__all__ = [
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "PromptMatch",
    "PromptMismatchError",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "StoreLockedError",
    "UnknownRunError",
    "compact_store",
    "copy_store",
    "move_store",
    "open",
    "remove_store",
    "store_size",
]


def open(path: str | Path, read_only: bool = False) -> Store:
    """Open (creating and migrating if writable) the store at ``path``."""
    return Store(path, read_only=read_only)
