"""Building a run's per-prompt summaries (``workbench.store.summaries``) from a :class:`Store`.

A mixin of :class:`workbench.store.backend.Store`: completing a run builds its summaries, and a
writable open builds the parts complete runs lack. The tables, their registry and the readers'
switch live in ``summaries``; this module only orchestrates builds under the store's lock, so
that a failing part warns and leaves the readers on the token rows instead of failing the run.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import duckdb

from workbench.store import runs as runs_mod
from workbench.store import summaries
from workbench.store.errors import StoreError

if TYPE_CHECKING:
    from workbench.store.backend import Store


class SummaryBuilds:
    """The summary-building methods of :class:`~workbench.store.backend.Store`."""

    # What it uses of Store, declared for type checkers only: Store defines each of them.
    _lock: threading.RLock
    _path: Path | None
    if TYPE_CHECKING:

        @property
        def con(self) -> duckdb.DuckDBPyConnection: ...

        def _writable(self) -> duckdb.DuckDBPyConnection: ...

    def build_summaries(self, run_id: str, parts: Iterable[str] | None = None) -> dict[str, float]:
        """(Re)build the run's per-prompt summaries (``parts``, default all); returns the seconds each part took.

        A part whose builder saw the run change while it read (another batch written) is not stored;
        the readers then keep to the token rows. Raises what a builder raises (e.g. malformed logits).
        """
        with self._lock:
            con = self._writable()
            runs_mod.status_of(con, run_id)
            if not summaries.has_tables(con):
                raise StoreError(
                    f"store {self._path} predates the summaries (schema v5); open it writable to migrate"
                )
            wanted = set(summaries.PART_TABLES) if parts is None else set(parts)
            unknown = wanted - set(summaries.PART_TABLES)
            if unknown:
                raise StoreError(
                    f"unknown summary parts {sorted(unknown)}; known: {sorted(summaries.PART_TABLES)}"
                )
            took = (
                {summaries.COUNTS: summaries.build_counts(con, run_id)} if summaries.COUNTS in wanted else {}
            )
        for part, builder in summaries.registered().items():
            if part not in wanted:
                continue
            start = time.perf_counter()
            with self._lock:
                before = summaries.fingerprint(self.con, run_id)
            with summaries.row_path():  # a builder reads the rows, never a summary it is replacing
                tables = builder(cast("Store", self), run_id)  # only Store mixes this in
            with self._lock:
                if summaries.write_part(self.con, run_id, part, tables, before, time.perf_counter() - start):
                    took[part] = time.perf_counter() - start
        return took

    def _try_build_summaries(self, run_id: str, parts: list[str] | None = None) -> None:
        """Build the run's summaries where the schema has them; a failure leaves the readers on the rows."""
        with self._lock:
            if not summaries.has_tables(self.con):
                return
        for part in parts or [
            summaries.COUNTS,
            *summaries.registered(),
        ]:  # one failing part spares the others
            try:
                self.build_summaries(run_id, [part])
            except (duckdb.Error, ValueError, KeyError, StoreError) as exc:
                warnings.warn(
                    f"run {run_id!r}: its summary part {part!r} was not built ({type(exc).__name__}: {exc}); "
                    "the analyses that read it read the token rows instead (slower, same results)",
                    stacklevel=3,
                )

    def _build_missing_summaries(self) -> None:
        """Build the summary parts that complete runs lack (a store migrated from v4 or older, or a run
        completed by a process that had not imported ``workbench.analysis``, which registers some parts)."""
        parts = [summaries.COUNTS, *summaries.registered()]
        with self._lock:
            if not summaries.has_tables(self.con):
                return
            rows = self.con.execute(
                f"SELECT r.run_id, list(b.part) FROM runs r LEFT JOIN {summaries.BUILDS} b ON b.run_id = r.run_id"
                " WHERE r.status = 'complete' GROUP BY r.run_id, r.created_at ORDER BY r.created_at, r.run_id"
            ).fetchall()
        for run_id, built in rows:
            missing = [p for p in parts if p not in set(built or ())]
            if missing:
                self._try_build_summaries(str(run_id), missing)
