"""Tiny DuckDB helpers shared by the store modules.

Why: in duckdb 2.x a result from ``con.execute()`` that has not been fetched to the end
keeps the connection busy, and the next ``con.sql()`` / ``register()`` then fails with
"connection has an unfinished result". ``fetchone()`` on a one-row result does not reach
the end, so single-row lookups go through :func:`first`, which always drains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb


def first(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None
) -> tuple[Any, ...] | None:
    """First row of ``sql`` (or None), with the result fully drained."""
    cur = con.execute(sql, list(params)) if params is not None else con.execute(sql)
    rows = cur.fetchall()
    return tuple(rows[0]) if rows else None
