"""A bound on DuckDB's memory while a capture writes (issue 15: memory bounded by the batch).

DuckDB keeps every block it has written in its buffer pool until its ``memory_limit`` (80% of
RAM by default) forces an eviction. A capture appends prompts and tokens for the whole run, so
without a tighter limit the process grows with the run, not with the batch: measured on a tiny
model at 60,000 prompts, DuckDB's cached table blocks were the one part of the resident set that
kept growing. The written blocks are clean (on disk), so evicting them costs the writer nothing;
queries after the capture read them back as usual.
"""

from __future__ import annotations

import re

import duckdb

from workbench.store.errors import StoreError

__all__ = ["MIN_MEMORY_MIB", "no_row_group_merges", "restore_memory_limit", "set_memory_limit"]

_SIZE = re.compile(r"[0-9]+(\.[0-9]+)? ?[KMGT]?i?B")

#: below this DuckDB cannot hold one coalesced write's prompts and tokens (measured: 16 MiB fails)
MIN_MEMORY_MIB = 32


def _setting(con: duckdb.DuckDBPyConnection) -> str:
    return str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])


def set_memory_limit(con: duckdb.DuckDBPyConnection, mib: int) -> str:
    """Set DuckDB's ``memory_limit`` to ``mib`` MiB; returns the limit it replaced, for :func:`restore`."""
    if isinstance(mib, bool) or not isinstance(mib, int) or mib < MIN_MEMORY_MIB:
        raise StoreError(
            f"a store memory limit must be a whole number of MiB >= {MIN_MEMORY_MIB}, got {mib!r}"
        )
    before = _setting(con)
    con.execute(f"SET memory_limit = '{int(mib)}MiB'")  # an int, never user text
    return before


def restore_memory_limit(con: duckdb.DuckDBPyConnection, before: str) -> None:
    """Put back the limit :func:`set_memory_limit` replaced.

    The default limit comes back exactly (``RESET``); a limit someone set by hand comes back as
    DuckDB prints it, to 0.1 GiB.
    """
    con.execute("RESET memory_limit")
    if _setting(con) != before and _SIZE.fullmatch(before):
        con.execute(f"SET memory_limit = '{before}'")  # DuckDB's own text, checked by _SIZE


def no_row_group_merges(con: duckdb.DuckDBPyConnection) -> None:
    """Stop DuckDB from merging small row groups when it checkpoints (``max_vacuum_tasks = 0``).

    Why: after each checkpoint DuckDB appends into a new row group, and the next checkpoint's
    vacuum merges that small row group into the one before, rewriting both. A capture writes far
    less than a row group (122,880 rows) between two checkpoints (one per 16 MiB of log), so every
    checkpoint rewrote the ``prompts`` row group that holds the run's prompts so far, texts
    included: its memory grew with the run. With 1 MB prompt texts it passed the 256 MiB store
    limit at about 650 prompts and DuckDB invalidated the database ("failed to pin block"). Without
    merges a checkpoint writes only the rows since the last one. What it costs: a table gets one
    row group per checkpoint rather than full ones, and rows deleted from part of a row group keep
    their space until the store is compacted (``compact_store``); whole row groups deleted (a
    deleted run's) are freed as before.
    """
    con.execute("SET max_vacuum_tasks = 0")
