"""Routing rows as Parquet shards beside the store file (schema v4), and the ``routing`` view over them.

Why: routing is most of a store's bytes and most of capture's write time. DuckDB has no 16-bit
float, so ``--logits fp16`` used to cost 4 bytes a logit, and its row-wise transactional insert
was the capture writer's bottleneck (benchmarks/README.md, "Writer replay benchmark"). A shard is
one write's routing rows as a zstd Parquet file written by pyarrow, with float lists stored as
IEEE half wherever that is lossless: 2 bytes per fp16 logit, and DuckDB reads them back as
``FLOAT``, so the ``routing`` view has exactly the contract's columns and types.

Layout: ``<store>.shards/<run key>/part-<uuid>.parquet``, where the run key is a hash of the run
id (run ids may hold any character). The ``routing_shards`` table is the manifest: a shard is part
of the store only once its manifest row is committed, in the same transaction as the batch's
prompts and tokens. A file without a manifest row (a crash between the two) is never read and is
removed at the next writable open. The view lists the manifest's files by paths relative to the
shard folder, which every connection puts on DuckDB's ``file_search_path``, so a store folder
can be moved or copied whole (file and ``.shards`` folder together).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.store.errors import StoreError
from workbench.store.tables import MANIFEST, column_names, column_type

__all__ = ["MANIFEST", "Shard", "ShardFolder", "run_key", "shard_table"]

#: Rows per Parquet row group: DuckDB scans row groups in parallel and skips them on prompt_id stats.
ROW_GROUP_ROWS = 122_880

#: Most files one store write is cut into, written in parallel.
WRITE_THREADS = max(1, min(4, os.cpu_count() or 1))

#: How many leading values decide that a float column is not worth testing for half precision.
_SAMPLE = 4096

#: The view's columns with the contract's types (what every reader was written against).
_VIEW_COLUMNS = tuple((name, column_type("routing", name)) for name in column_names("routing"))


@dataclass(frozen=True)
class Shard:
    """A shard file written for one run (registered in the manifest or not yet)."""

    run_id: str
    path: str  # relative to the shard folder
    n_rows: int
    n_bytes: int


def run_key(run_id: str) -> str:
    """The folder name of a run's shards: a hash, so any run id makes a safe, fixed-length name."""
    return hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def _exact_in_half(values: np.ndarray) -> bool:
    """Whether every float32 value survives float32 -> float16 -> float32 unchanged (NaN counts as equal).

    First a bit test that needs no conversion: a value whose 13 low mantissa bits are zero and whose
    exponent is in half's normal range (or which is zero) is exact, which is every value of a bf16
    model in that range. Only when some value fails it (fp16 subnormals, a fp32 model) are the values
    round-tripped, which is ~10x slower.
    """
    bits = values.view(np.uint32)
    exponent = (bits >> 23) & 0xFF
    normal = (exponent >= 127 - 14) & (exponent <= 127 + 15) & ((bits & 0x1FFF) == 0)
    if bool(np.all(normal | ((bits & 0x7FFFFFFF) == 0))):
        return True
    with np.errstate(over="ignore"):
        back = values.astype(np.float16).astype(np.float32)
    return bool(np.array_equal(back, values, equal_nan=True))


def _narrow(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A float-list column as ``list<halffloat>`` when that loses nothing, else as ``list<float>``.

    fp16 logits (``--logits fp16``) arrive as half already; weights of a 16-bit model and logits
    read back from a v3 store that were rounded to fp16 are found here, value by value.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.type == pa.list_(pa.float16()):
        return arr
    arr = arr.cast(pa.list_(pa.float32()))
    if arr.null_count == len(arr):
        return arr
    values = arr.flatten()
    if values.null_count or len(values) == 0:
        return arr
    flat = np.ascontiguousarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)
    if not _exact_in_half(flat[:_SAMPLE]) or not _exact_in_half(flat):
        return arr
    return pc.cast(arr, pa.list_(pa.float16()))


def shard_table(run_id: str, routing: pa.Table) -> pa.Table:
    """``routing`` (a batch's rows without run_id) in the shard's physical schema."""
    n = routing.num_rows
    logits = (
        routing.column("logits") if "logits" in routing.column_names else pa.nulls(n, pa.list_(pa.float32()))
    )
    cols = {
        "run_id": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([run_id])),
        "prompt_id": routing.column("prompt_id").cast(pa.int32()),
        "position": routing.column("position").cast(pa.int32()),
        "layer": routing.column("layer").cast(pa.int32()),
        "experts": routing.column("experts").cast(pa.list_(pa.int16())),
        "weights": _narrow(routing.column("weights")),
        "logits": _narrow(logits),
    }
    return pa.table(cols)


class ShardFolder:
    """The folder holding one store's routing shards, and the SQL that registers and reads them."""

    def __init__(self, root: Path, *, temporary: bool = False) -> None:
        self.root = root
        self.temporary = temporary

    @classmethod
    def beside(cls, store_path: Path | None) -> ShardFolder:
        """``<store>.shards`` next to a store file; a temporary folder for an in-memory store."""
        if store_path is None:
            return cls(Path(tempfile.mkdtemp(prefix="moe-workbench-shards-")), temporary=True)
        return cls(store_path.with_name(store_path.name + ".shards"))

    # -- per connection ------------------------------------------------------------------
    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        """Let ``con`` (and its cursors) resolve the view's relative shard paths."""
        root = str(self._searchable_root()).replace("'", "''")
        con.execute(f"SET GLOBAL file_search_path = '{root}'")

    def _searchable_root(self) -> Path:
        """The folder as DuckDB's comma-separated ``file_search_path`` can name it: a folder whose path
        holds a comma is reached through a symlink in the temporary directory."""
        if "," not in str(self.root):
            return self.root
        digest = hashlib.sha256(str(self.root).encode("utf-8", "surrogatepass")).hexdigest()[:16]
        link = Path(tempfile.gettempdir()) / f"moe-workbench-shards-{digest}"
        if link.is_symlink() and link.resolve() == self.root.resolve():
            return link
        self.root.mkdir(parents=True, exist_ok=True)
        partial = link.with_name(f"{link.name}.{uuid.uuid4().hex}")
        partial.symlink_to(self.root, target_is_directory=True)
        os.replace(partial, link)
        return link

    def check(self, con: duckdb.DuckDBPyConnection, where: str) -> None:
        """Refuse a store whose manifest lists shard files that are not there (moved without its folder)."""
        if not _has_manifest(con):
            return
        paths = [str(r[0]) for r in con.execute(f"SELECT path FROM {MANIFEST}").fetchall()]
        missing = [p for p in paths if not (self.root / p).is_file()]
        if missing:
            raise StoreError(
                f"{where} lists {len(missing)} routing shard file(s) that are missing from {self.root} "
                f"(first: {missing[0]}). A store is its .duckdb file plus the folder beside it named "
                f"{self.root.name}: copy or move them together, or restore the folder from where the "
                "file came from."
            )

    # -- writing -------------------------------------------------------------------------
    def write(self, run_id: str, routing: pa.Table) -> list[Shard]:
        """Write ``routing``'s rows for ``run_id`` as new shard files (not yet in the manifest).

        A large write is cut into up to :data:`WRITE_THREADS` files written in parallel (pyarrow
        encodes and compresses without the GIL), so the writer can use the cores a GPU host's
        compute thread leaves idle; each part keeps at least two row groups.
        """
        table = shard_table(run_id, routing)
        parts = max(1, min(WRITE_THREADS, table.num_rows // (2 * ROW_GROUP_ROWS)))
        if parts == 1:
            return [self._write_one(run_id, table)]
        step = -(-table.num_rows // parts)
        slices = [table.slice(i, step) for i in range(0, table.num_rows, step)]
        with ThreadPoolExecutor(max_workers=len(slices), thread_name_prefix="moe-workbench-shard") as pool:
            futures = [pool.submit(self._write_one, run_id, part) for part in slices]
            done: list[Shard] = []
            errors: list[BaseException] = []
            for future in futures:
                try:
                    done.append(future.result())
                except Exception as exc:  # collected: every written part is removed before re-raising
                    errors.append(exc)
        if errors:
            for shard in done:
                self.discard(shard)
            raise errors[0]
        return done

    def _write_one(self, run_id: str, table: pa.Table) -> Shard:
        rel = f"{run_key(run_id)}/part-{uuid.uuid4().hex}.parquet"
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.name + ".partial")
        pq.write_table(
            table,
            partial,
            compression="zstd",
            row_group_size=ROW_GROUP_ROWS,
            use_dictionary=["run_id", "prompt_id", "position", "layer", "experts.list.element"],
            write_statistics=["prompt_id", "position", "layer"],
        )
        os.replace(partial, final)
        return Shard(run_id=run_id, path=rel, n_rows=table.num_rows, n_bytes=final.stat().st_size)

    def record(self, con: duckdb.DuckDBPyConnection, shard: Shard) -> None:
        """Add ``shard`` to the manifest (inside the caller's transaction, which then refreshes the view)."""
        con.execute(
            f"INSERT INTO {MANIFEST} (run_id, path, n_rows, n_bytes, created_at) "
            "VALUES (?, ?, ?, ?, now()::TIMESTAMP)",
            [shard.run_id, shard.path, shard.n_rows, shard.n_bytes],
        )

    def discard(self, shard: Shard) -> None:
        """Remove a shard file whose batch was not committed."""
        (self.root / shard.path).unlink(missing_ok=True)

    def refresh_view(self, con: duckdb.DuckDBPyConnection) -> None:
        """(Re)define ``routing`` over the manifest's files (an empty, typed view when there are none)."""
        paths = [
            str(r[0])
            for r in con.execute(f"SELECT path FROM {MANIFEST} ORDER BY created_at, path").fetchall()
        ]
        cols = ", ".join(f"CAST({name} AS {typ}) AS {name}" for name, typ in _VIEW_COLUMNS)
        if paths:
            files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            source = f"read_parquet([{files}])"
            con.execute(f"CREATE OR REPLACE VIEW routing AS SELECT {cols} FROM {source}")
        else:
            nulls = ", ".join(f"CAST(NULL AS {typ}) AS {name}" for name, typ in _VIEW_COLUMNS)
            con.execute(f"CREATE OR REPLACE VIEW routing AS SELECT {nulls} WHERE FALSE")

    # -- removing ------------------------------------------------------------------------
    def unregister_run(self, con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
        """Drop a run's shards from the manifest and the view (caller's transaction); returns their paths."""
        paths = [
            str(r[0])
            for r in con.execute(f"SELECT path FROM {MANIFEST} WHERE run_id = ?", [run_id]).fetchall()
        ]
        con.execute(f"DELETE FROM {MANIFEST} WHERE run_id = ?", [run_id])
        self.refresh_view(con)
        return paths

    def remove(self, paths: list[str]) -> None:
        """Delete shard files (after the manifest no longer lists them) and folders left empty."""
        for rel in paths:
            path = self.root / rel
            path.unlink(missing_ok=True)
            _remove_if_empty(path.parent)

    def sweep(self, con: duckdb.DuckDBPyConnection) -> int:
        """Delete files under the folder that the manifest does not list (a batch that never committed)."""
        if not self.root.is_dir() or not _has_manifest(con):
            return 0
        listed = {str(r[0]) for r in con.execute(f"SELECT path FROM {MANIFEST}").fetchall()}
        removed = 0
        for path in sorted(self.root.glob("*/*")):
            if path.is_file() and path.relative_to(self.root).as_posix() not in listed:
                path.unlink()
                removed += 1
                _remove_if_empty(path.parent)
        return removed

    def close(self) -> None:
        """Delete a temporary (in-memory store's) folder; a file store's folder stays."""
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)


def _has_manifest(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = ?",
        [MANIFEST],
    ).fetchone()
    return bool(row and row[0])


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (or already gone)
        return
