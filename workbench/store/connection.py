"""Opening a DuckDB file as a store: error translation and schema check/migration.

DuckDB allows one writer *process* per file, and only while no other process has it open, or
many reading processes. Its raw errors ("IO Error: Could not set lock ...") are unhelpful, so
they become :class:`StoreLockedError` saying who holds the file, reading or writing, and what to
do; a writable open waits a while for readers (a dashboard between requests) and a read-only open
steps back while a writer waits (:mod:`workbench.store.locking`). The schema is then brought up
to date (or checked) before any use.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from workbench.store.errors import StoreError, StoreLockedError
from workbench.store.locking import is_lock_error, locked_message, waiting_writer, with_write_lock
from workbench.store.maintenance import compact_store
from workbench.store.memory import no_row_group_merges
from workbench.store.schema import SHARDED_VERSION, current_version, ensure_schema
from workbench.store.shards import ShardFolder

MEMORY = ":memory:"


def _open_file(path: Path, read_only: bool, lock_wait_s: float | None) -> duckdb.DuckDBPyConnection:
    """The DuckDB connection to ``path``: a writer waits for readers, a reader steps back for a waiting writer."""
    if read_only:
        pid = waiting_writer(path)
        if pid is not None:
            raise StoreLockedError(
                f"cannot read store {path} just now: another process (PID {pid}) is waiting to write to it "
                "(e.g. a capture starting). Try again when it has finished writing."
            )
        return duckdb.connect(str(path), read_only=True)
    return with_write_lock(path, lambda: duckdb.connect(str(path)), wait_s=lock_wait_s)


def connect(
    path: str | Path, *, read_only: bool, lock_wait_s: float | None = None
) -> tuple[duckdb.DuckDBPyConnection, Path | None, ShardFolder]:
    """Open ``path`` (or ``":memory:"``), migrate/check its schema, return (con, path, shard folder).

    A writable open held off by readers retries for ``lock_wait_s`` seconds (default
    :func:`workbench.store.locking.lock_wait_s`); one held off by a writer fails at once.

    The returned path is resolved, or ``None`` for an in-memory store (whose shards live in a
    temporary folder that the caller closes). A writable open removes shard files that no batch
    committed (a capture killed mid-write); any open refuses a store whose shard files are missing.
    A writable connection never merges row groups at a checkpoint (:func:`~workbench.store.memory.no_row_group_merges`).
    """
    if str(path) == MEMORY:
        if read_only:
            raise StoreError("an in-memory store cannot be opened read-only: it would be empty")
        con = duckdb.connect(MEMORY)
        resolved: Path | None = None
    else:
        resolved = Path(path).expanduser().resolve()
        if read_only and not resolved.exists():
            raise StoreError(
                f"no store at {resolved}: the file does not exist. Check the --db path, or "
                "run a capture first to create it."
            )
        if resolved.is_dir():
            raise StoreError(f"{resolved} is a directory; a store is a single .duckdb file")
        if not read_only:
            resolved.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = _open_file(resolved, read_only, lock_wait_s)
        except duckdb.IOException as exc:
            if is_lock_error(exc):
                raise StoreLockedError(locked_message(resolved, exc, read_only=read_only)) from exc
            raise StoreError(f"cannot open store {resolved}: {exc}") from exc
        except duckdb.ConnectionException as exc:
            if "different configuration" in str(exc):
                raise StoreError(
                    f"store {resolved} is already open in this process in the other mode "
                    f"(this open asked read_only={read_only}). Close the other Store first, "
                    "or open it with the same read_only setting."
                ) from exc
            raise StoreError(f"cannot open store {resolved}: {exc}") from exc
        except duckdb.Error as exc:
            raise StoreError(f"cannot open store {resolved}: {exc}") from exc
    shards = ShardFolder.beside(resolved)
    try:
        if not read_only:
            no_row_group_merges(con)
        shards.attach(con)
        before = current_version(con)
        ensure_schema(con, read_only=read_only, path=resolved, shards=shards)
        if resolved is not None and 0 < before < SHARDED_VERSION:
            # the routing table just moved into shards: give its blocks back to the disk
            con.close()
            compact_store(resolved)
            con = duckdb.connect(str(resolved))
            no_row_group_merges(con)
            shards.attach(con)
        if not read_only:
            shards.sweep(con)
        shards.check(con, str(resolved) if resolved is not None else "the in-memory store")
    except BaseException:
        con.close()
        shards.close()
        raise
    return con, resolved, shards
