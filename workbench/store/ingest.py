"""Bulk, atomic ingest of one capture batch through Arrow.

Why this shape: row-wise inserts (``executemany``) run at ~800 rows/s, while registering
an Arrow table and running ``INSERT INTO t (cols) SELECT ?, cols FROM arrow`` moves
millions of rows per second. All tables of a batch go in one transaction, so a crash or
a bad table never leaves a half-written batch: a prompt is in ``prompts`` only if its
tokens and routing are too, which is what makes ``done_prompt_ids`` a safe resume point.
Routing rows go to a Parquet shard (:mod:`workbench.store.shards`) that the same transaction lists.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeAlias

import duckdb
import pyarrow as pa

from workbench.store import liveness
from workbench.store.content import hash_sql, token_ids_sql
from workbench.store.errors import StoreError
from workbench.store.shards import Shard, ShardFolder
from workbench.store.sqlutil import first
from workbench.store.tables import column_names

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl

ArrowLike: TypeAlias = "pa.Table | pl.DataFrame"

#: Columns a batch table may omit; an omitted one takes the column's default (NULL unless the schema says).
OPTIONAL_COLUMNS: dict[str, frozenset[str]] = {
    "prompts": frozenset({"label", "pair_id", "split", "meta", "content_hash"}),
    "tokens": frozenset({"nll", "segment"}),  # segment defaults to 'prompt' (schema v6)
    "routing": frozenset({"logits"}),
    "expert_stats": frozenset({"zero_frac"}),
    "evaluations": frozenset({"label", "ci_low", "ci_high", "n", "meta"}),
    "resonance": frozenset(
        {
            "span",
            "rd",
            "ftri",
            "effect",
            "attribution",
            "ci_low",
            "ci_high",
            "p",
            "q",
            "n_target",
            "n_control",
        }
    ),
}


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK and re-raise if the body fails."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def as_arrow(table: ArrowLike, name: str) -> pa.Table:
    """Accept a pyarrow Table or a polars DataFrame; anything else is an error."""
    if isinstance(table, pa.Table):
        return table
    if type(table).__module__.startswith("polars"):
        return table.to_arrow()
    raise StoreError(f"{name} must be a pyarrow.Table or polars.DataFrame, got {type(table).__name__}")


def select_list(table: str, arrow: pa.Table, *, leading: str = "run_id") -> tuple[str, str]:
    """(insert column list, select list) mapping the Arrow table onto ``table``'s columns.

    ``leading`` (the run id, or the intervention id) comes from a parameter, never from
    the Arrow table. Missing required columns and unknown extra columns are errors, so a
    typo such as ``prompt`` for ``prompt_id`` fails loudly instead of storing NULLs.
    """
    wanted = [c for c in column_names(table) if c != leading]
    present = set(arrow.column_names)
    optional = OPTIONAL_COLUMNS.get(table, frozenset())
    missing = [c for c in wanted if c not in present and c not in optional]
    extra = sorted(present - set(wanted))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        raise StoreError(f"{table} batch table: {'; '.join(parts)}. Expected columns: {wanted}")
    given = [c for c in wanted if c in present]  # an omitted optional column takes its default
    targets = ", ".join(f'"{c}"' for c in [leading, *given])
    values = ", ".join(f'"{c}"' for c in given)
    return targets, f"?, {values}"


def register(con: duckdb.DuckDBPyConnection, table: str, arrow: pa.Table) -> str:
    """Register ``arrow`` under a unique view name; the caller unregisters it."""
    view = f"_wb_in_{table}_{secrets.token_hex(4)}"
    con.register(view, arrow)
    return view


def insert_view(
    con: duckdb.DuckDBPyConnection,
    table: str,
    view: str,
    arrow: pa.Table,
    key: str,
    *,
    leading: str = "run_id",
) -> None:
    """``INSERT INTO table (cols) SELECT ?, cols FROM view`` with ``key`` as the parameter."""
    targets, values = select_list(table, arrow, leading=leading)
    con.execute(f'INSERT INTO "{table}" ({targets}) SELECT {values} FROM "{view}"', [key])


def _check_batch(con: duckdb.DuckDBPyConnection, run_id: str, views: Mapping[str, str]) -> None:
    """Refuse duplicate prompt ids (in the batch or already stored) and orphan rows."""
    prompts = views["prompts"]
    row = first(
        con,
        f'SELECT count(*) - count(DISTINCT prompt_id), count(*) FILTER (WHERE prompt_id IS NULL) FROM "{prompts}"',
    )
    if row and (row[0] or row[1]):
        raise StoreError("prompts batch table has duplicate or null prompt_id values")
    dup = first(
        con,
        f'SELECT list(prompt_id ORDER BY prompt_id)[:10] FROM "{prompts}" '
        "WHERE prompt_id IN (SELECT prompt_id FROM prompts WHERE run_id = ?)",
        [run_id],
    )
    if dup and dup[0]:
        raise StoreError(
            f"run {run_id!r} already has prompts {dup[0]} (first ten shown); a batch may only add "
            "new prompts. Skip ids from done_prompt_ids() when resuming."
        )
    for table, view in views.items():
        if table == "prompts":
            continue
        orphan = first(
            con,
            f'SELECT list(DISTINCT prompt_id)[:10] FROM "{view}" '
            f'WHERE prompt_id IS NULL OR prompt_id NOT IN (SELECT prompt_id FROM "{prompts}")',
        )
        if orphan and orphan[0] is not None and len(orphan[0]) > 0:
            raise StoreError(
                f"{table} batch table has rows for prompt ids not in this batch's prompts: {orphan[0]}"
            )


def _insert_prompts(
    con: duckdb.DuckDBPyConnection, run_id: str, views: Mapping[str, str], arrow: pa.Table
) -> None:
    """Insert the batch's prompts with ``content_hash`` computed from their text and the batch's tokens.

    A batch may bring its own ``content_hash`` (capture does); it must equal the store's, or the
    batch is refused: a wrong hash would silently pair different prompts across runs.
    """
    prompts = views["prompts"]
    tokens = views.get("tokens")
    agg = (
        token_ids_sql(f'"{tokens}"')
        if tokens
        else "SELECT NULL::INTEGER AS prompt_id, 0 AS n, 0 AS n_ids, NULL::VARCHAR AS ids WHERE FALSE"
    )
    computed = hash_sql("p", "t")
    source = f'"{prompts}" p LEFT JOIN ({agg}) t ON t.prompt_id = p.prompt_id'
    present = set(arrow.column_names)
    if "content_hash" in present:
        bad = first(
            con,
            f"SELECT list(p.prompt_id ORDER BY p.prompt_id)[:10] FROM {source} "
            f"WHERE p.content_hash IS DISTINCT FROM {computed}",
        )
        if bad and bad[0]:
            raise StoreError(
                f"prompts batch table: content_hash of prompts {bad[0]} (first ten shown) does not match "
                "their text and token ids (see workbench.store.content.prompt_content_hash); leave the "
                "column out to let the store compute it"
            )
    select_list("prompts", arrow)  # validates the columns
    cols = [c for c in column_names("prompts") if c != "run_id" and (c in present or c == "content_hash")]
    values = [computed if c == "content_hash" else f'p."{c}"' for c in cols]
    targets = ", ".join(f'"{c}"' for c in ["run_id", *cols])
    con.execute(f"INSERT INTO prompts ({targets}) SELECT ?, {', '.join(values)} FROM {source}", [run_id])


def write_batch(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    tables: Mapping[str, ArrowLike | None],
    shards: ShardFolder,
) -> None:
    """Insert one batch (prompts, tokens, routing[, expert_stats]) for ``run_id`` atomically.

    Routing rows become a shard file, written inside the transaction and listed in the manifest by
    it; if anything fails the file is removed and nothing of the batch stays. An error raised by the
    COMMIT itself keeps the files: DuckDB may have committed the batch (its checkpoint after a
    commit can fail, which invalidates the database), and a file the manifest does not list is
    removed at the next writable open anyway.
    """
    arrows = {name: as_arrow(t, name) for name, t in tables.items() if t is not None}
    for name, arrow in arrows.items():  # validate columns before touching the database
        select_list(name, arrow)
    views: dict[str, str] = {}
    written: list[Shard] = []
    committing = False
    try:
        for name, arrow in arrows.items():
            # only routing's keys go through DuckDB (its floats may be half precision, which DuckDB lacks)
            views[name] = register(con, name, arrow.select(["prompt_id"]) if name == "routing" else arrow)
        with transaction(con):
            _check_batch(con, run_id, views)
            liveness.beat(con, run_id)  # the writer is alive: in this batch's transaction, not one of its own
            if "prompts" in arrows:
                _insert_prompts(con, run_id, views, arrows["prompts"])
            for name in ("tokens", "expert_stats"):
                if name in arrows:
                    insert_view(con, name, views[name], arrows[name], run_id)
            if "routing" in arrows:
                written = shards.write(run_id, arrows["routing"])
                for shard in written:
                    shards.record(con, shard)
                shards.refresh_view(con)
            committing = True  # the body is done: an error from here on is the COMMIT's
    except BaseException as exc:
        if committing and isinstance(exc, duckdb.Error):
            raise StoreError(_commit_failed(run_id, exc)) from exc
        for shard in written:
            shards.discard(shard)
        if isinstance(exc, (duckdb.Error, pa.ArrowException, OSError)) and not isinstance(exc, StoreError):
            raise StoreError(f"batch for run {run_id!r} was rolled back, nothing was written: {exc}") from exc
        raise
    finally:
        for view in views.values():
            _unregister(con, view)


def _commit_failed(run_id: str, exc: duckdb.Error) -> str:
    """What an error raised by a batch's COMMIT means for the batch, in one line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "COMMIT succeeded" in first:  # DuckDB says so when the checkpoint after the commit failed
        done = f"batch for run {run_id!r} was committed, but DuckDB failed right after ({first})"
    else:
        done = f"batch for run {run_id!r} may or may not have been committed: DuckDB failed at the commit ({first})"
    return f"{done}; resume the run (it keeps every prompt that was committed and captures the rest)"


def _unregister(con: duckdb.DuckDBPyConnection, view: str) -> None:
    """Drop a registered Arrow view; nothing to drop once DuckDB has invalidated the database."""
    try:
        con.unregister(view)
    except duckdb.FatalException:  # the error that invalidated it is the one being raised
        return
