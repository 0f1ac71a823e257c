"""Opening a DuckDB file as a store: error translation and schema check/migration.

DuckDB allows one writer *process* per file and, while it writes, no readers from other
processes. Its raw errors ("IO Error: Could not set lock ...") are unhelpful to a user
whose capture is still running, so they are turned into :class:`StoreLockedError` with
advice here, and the schema is brought up to date (or checked) before any use.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from workbench.store.errors import StoreError, StoreLockedError
from workbench.store.maintenance import compact_store
from workbench.store.schema import SHARDED_VERSION, current_version, ensure_schema
from workbench.store.shards import ShardFolder

MEMORY = ":memory:"


def _lock_message(path: Path, exc: Exception) -> str:
    pid = re.search(r"PID (\d+)", str(exc))
    who = f"another process (PID {pid.group(1)})" if pid else "another process"
    return (
        f"cannot open store {path}: {who} has it open for writing (DuckDB allows one "
        "writer process and no readers from other processes while it writes). Wait for "
        "that process (e.g. a running capture) to finish, or use another file with --db."
    )


def connect(
    path: str | Path, *, read_only: bool
) -> tuple[duckdb.DuckDBPyConnection, Path | None, ShardFolder]:
    """Open ``path`` (or ``":memory:"``), migrate/check its schema, return (con, path, shard folder).

    The returned path is resolved, or ``None`` for an in-memory store (whose shards live in a
    temporary folder that the caller closes). A writable open removes shard files that no batch
    committed (a capture killed mid-write); any open refuses a store whose shard files are missing.
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
            con = duckdb.connect(str(resolved), read_only=read_only)
        except duckdb.IOException as exc:
            if "Could not set lock" in str(exc):
                raise StoreLockedError(_lock_message(resolved, exc)) from exc
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
        shards.attach(con)
        before = current_version(con)
        ensure_schema(con, read_only=read_only, path=resolved, shards=shards)
        if resolved is not None and 0 < before < SHARDED_VERSION:
            # the routing table just moved into shards: give its blocks back to the disk
            con.close()
            compact_store(resolved)
            con = duckdb.connect(str(resolved))
            shards.attach(con)
        if not read_only:
            shards.sweep(con)
        shards.check(con, str(resolved) if resolved is not None else "the in-memory store")
    except BaseException:
        con.close()
        shards.close()
        raise
    return con, resolved, shards
