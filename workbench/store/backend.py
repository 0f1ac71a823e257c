"""`Store`: the one object the rest of the workbench uses to read and write a run store.

It owns a single DuckDB connection (one writer process per file; see
``connection.py``), serialises its own calls with a lock so a capture thread and the
main thread can share it, and delegates the SQL to small modules: ``runs`` (life
cycle), ``ingest`` (atomic Arrow batches), ``readers`` (polars out and streams), ``maintenance``
(export, delete), ``summary_builds`` (per-prompt summaries when a run completes).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import duckdb

from workbench.store import effects, ingest, liveness, maintenance, matching, readers, segments
from workbench.store import runs as runs_mod
from workbench.store.connection import connect
from workbench.store.errors import StoreError
from workbench.store.memory import restore_memory_limit, set_memory_limit
from workbench.store.readers import Query
from workbench.store.schema import current_version
from workbench.store.summary_builds import SummaryBuilds

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl
    import pyarrow as pa


_OPEN: weakref.WeakSet[Store] = weakref.WeakSet()
"""Every Store of this process that was opened (closed ones are skipped where it matters)."""


class Store(SummaryBuilds):
    """A DuckDB file holding many capture runs (schema: ``workbench.store.schema``)."""

    def __init__(
        self, path: str | Path, read_only: bool = False, *, lock_wait_s: float | None = None
    ) -> None:
        """Open ``path``; a writable open waits up to ``lock_wait_s`` s for readers in other processes
        (default ``$MOE_WORKBENCH_LOCK_WAIT`` or 30 s: ``workbench.store.locking``)."""
        self._conn, self._path, self._shards = connect(path, read_only=read_only, lock_wait_s=lock_wait_s)
        # an in-memory store's temporary shard folder goes even when the Store is dropped unclosed
        weakref.finalize(self, self._shards.close)
        self._read_only = read_only
        self._lock = threading.RLock()
        self._closed = False
        #: the token segment this store object reads ('prompt' or 'response'), None for all (:meth:`segment_view`)
        self.segment: str | None = None
        self._view_of: Store | None = None
        _OPEN.add(self)
        if not read_only:
            self._build_missing_summaries()

    @staticmethod
    def held_read_only(path: str | Path) -> bool:
        """Whether a read-only :class:`Store` of this process has ``path`` open (``wb.open`` in a notebook).

        DuckDB lets one process open a file in one mode only, so a capture into it would fail; the
        capture asks first, before minutes of model loading (capture/engine.py).
        """
        resolved = Path(path).expanduser().resolve()
        return any(s._read_only and not s._closed and s._path == resolved for s in list(_OPEN))

    @classmethod
    def open(cls, path: str | Path, read_only: bool = False) -> Store:
        """Same as ``Store(path, read_only)``; reads well at call sites."""
        return cls(path, read_only=read_only)

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "writable"
        if self.segment is not None:
            mode = f"{self.segment} tokens only"
        return f"Store({str(self._path or ':memory:')!r}, {mode}{', closed' if self._closed else ''})"

    def close(self) -> None:
        """Close the connection (idempotent); releases the file lock for other processes.

        A segment view closes only its own cursor; the store it came from stays open.
        """
        with self._lock:
            if not self._closed:
                self._conn.close()
                if self._view_of is None:
                    self._shards.close()
                self._closed = True

    def segment_view(self, segment: str) -> Store:
        """This store reading only the tokens of ``segment`` ('prompt' or 'response'), on its own cursor.

        Every reader, named query and analysis given the view reads the segment's tokens, routing rows
        and expert stats alone (:mod:`workbench.store.segments`), and never the per-prompt summaries,
        which sum over all tokens. The view only reads; close it when done (the store stays open).
        """
        chosen = segments.parse_segment(segment)
        if chosen is None:
            raise ValueError(
                "a segment view reads 'prompt' or 'response' tokens; for all of them use the store"
            )
        with self._lock:
            cursor = self._cursor(chosen)
        view = Store.__new__(Store)
        view._conn, view._path, view._shards = cursor, self._path, self._shards
        view._read_only, view._lock, view._closed = True, self._lock, False
        view.segment, view._view_of = chosen, self
        return view

    @property
    def path(self) -> Path | None:
        """Resolved file path, or None for ``":memory:"``."""
        return self._path

    @property
    def shard_folder(self) -> Path:
        """Where this store keeps its routing shards (``<file>.shards``; a temporary folder in memory)."""
        return self._shards.root

    @property
    def read_only(self) -> bool:
        """Whether this store was opened read-only."""
        return self._read_only

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The underlying DuckDB connection, for ad-hoc SQL (prefer :meth:`sql`)."""
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        return self._conn

    @property
    def schema_version(self) -> int:
        """Schema version recorded in the file."""
        with self._lock:
            return current_version(self.con)

    @contextmanager
    def memory_limit(self, mib: int) -> Iterator[None]:
        """Bound DuckDB's memory to ``mib`` MiB for the block, restoring the old limit in ``finally``.

        Capture writes under it, so that DuckDB's cache of the blocks it wrote does not grow with
        the run (``workbench/store/memory.py``).
        """
        with self._lock:
            before = set_memory_limit(self.con, mib)
        try:
            yield
        finally:
            with self._lock:
                if not self._closed:
                    # an invalidated database has no limit to restore (its error is the one propagating)
                    with suppress(duckdb.FatalException):
                        restore_memory_limit(self._conn, before)

    def _cursor(self, segment: str | None = None) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the same database, seeing ``segment`` (default: this store's) alone."""
        cursor = self.con.cursor()
        segment = segment or self.segment
        if segment is not None:  # a cursor does not see its parent's temporary views: attach them again
            try:
                segments.attach_segment_views(cursor, segment)
            except BaseException:
                cursor.close()
                raise
        return cursor

    def _writable(self) -> duckdb.DuckDBPyConnection:
        if self._view_of is not None:
            raise StoreError(
                f"{self!r} is a view of the {self.segment} tokens and only reads; write through the store itself"
            )
        if self._read_only:
            raise StoreError(
                f"store {self._path} was opened read-only; open it with read_only=False to write"
            )
        return self.con

    @contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection, held exclusively for the block (several statements that belong together)."""
        with self._lock:
            yield self.con

    def sql(self, query: str, params: list[Any] | None = None) -> pl.DataFrame:
        """Run a parameterised query and return a polars DataFrame."""
        with self._lock:
            return readers.frame(self.con, query, params)

    # -- runs --------------------------------------------------------------------------
    def create_run(
        self,
        *,
        model: str,
        architecture: str,
        probe: str,
        n_experts: int,
        top_k: int,
        config: dict[str, Any],
        layers: list[dict[str, Any]],
        run_id: str | None = None,
    ) -> str:
        """Create a ``running`` run with its layers; returns its id (generated if None)."""
        with self._lock:
            return runs_mod.create_run(
                self._writable(), run_id=run_id, model=model, architecture=architecture, probe=probe,
                n_experts=n_experts, top_k=top_k, config=config, layers=layers,
            )  # fmt: skip

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Set a run's status ('running', 'complete', 'failed'); ``error`` goes with 'failed'."""
        with self._lock:
            runs_mod.set_status(self._writable(), run_id, status, error)
        if status == "complete":
            self._try_build_summaries(run_id)

    def run(self, run_id: str) -> dict[str, Any]:
        """One run's row as a dict with ``config`` parsed and its ``error`` (or None)."""
        with self._lock:
            return runs_mod.run_info(self.con, run_id)

    def runs(self) -> pl.DataFrame:
        """All runs, oldest first; a running run whose process is gone reads ``interrupted`` (store/liveness.py)."""
        with self._lock:
            return liveness.with_observed_status(readers.runs(self.con))

    def delete_run(self, run_id: str) -> None:
        """Delete a run with its layers, prompts, tokens, routing, stats and interventions."""
        with self._lock:
            runs_mod.status_of(self._writable(), run_id)
            maintenance.delete_run(self.con, run_id, self._shards)

    def export_parquet(self, run_id: str, out_dir: str | Path) -> list[Path]:
        """Write one ``<table>.parquet`` per table for this run into ``out_dir``."""
        with self._lock:
            runs_mod.status_of(self.con, run_id)
            return maintenance.export_parquet(self.con, run_id, out_dir)

    # -- ingest ------------------------------------------------------------------------
    def write_batch(
        self,
        run_id: str,
        *,
        prompts: ingest.ArrowLike,
        tokens: ingest.ArrowLike,
        routing: ingest.ArrowLike,
        expert_stats: ingest.ArrowLike | None = None,
    ) -> None:
        """Insert one batch atomically (all tables or none). The run must be 'running'."""
        with self._lock:
            status = runs_mod.status_of(self._writable(), run_id)
            if status != "running":
                raise StoreError(
                    f"run {run_id!r} is {status!r}; batches can only be written to a 'running' run "
                    f"(resume it with set_status({run_id!r}, 'running'))"
                )
            tables = {"prompts": prompts, "tokens": tokens, "routing": routing, "expert_stats": expert_stats}
            ingest.write_batch(self.con, run_id, tables, self._shards)

    def absorb_run(self, source: str | Path, run_id: str) -> int:
        """Move run ``run_id``'s rows from another store file into this store's run of the same id.

        For the stores of data-parallel ranks: one transaction, the routing shards linked rather than
        rewritten. Refused when this run already holds any of the source's prompts. Returns how many
        prompts came over.
        """
        with self._lock:
            runs_mod.status_of(self._writable(), run_id)
            return maintenance.absorb_run(self.con, self._shards, Path(source), run_id)

    def done_prompt_ids(self, run_id: str) -> set[int]:
        """Prompt ids whose batch was committed (skip these when resuming)."""
        with self._lock:
            runs_mod.status_of(self.con, run_id)
            rows = self.con.execute("SELECT prompt_id FROM prompts WHERE run_id = ?", [run_id]).fetchall()
            return {int(r[0]) for r in rows}

    # -- matching two runs' prompts ------------------------------------------------------
    def match_prompts(self, run_a: str, run_b: str, *, require: bool = True) -> matching.PromptMatch:
        """The prompts two runs share, matched on content hash (text and token ids), never row index.

        With ``require``, raises :class:`~workbench.store.matching.PromptMismatchError` when they
        share none or a run's prompts have no hash (see :mod:`workbench.store.matching`).
        """
        with self._lock:
            runs_mod.status_of(self.con, run_a)
            runs_mod.status_of(self.con, run_b)
            return matching.match_prompts(self.con, run_a, run_b, require=require)

    def compatible_runs(self, run_id: str) -> pl.DataFrame:
        """Other runs sharing at least one prompt with ``run_id``: ``run_id, n_shared, n_prompts``."""
        with self._lock:
            runs_mod.status_of(self.con, run_id)
            return matching.compatible_runs(self.con, run_id)

    # -- readers -----------------------------------------------------------------------
    def _per_run(self, table: str, query: Query) -> pl.DataFrame:
        run_id = query.params[0]
        with self._lock:
            runs_mod.status_of(self.con, run_id)
            return readers.per_run(self.con, table, query)

    def layers(self, run_id: str) -> pl.DataFrame:
        """The run's MoE layers, by layer index."""
        return self._per_run("layers", Query().eq("run_id", run_id))

    def prompts(self, run_id: str, labels: Iterable[str] | None = None) -> pl.DataFrame:
        """The run's prompts (optionally only those with one of ``labels``), by prompt_id."""
        return self._per_run("prompts", Query().eq("run_id", run_id).any_of("label", labels, str))

    def tokens(self, run_id: str, prompt_ids: Iterable[int] | None = None) -> pl.DataFrame:
        """The run's tokens, by (prompt_id, position)."""
        return self._per_run("tokens", Query().eq("run_id", run_id).any_of("prompt_id", prompt_ids, int))

    def routing(
        self,
        run_id: str,
        layers: Iterable[int] | None = None,
        labels: Iterable[str] | None = None,
        prompt_ids: Iterable[int] | None = None,
        logits: bool = True,
    ) -> pl.DataFrame:
        """Routing rows by (prompt_id, position, layer).

        Filters combine with AND. Passing ``labels`` joins ``prompts`` and adds a
        ``label`` column; ``logits=False`` leaves the (large) logits column out.
        """
        sql, params = readers.routing_sql(run_id, layers, labels, prompt_ids, logits)
        with self._lock:
            runs_mod.status_of(self.con, run_id)
            return readers.frame(self.con, sql, params)

    def iter_routing(
        self,
        run_id: str,
        layers: Iterable[int] | None = None,
        labels: Iterable[str] | None = None,
        prompt_ids: Iterable[int] | None = None,
        logits: bool = True,
        batch_rows: int = 1_000_000,
        *,
        ordered: bool = True,
    ) -> Iterator[pl.DataFrame]:
        """Like :meth:`routing` but streamed in frames of at most ``batch_rows`` rows.

        Runs on its own cursor, so other Store calls may interleave with the iteration.
        An unknown run id raises here, not at the first ``next()``. Rows come in (prompt_id,
        position, layer) order, as from :meth:`routing`; memory stays bounded by a few hundred
        thousand rows (DuckDB sorts ranges of consecutive prompts, never the whole run).
        ``ordered=False`` skips the sorting: the same rows in no particular order (DuckDB's
        parallel scan may hand out row groups in a different order on each call), in one scan,
        for consumers that only count or sum.
        """
        with self._lock:
            runs_mod.status_of(self.con, run_id)
            cursor = self._cursor()
        if not ordered:
            sql, params = readers.routing_sql(run_id, layers, labels, prompt_ids, logits)
            sql = sql.partition(" ORDER BY ")[0]
            return readers.closing(cursor, readers.batches(cursor, sql, params, batch_rows))
        return readers.closing(
            cursor, readers.routing_batches(cursor, run_id, layers, labels, prompt_ids, logits, batch_rows)
        )

    def iter_logits(
        self,
        run_id: str,
        layers: Iterable[int],
        labels: Iterable[str] | None = None,
        batch_rows: int = 262_144,
    ) -> Iterator[pa.RecordBatch]:
        """The router logits of ``layers`` as Arrow batches: ``prompt_id, position, layer[, label], logits``.

        Only rows with logits, in no particular order, in one unsorted scan; with ``labels``, only
        the rows of prompts carrying one of them (and their ``label``). The list column stays in
        Arrow, which is what makes this about twice as cheap as :meth:`iter_routing` for the
        analyses that turn logits into numpy. Raises ``UnknownRunError`` for an unknown run.
        """
        with self._lock:
            runs_mod.status_of(self.con, run_id)
            cursor = self._cursor()
        sql, params = readers.logits_sql(run_id, layers, labels)
        return readers.closing(cursor, readers.arrow_batches(cursor, sql, params, batch_rows))

    def expert_stats(
        self, run_id: str, layers: Iterable[int] | None = None, prompt_ids: Iterable[int] | None = None
    ) -> pl.DataFrame:
        """Per-expert output statistics, by (prompt_id, position, layer, expert); shared experts have ids >= n_experts."""
        q = Query().eq("run_id", run_id).any_of("layer", layers, int).any_of("prompt_id", prompt_ids, int)
        return self._per_run("expert_stats", q)

    # -- interventions and their evaluations -------------------------------------------
    def create_intervention(
        self, run_id: str, *, kind: str, spec: dict[str, Any], intervention_id: str | None = None
    ) -> str:
        """Record an intervention on a run; returns its id (``iv-xxxxxxxx`` if None)."""
        with self._lock:
            return effects.create_intervention(self._writable(), run_id, kind, spec, intervention_id)

    def write_evaluations(self, intervention_id: str, table: ingest.ArrowLike) -> None:
        """Append evaluation rows (all ``evaluations`` columns but intervention_id) via Arrow."""
        with self._lock:
            effects.write_evaluations(self._writable(), intervention_id, table)

    def interventions(self, run_id: str | None = None) -> pl.DataFrame:
        """Interventions (of one run, or all), oldest first; ``spec`` as a JSON string."""
        sql, params = effects.interventions_sql(run_id)
        with self._lock:
            return readers.frame(self.con, sql, params)

    def evaluations(self, intervention_id: str | None = None, run_id: str | None = None) -> pl.DataFrame:
        """Evaluation rows of one intervention and/or of a run's interventions."""
        sql, params = effects.evaluations_sql(intervention_id, run_id)
        with self._lock:
            return readers.frame(self.con, sql, params)

    # -- resonance maps ----------------------------------------------------------------
    def write_resonance(
        self,
        run_id: str,
        table: ingest.ArrowLike,
        *,
        target: str,
        control: str,
        method: str,
        span: str | None = None,
        map_id: str | None = None,
    ) -> str:
        """Store a resonance map (one row per layer, expert: rd, ftri, effect, CI, p, q ...); returns its id."""
        with self._lock:
            return effects.write_resonance(
                self._writable(), run_id, table, target=target, control=control, span=span, method=method,
                map_id=map_id,
            )  # fmt: skip

    def resonance(self, run_id: str | None = None, map_id: str | None = None) -> pl.DataFrame:
        """Stored resonance-map rows of one run and/or one map (``map_id``), oldest map first."""
        sql, params = effects.resonance_sql(run_id, map_id)
        with self._lock:
            return readers.frame(self.con, sql, params)
