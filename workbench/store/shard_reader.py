"""Reading one run's routing rows straight from its Parquet shards, row group by row group, in prompt order.

Why: the ``routing`` view hands rows to Python through DuckDB, which for a scan of every row of a
10M-token run costs more than the analysis itself (benchmarks/README.md, "Scaling curves"). An
analysis that needs a few columns of every row (``drift``'s expert lists) reads them here with
pyarrow instead: only the columns asked for, one row group (at most
:data:`~workbench.store.shards.ROW_GROUP_ROWS` rows) at a time, so memory stays bounded whatever
the run's size.

What it promises: the pieces of a run cover exactly the rows the ``routing`` view holds for it (the
manifest's files of that run), files ordered by their prompt-id statistics (first prompt, then
last prompt, then path) and each file's row groups in file order, which puts a run written in
prompt order back in that order however its writes were cut into parallel shards. The order is not checked here: a consumer that pairs rows of two runs checks
their keys itself. :func:`run_pieces` answers None where the view is not the raw shards (a
:meth:`~workbench.store.Store.segment_view` filters it) or a row group lacks its statistics
(not written by this store's writer), and for a store older than the shards; callers then read
through SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.store.schema import SHARDED_VERSION
from workbench.store.tables import MANIFEST

if TYPE_CHECKING:
    from workbench.store.backend import Store

__all__ = ["ShardPiece", "read_piece", "run_pieces", "same_encoding"]


@dataclass(frozen=True)
class ShardPiece:
    """One row group of one of a run's shard files, with the ranges its statistics give."""

    prompt_min: int
    prompt_max: int
    layer_min: int
    layer_max: int
    path: Path
    row_group: int
    n_rows: int
    metadata: pq.FileMetaData = field(repr=False, compare=False)  # the file's footer, read once


def run_pieces(store: Store, run_id: str) -> list[ShardPiece] | None:
    """The row groups of ``run_id``'s shards in prompt order, or None where they are not what the view reads.

    None for a segment view (its ``routing`` keeps only some positions), for a store older than the
    shards (schema v3 or below, read in place: ``routing`` is a table) and for a shard whose row
    groups lack min/max statistics of ``prompt_id`` or ``layer``. Reads only the files' footers.
    """
    if store.segment is not None or store.schema_version < SHARDED_VERSION:
        return None
    paths = store.sql(f"SELECT path FROM {MANIFEST} WHERE run_id = ? ORDER BY path", [run_id])["path"]
    files: list[list[ShardPiece]] = []
    for rel in paths.to_list():
        path = store.shard_folder / str(rel)
        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(i).path for i in range(meta.num_columns)]
        if "prompt_id" not in names or "layer" not in names:
            return None
        c_prompt, c_layer = names.index("prompt_id"), names.index("layer")
        pieces: list[ShardPiece] = []
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            if group.num_rows == 0:
                continue
            s_prompt = group.column(c_prompt).statistics
            s_layer = group.column(c_layer).statistics
            if s_prompt is None or s_layer is None or not (s_prompt.has_min_max and s_layer.has_min_max):
                return None
            pieces.append(
                ShardPiece(
                    prompt_min=int(s_prompt.min), prompt_max=int(s_prompt.max),
                    layer_min=int(s_layer.min), layer_max=int(s_layer.max),
                    path=path, row_group=g, n_rows=int(group.num_rows), metadata=meta,
                )
            )  # fmt: skip
        if pieces:
            files.append(pieces)
    files.sort(key=lambda f: (min(p.prompt_min for p in f), max(p.prompt_max for p in f), str(f[0].path)))
    return [piece for pieces in files for piece in pieces]


def read_piece(piece: ShardPiece, columns: list[str]) -> pa.Table:
    """``columns`` of one piece's rows, in the file's row order (one thread: callers parallelise across runs)."""
    shard = pq.ParquetFile(piece.path, metadata=piece.metadata)
    return shard.read_row_group(piece.row_group, columns=columns, use_threads=False)


def same_encoding(a: ShardPiece, b: ShardPiece, columns: list[str]) -> bool:
    """Whether two pieces store ``columns`` in byte-identical column chunks, so with identical values.

    A sufficient test, not a necessary one: the same values written by another writer (another
    compression, row-group size or pyarrow release) compare unequal here, and the caller decodes
    them instead. Reads only those chunks' bytes (the keys' chunks are a few KiB: their values
    repeat, and the writer dictionary-encodes them).
    """
    if a.n_rows != b.n_rows:
        return False
    for name in columns:
        span_a, span_b = _chunk(a, name), _chunk(b, name)
        if span_a is None or span_b is None or span_a[1:] != span_b[1:]:
            return False
        if _read(a.path, span_a[0], span_a[1]) != _read(b.path, span_b[0], span_b[1]):
            return False
    return True


def _chunk(piece: ShardPiece, name: str) -> tuple[int, int, str] | None:
    """(byte offset, byte length, how it is encoded) of a column's chunk in the piece, None if absent."""
    meta = piece.metadata
    group = meta.row_group(piece.row_group)
    for i in range(group.num_columns):
        col = group.column(i)
        if col.path_in_schema != name:
            continue
        start = col.data_page_offset
        if col.has_dictionary_page:  # the dictionary page comes first: its values are part of the test
            if col.dictionary_page_offset < 4:  # not a place in the file (past its magic bytes)
                return None
            start = min(start, col.dictionary_page_offset)
        elif any("DICTIONARY" in e for e in col.encodings):  # a dictionary whose page we cannot place
            return None
        encoded = f"{col.physical_type} {col.compression} {sorted(col.encodings)} {meta.schema.column(i).logical_type}"
        return int(start), int(col.total_compressed_size), encoded
    return None


def _read(path: Path, start: int, size: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(start)
        return handle.read(size)
