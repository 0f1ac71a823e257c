"""The store's schema versions and the migration registry that moves a store from one to the next.

The tables and columns themselves (the public contract) are declared in :mod:`workbench.store.tables`.
They only ever change through a new migration registered here, never by editing a version's
definition in place.

Design notes
------------
* The big tables (``tokens``, ``routing``, ``expert_stats``) deliberately have no
  PRIMARY KEY and no indexes: DuckDB maintains ART indexes row by row, which slows
  bulk Arrow ingest by an order of magnitude. Uniqueness of ``(run_id, prompt_id)`` is
  checked by the writer per batch instead (see ``ingest.py``).
* ``runs.status`` is one of :data:`RUN_STATUSES`. When a run fails, the error message
  is kept **inside** ``runs.config`` under the key ``"error"`` (so the ``runs`` columns
  stay exactly the contract's); ``Store.run()`` also surfaces it as ``error``.
* ``expert_stats`` rows for a model's always-on shared experts are *pseudo-experts* with
  ``expert = n_experts + s`` (s = 0..n_shared-1, see ``layers``), so they never collide with a
  routed expert id and the table keeps exactly the contract's columns.
* Versions: an empty file is version 0. Migration ``v`` turns a version ``v-1`` store
  into a version ``v`` one. Pending migrations run in one transaction when a store is
  opened writable; ``schema_version`` gets one row per applied version.
* v2 adds ``resonance``: stored resonance maps (docs/methods.md §5), one row per (map, layer,
  expert). The v1 tables are unchanged.
* v3 adds ``prompts.content_hash``: SHA-256 of each prompt's text and token ids
  (:mod:`workbench.store.content`), what comparisons of two runs match prompts on. The
  migration computes it for stored prompts from ``prompts.text`` and ``tokens.token_id``;
  a prompt whose tokens are incomplete keeps NULL (unknown; comparisons refuse it).
* v4 moves ``routing`` out of DuckDB into Parquet shards beside the file (:mod:`workbench.store.shards`):
  ``routing_shards`` is their manifest and ``routing`` becomes a view with the contract's columns and
  types, so every reader's SQL is unchanged. The migration writes each run's rows to shards (float
  lists as IEEE half where that is lossless, e.g. logits captured with ``--logits fp16``) and drops
  the table. Migrations get the store's :class:`~workbench.store.shards.ShardFolder` for that.
* v5 adds the per-prompt summaries of :mod:`workbench.store.summaries`: ``summary_builds`` (what each
  summary part of a run was built from) and the ``summary_*`` tables (sums per prompt, layer and
  expert that the analyses read instead of the token rows). The migration only creates them; the
  next writable open builds them for every complete run (``connection.py``).
* v6 adds ``tokens.segment`` (``'prompt'`` or ``'response'``, for captures of generated text) and the
  capturing process on ``runs`` (``pid``, ``host``, ``heartbeat_at``: a dead capture reads ``interrupted``).
* v7 adds the tables of the ``vocab`` and ``dynamic`` summary parts; like v5, the migration only
  creates them and the next writable open builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from workbench.store.content import hash_sql, token_ids_sql
from workbench.store.errors import SchemaVersionError, StoreError
from workbench.store.sqlutil import first
from workbench.store.tables import COLUMN_DEFAULTS, COLUMNS_ADDED, SCHEMA_ADDED, SCHEMA_V1

if TYPE_CHECKING:  # the shard folder builds on this module's names; migrations only receive one
    from workbench.store.shards import Shard, ShardFolder

#: The schema version this release of moe-workbench writes.
SCHEMA_VERSION = 7

#: The first version that keeps routing in shards (what a migration from below it compacts the file for).
SHARDED_VERSION = 4

#: A migration gets the open connection (inside the upgrade's transaction) and the store's shard folder.
Migration = Callable[[duckdb.DuckDBPyConnection, "ShardFolder"], None]

#: Ordered registry: target version -> function that upgrades a store from version-1.
MIGRATIONS: dict[int, Migration] = {}


def migration(version: int) -> Callable[[Migration], Migration]:
    """Decorator registering ``fn`` as the migration that produces ``version``."""

    def register(fn: Migration) -> Migration:
        if version in MIGRATIONS:
            raise ValueError(f"migration to schema v{version} is already registered")
        MIGRATIONS[version] = fn
        return fn

    return register


@migration(1)
def _create_v1(con: duckdb.DuckDBPyConnection, shards: ShardFolder) -> None:
    """v0 (empty file) -> v1: create every contract table."""
    for table, columns in SCHEMA_V1.items():
        cols = ", ".join(f'"{name}" {typ}' for name, typ in columns)
        con.execute(f'CREATE TABLE "{table}" ({cols})')


@migration(2)
def _add_resonance(con: duckdb.DuckDBPyConnection, shards: ShardFolder) -> None:
    """v1 -> v2: add the ``resonance`` table (stored resonance maps)."""
    for table, columns in SCHEMA_ADDED[2].items():
        cols = ", ".join(f'"{name}" {typ}' for name, typ in columns)
        con.execute(f'CREATE TABLE "{table}" ({cols})')


@migration(3)
def _add_content_hash(con: duckdb.DuckDBPyConnection, shards: ShardFolder) -> None:
    """v2 -> v3: add ``prompts.content_hash`` and fill it from the stored text and token ids."""
    for table, columns in COLUMNS_ADDED[3].items():
        for name, typ in columns:
            con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {typ}')
    agg = token_ids_sql("tokens", keys="run_id, prompt_id")
    con.execute(
        f"UPDATE prompts SET content_hash = h.hash FROM ("
        f" SELECT p.run_id, p.prompt_id, {hash_sql('p', 't')} AS hash"
        f" FROM prompts p LEFT JOIN ({agg}) t ON t.run_id = p.run_id AND t.prompt_id = p.prompt_id"
        ") h WHERE prompts.run_id = h.run_id AND prompts.prompt_id = h.prompt_id"
    )


#: Routing rows per shard written by the v4 migration (one capture write's worth).
MIGRATION_SHARD_ROWS = 4 * 122_880


@migration(4)
def _routing_to_shards(con: duckdb.DuckDBPyConnection, shards: ShardFolder) -> None:
    """v3 -> v4: move each run's routing rows into Parquet shards, then make ``routing`` a view over them."""
    for table, columns in SCHEMA_ADDED[4].items():
        cols = ", ".join(f'"{name}" {typ}' for name, typ in columns)
        con.execute(f'CREATE TABLE "{table}" ({cols})')
    run_ids = [
        str(r[0]) for r in con.execute("SELECT DISTINCT run_id FROM routing ORDER BY run_id").fetchall()
    ]
    for run_id in run_ids:
        reader = con.sql(
            "SELECT prompt_id, position, layer, experts, weights, logits FROM routing "
            "WHERE run_id = ? ORDER BY prompt_id, position, layer",
            params=[run_id],
        ).to_arrow_reader(MIGRATION_SHARD_ROWS)
        written: list[Shard] = []
        pending: list[pa.RecordBatch] = []
        rows = 0
        for batch in reader:  # one shard per MIGRATION_SHARD_ROWS rows: memory bounded by a shard
            pending.append(batch)
            rows += batch.num_rows
            if rows >= MIGRATION_SHARD_ROWS:
                written += shards.write(run_id, pa.Table.from_batches(pending))
                pending, rows = [], 0
        reader.close()  # DuckDB takes no other statement while a result is unfinished
        if pending:
            written += shards.write(run_id, pa.Table.from_batches(pending))
        for shard in written:
            shards.record(con, shard)
    con.execute("DROP TABLE routing")
    shards.refresh_view(con)


@migration(5)
def _add_summaries(con: duckdb.DuckDBPyConnection, shards: ShardFolder) -> None:
    """v4 -> v5: add the per-prompt summary tables (built for complete runs at the next writable open)."""
    for table, columns in SCHEMA_ADDED[5].items():
        cols = ", ".join(f'"{name}" {typ}' for name, typ in columns)
        con.execute(f'CREATE TABLE "{table}" ({cols})')


@migration(6)
def _add_segment_and_heartbeat(con: duckdb.DuckDBPyConnection, shards: ShardFolder) -> None:
    """v5 -> v6: ``tokens.segment`` (every stored token was read from a prompt) and the runs' capture process."""
    for table, columns in COLUMNS_ADDED[6].items():
        for name, typ in columns:
            default = COLUMN_DEFAULTS.get((table, name))
            con.execute(
                f'ALTER TABLE "{table}" ADD COLUMN "{name}" {typ}'
                + (f" DEFAULT {default}" if default else "")
            )


@migration(7)
def _add_token_summaries(con: duckdb.DuckDBPyConnection, shards: ShardFolder) -> None:
    """v6 -> v7: the ``vocab`` and ``dynamic`` summary parts' tables (built at the next writable open)."""
    for table, columns in SCHEMA_ADDED[7].items():
        cols = ", ".join(f'"{name}" {typ}' for name, typ in columns)
        con.execute(f'CREATE TABLE "{table}" ({cols})')


def latest_version() -> int:
    """Highest version the registered migrations reach (what this code expects)."""
    versions = sorted(MIGRATIONS)
    if versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"migration registry has gaps: {versions}; expected 1..{len(versions)}")
    return versions[-1] if versions else 0


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """Schema version recorded in the open file; 0 when it has no ``schema_version``."""
    found = first(
        con,
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = 'schema_version'",
    )
    if not found or not found[0]:
        return 0
    row = first(con, "SELECT max(version) FROM schema_version")
    return int(row[0]) if row and row[0] is not None else 0


def _describe(path: Path | None) -> str:
    return str(path) if path is not None else "the in-memory store"


def ensure_schema(
    con: duckdb.DuckDBPyConnection, *, read_only: bool, path: Path | None, shards: ShardFolder
) -> int:
    """Bring the store to :func:`latest_version` (writable) or check it is there (read-only).

    Returns the version the store is at afterwards. Raises :class:`SchemaVersionError`
    when the file is newer than this code, or when a read-only open finds an older one.
    """
    target = latest_version()
    have = current_version(con)
    where = _describe(path)
    if have > target:
        raise SchemaVersionError(
            f"{where} has store schema v{have}, but this moe-workbench only knows up to "
            f"v{target}. Upgrade moe-workbench (pip install -U moe-workbench) to open it."
        )
    if have == target:
        return have
    if read_only:
        raise SchemaVersionError(
            f"{where} has store schema v{have}, older than v{target} used by this "
            "moe-workbench. Open it writable once (read_only=False) to migrate it, then "
            'read-only opens will work, e.g. python -c "import workbench.store as s; '
            f's.open({str(path)!r}).close()" (with no other process using the file).'
        )
    con.execute("BEGIN TRANSACTION")
    version = have
    try:
        for version in range(have + 1, target + 1):
            MIGRATIONS[version](con, shards)
            con.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                [version, datetime.now(timezone.utc).replace(tzinfo=None)],
            )
        con.execute("COMMIT")
    except Exception as exc:
        con.execute("ROLLBACK")
        raise StoreError(
            f"migrating {where} from schema v{have} to v{target} failed at v{version}: {exc}. "
            "The file was left unchanged."
        ) from exc
    return target
