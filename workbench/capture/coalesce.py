"""Combine several batches' Arrow tables into one store write.

A DuckDB write smaller than a row group (122,880 rows) goes through the write-ahead log and is
rewritten and compressed again at a later checkpoint, so small writes cost twice. Measured on the
capture benchmark (benchmarks/README.md): 32k-row writes ingest ~0.5M rows/s at 91 bytes/row,
~0.5M-row writes ~2.3M rows/s at 69 bytes/row. The buffer flushes at ``max_rows`` routing rows or
``max_bytes``, whichever comes first, so memory stays bounded by a constant, never by the run.
Every flush is one transaction holding whole prompts, so resume stays exact.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

#: Four DuckDB row groups of routing rows per write.
DEFAULT_WRITE_ROWS = 4 * 122_880
DEFAULT_WRITE_BYTES = 256 * 2**20

Tables = dict[str, pa.Table | None]


class WriteBuffer:
    """Accumulate per-batch tables; hand them to ``write`` concatenated when big enough."""

    def __init__(
        self,
        write: Callable[[Tables], None],
        max_rows: int = DEFAULT_WRITE_ROWS,
        max_bytes: int = DEFAULT_WRITE_BYTES,
    ) -> None:
        self._write = write
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._pending: list[Tables] = []
        self._rows = 0
        self._bytes = 0

    def add(self, tables: Tables) -> None:
        """Buffer one batch; flush when the buffer reaches its row or byte bound."""
        self._pending.append(tables)
        routing = tables["routing"]
        assert routing is not None
        self._rows += routing.num_rows
        self._bytes += sum(t.nbytes for t in tables.values() if t is not None)
        if self._rows >= self.max_rows or self._bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered as one batch (no-op when empty)."""
        if not self._pending:
            return
        pending, self._pending, self._rows, self._bytes = self._pending, [], 0, 0
        merged: Tables = {}
        for name in pending[0]:
            parts = [p[name] for p in pending if p[name] is not None]
            merged[name] = pa.concat_tables(parts) if parts else None
        self._write(merged)
