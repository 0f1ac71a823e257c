"""Whole-run and whole-store operations: Parquet export, deletion, copying a store.

Export exists so a run can leave DuckDB (share it, load it in another tool) with the
same column names as the store; deletion removes every row a run owns in one
transaction, so a store never holds half a run.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import duckdb

from workbench.store import summaries
from workbench.store.errors import StoreError
from workbench.store.ingest import transaction
from workbench.store.readers import select_cols
from workbench.store.schema import SCHEMA_VERSION
from workbench.store.shards import MANIFEST, Shard, ShardFolder, run_key
from workbench.store.tables import ORDER_BY, VIEWS, column_names

#: Tables holding rows keyed by run_id (evaluations hang off interventions instead).
RUN_TABLES: tuple[str, ...] = (
    "runs",
    "layers",
    "prompts",
    "tokens",
    "routing",
    "expert_stats",
    "interventions",
    "resonance",
)

_RUN_INTERVENTIONS = "intervention_id IN (SELECT intervention_id FROM interventions WHERE run_id = ?)"


def export_parquet(con: duckdb.DuckDBPyConnection, run_id: str, out_dir: str | Path) -> list[Path]:
    """Write ``<out_dir>/<table>.parquet`` for every table, restricted to ``run_id``.

    Files are written even when a table has no rows for the run (they then carry just the
    schema), so a reader can rely on all eight being there. ``run_id`` is kept as a column
    and JSON columns are written as strings. DuckDB streams each COPY, so memory stays
    bounded however large the run is.
    """
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for table in (*RUN_TABLES, "evaluations"):
        where = _RUN_INTERVENTIONS if table == "evaluations" else "run_id = ?"
        sql = f"SELECT {select_cols(table, exclude=())} FROM {table} WHERE {where} ORDER BY {ORDER_BY[table]}"
        target = out / f"{table}.parquet"
        con.sql(sql, params=[run_id]).write_parquet(str(target))
        written.append(target)
    return written


def delete_run(con: duckdb.DuckDBPyConnection, run_id: str, shards: ShardFolder) -> None:
    """Delete a run and everything that belongs to it (including its evaluations and routing shards).

    The shard files go after the transaction commits: a crash in between leaves unlisted files,
    which the next writable open removes, never a listed file that is gone.
    """
    with transaction(con):
        con.execute(f"DELETE FROM evaluations WHERE {_RUN_INTERVENTIONS}", [run_id])
        for table in reversed(RUN_TABLES):
            if table not in VIEWS:
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        if summaries.has_tables(con):
            summaries.drop_run(con, run_id)
        paths = shards.unregister_run(con, run_id)
    shards.remove(paths)


def copy_store(src: str | Path, dst: str | Path) -> Path:
    """Copy the store file ``src`` to ``dst`` with its routing shards (``<file>.shards``), for a scratch copy.

    A store is its DuckDB file plus the shard folder beside it; copying the file alone gives a store
    that refuses to open (it lists shards it cannot find). No process may be writing ``src``.
    """
    source, target = Path(src).expanduser(), Path(dst).expanduser()
    if target.exists():
        raise FileExistsError(f"{target} exists; copy_store never overwrites a store")
    shutil.copyfile(source, target)
    folder = ShardFolder.beside(source.resolve()).root
    if folder.is_dir():
        shutil.copytree(folder, ShardFolder.beside(target.resolve()).root)
    return target


def move_store(src: str | Path, dst: str | Path) -> Path:
    """Rename the store file ``src`` to ``dst`` together with its shard folder (e.g. a finished build)."""
    source, target = Path(src).expanduser(), Path(dst).expanduser()
    folder = ShardFolder.beside(source.resolve()).root
    new_folder = ShardFolder.beside(target.resolve()).root
    if new_folder.exists():
        shutil.rmtree(new_folder)
    if folder.is_dir():
        folder.replace(new_folder)
    source.replace(target)
    return target


def remove_store(path: str | Path) -> None:
    """Delete a store: its file, its write-ahead log and its shard folder (missing parts are fine)."""
    file = Path(path).expanduser()
    file.unlink(missing_ok=True)
    file.with_name(file.name + ".wal").unlink(missing_ok=True)
    shutil.rmtree(ShardFolder.beside(file.resolve()).root, ignore_errors=True)


def compact_store(path: str | Path) -> int:
    """Rewrite the store file without its free blocks; returns the bytes saved.

    DuckDB reuses freed blocks but never shrinks a file, so a store whose routing table moved into
    shards (the v4 migration) keeps its old size until it is rewritten. The copy goes to a sibling
    file that replaces the original only once complete; no connection to ``path`` may be open.
    """
    file = Path(path).expanduser().resolve()
    tmp = file.with_name(file.name + ".compacting")
    tmp.unlink(missing_ok=True)
    before = file.stat().st_size
    con = duckdb.connect(":memory:")
    try:
        ShardFolder.beside(file).attach(con)  # the routing view is re-bound in the copy
        con.execute("ATTACH ? AS src (READ_ONLY)", [str(file)])
        con.execute("ATTACH ? AS dst", [str(tmp)])
        con.execute("COPY FROM DATABASE src TO dst")
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()
    tmp.replace(file)
    return before - file.stat().st_size


#: The per-run tables whose rows :func:`absorb_run` copies (routing comes as shard files).
ABSORBED_TABLES = ("prompts", "tokens", "expert_stats")


def absorb_run(con: duckdb.DuckDBPyConnection, shards: ShardFolder, source: Path, run_id: str) -> int:
    """Take every row of ``run_id`` from the store file ``source`` into this one; returns the prompts moved.

    Why: a data-parallel rank writes its share to its own store; moving its prompts, tokens and
    expert stats in one SQL statement each and linking (or copying) its shard files costs a fraction
    of reading its routing back and writing it again. One transaction: on any error nothing of the
    source's run stays, and the linked files are removed. The run must already exist here, and hold
    none of the source's prompts (a :class:`StoreError` says so).
    """
    src = ShardFolder.beside(source.resolve())
    con.execute("ATTACH ? AS wb_src (READ_ONLY)", [str(source)])
    linked: list[Shard] = []
    try:
        version = con.execute("SELECT max(version) FROM wb_src.schema_version").fetchall()[0][0]
        if version != SCHEMA_VERSION:
            raise StoreError(f"{source} has store schema v{version}; absorbing needs v{SCHEMA_VERSION}")
        with transaction(con):
            overlap = con.execute(
                "SELECT count(*) FROM wb_src.prompts s JOIN prompts p USING (run_id, prompt_id) WHERE s.run_id = ?",
                [run_id],
            ).fetchall()[0][0]
            if overlap:
                raise StoreError(f"run {run_id!r} already holds {overlap} of the prompts of {source}")
            for table in ABSORBED_TABLES:
                cols = ", ".join(f'"{c}"' for c in column_names(table))
                con.execute(
                    f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM wb_src."{table}" WHERE run_id = ?',
                    [run_id],
                )
            files = con.execute(
                f"SELECT path, n_rows, n_bytes FROM wb_src.{MANIFEST} WHERE run_id = ? ORDER BY created_at, path",
                [run_id],
            ).fetchall()
            for path, n_rows, n_bytes in files:
                rel = f"{run_key(run_id)}/part-{uuid.uuid4().hex}.parquet"
                target = shards.root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src.root / path, target)
                except OSError:  # another file system, or no hard links: copy
                    shutil.copyfile(src.root / path, target)
                shard = Shard(run_id=run_id, path=rel, n_rows=int(n_rows), n_bytes=int(n_bytes))
                linked.append(shard)
                shards.record(con, shard)
            shards.refresh_view(con)
            moved = con.execute("SELECT count(*) FROM wb_src.prompts WHERE run_id = ?", [run_id]).fetchall()[
                0
            ][0]
    except BaseException:
        for shard in linked:
            shards.discard(shard)
        raise
    finally:
        con.execute("DETACH wb_src")
    return int(moved)


def store_size(path: str | Path) -> int:
    """Bytes on disk of a store: its file, its write-ahead log and every routing shard."""
    file = Path(path).expanduser()
    parts = [file, file.with_name(file.name + ".wal")]
    total = sum(p.stat().st_size for p in parts if p.exists())
    folder = ShardFolder.beside(file.resolve()).root
    return total + sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
