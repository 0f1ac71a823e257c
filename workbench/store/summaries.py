"""Per-prompt summaries of a run (schema v5): what the analyses read instead of the token rows.

Why: every analysis that resamples prompts needs only per-prompt sums (selections per expert,
tokens, gate mass, output norms ...), but computing them scans all token × layer rows of the run,
which at 10M tokens is 80M rows and tens of seconds per analysis. A run's summaries hold those sums
per (prompt, layer[, expert]), O(prompts × layers × experts) rows, computed once.

Parts and their tables (columns in :data:`workbench.store.schema.SCHEMA_ADDED` [5]):

* ``counts`` (built here, in SQL, from ``routing`` and ``expert_stats``):
  ``summary_tokens`` (routing rows per prompt and layer, and those with gate weights), ``summary_experts`` (per expert id as
  stored: list entries ``n``, top-1 routed choices ``n_top1``, Σ gate weight ``w_sum``) and
  ``summary_stats`` (per ``expert_stats`` expert: rows, non-NULL values, Σ out_norm, Σ zero_frac,
  the largest ``|out_norm|``).
* ``logits`` (built by a builder the analysis layer registers, :func:`register`, since it needs the
  router-score maths): ``summary_confidence`` and ``summary_scores`` (see
  :mod:`workbench.analysis.summaries`).
* ``pairs`` and ``transitions`` (registered likewise): whole-run counts, not per prompt, of the
  analyses that never resample: co-selected expert pairs per layer (``summary_pairs``, what
  co-activation and fixed partners count) and top-1 transitions between consecutive layers
  (``summary_transitions``, what pathways counts). O(layers × experts²) rows.
* ``vocab`` and ``dynamic`` (registered likewise, whole-run): top-1 routed choices per (layer,
  token id, expert) (``summary_vocab``: vocabulary specialisation's counts, O(layers × token ids ×
  experts) rows, bounded by the vocabulary), and dynamic k's sufficient statistics per (layer,
  label, level p, k) and (layer, label) (``summary_dynamic_k``, ``summary_dynamic_nll``; see
  :mod:`workbench.analysis.dynamic_stats`).

The ``vocab`` and ``dynamic`` parts' tables came with schema v7; a store migrated to v7 gets them built
at its first writable open by a process that has registered their builders, like any missing part.

Validity: ``summary_builds`` records, per run and part, the run's prompt count and its shard
manifest (shards, rows) at build time. A part is used only while those still match the run
(:func:`valid_parts`), so a summary is never stale or partial: a run written to after the build, a
resumed run, a run that absorbed a rank store, all fall back to the row path until rebuilt.
Summaries are built when a run is set ``complete`` (:meth:`Store.set_status`), at the first
writable open of a store migrated from v4 or older (for its complete runs), and on request
(:meth:`Store.build_summaries`). ``expert_stats`` rows only ever arrive with their prompts, so the
prompt count covers them.

:func:`row_path` forces every reader back onto the token rows (the tests compare both paths).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

from workbench.store.ingest import transaction
from workbench.store.sqlutil import first
from workbench.store.tables import MANIFEST, SCHEMA_ADDED

if TYPE_CHECKING:
    import pyarrow as pa

    from workbench.store.backend import Store

__all__ = [
    "BUILDS",
    "COUNTS",
    "DYNAMIC",
    "LOGITS",
    "PAIRS",
    "PART_TABLES",
    "TRANSITIONS",
    "VOCAB",
    "Fingerprint",
    "PartBuilder",
    "build_counts",
    "drop_run",
    "fingerprint",
    "has_tables",
    "register",
    "registered",
    "row_path",
    "usable",
    "valid_parts",
    "write_part",
]

BUILDS = "summary_builds"
COUNTS = "counts"
LOGITS = "logits"
PAIRS = "pairs"
TRANSITIONS = "transitions"
VOCAB = "vocab"
DYNAMIC = "dynamic"

#: The tables each part fills.
PART_TABLES: dict[str, tuple[str, ...]] = {
    COUNTS: ("summary_tokens", "summary_experts", "summary_stats"),
    LOGITS: ("summary_confidence", "summary_scores"),
    PAIRS: ("summary_pairs",),
    TRANSITIONS: ("summary_transitions",),
    VOCAB: ("summary_vocab",),
    DYNAMIC: ("summary_dynamic_k", "summary_dynamic_nll"),
}

#: Computes a part's tables (Arrow, without run_id, columns as in the schema) from the store's rows.
PartBuilder = Callable[["Store", str], dict[str, "pa.Table"]]

_BUILDERS: dict[str, PartBuilder] = {}

_ROW_PATH: ContextVar[bool] = ContextVar("moe_workbench_row_path", default=False)


@contextmanager
def row_path() -> Iterator[None]:
    """Within this block every reader ignores the summaries and scans the token rows."""
    token = _ROW_PATH.set(True)
    try:
        yield
    finally:
        _ROW_PATH.reset(token)


def register(part: str, builder: PartBuilder) -> None:
    """Make ``builder`` build ``part`` whenever the summaries of a run are built (one builder a part)."""
    if part not in PART_TABLES or part == COUNTS:
        raise ValueError(
            f"unknown summary part {part!r}; registrable parts: {sorted(set(PART_TABLES) - {COUNTS})}"
        )
    _BUILDERS[part] = builder


def registered() -> dict[str, PartBuilder]:
    """The registered part builders (``counts`` is built by the store itself)."""
    return dict(_BUILDERS)


@dataclass(frozen=True)
class Fingerprint:
    """What a run's rows were when a summary was built: its prompt count and its shard manifest."""

    n_prompts: int
    n_shards: int
    n_rows: int


def _exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether the open store has the table ``table``."""
    row = first(
        con,
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = ?",
        [table],
    )
    return bool(row and row[0])


def has_tables(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the open store has the summary tables (schema v5 or later)."""
    return _exists(con, BUILDS)


def fingerprint(con: duckdb.DuckDBPyConnection, run_id: str) -> Fingerprint:
    """The run's current :class:`Fingerprint` (two small queries: prompts and the manifest)."""
    prompts = first(con, "SELECT count(*) FROM prompts WHERE run_id = ?", [run_id])
    shards = first(
        con,
        f"SELECT count(*), CAST(coalesce(sum(n_rows), 0) AS BIGINT) FROM {MANIFEST} WHERE run_id = ?",
        [run_id],
    )
    n_prompts = int(prompts[0]) if prompts else 0
    n_shards, n_rows = (int(shards[0]), int(shards[1])) if shards else (0, 0)
    return Fingerprint(n_prompts, n_shards, n_rows)


def valid_parts(con: duckdb.DuckDBPyConnection, run_id: str) -> set[str]:
    """The parts of the run's summaries that were built from exactly its present rows."""
    if not has_tables(con):
        return set()
    now = fingerprint(con, run_id)
    rows = con.execute(
        f"SELECT part, n_prompts, n_shards, n_rows FROM {BUILDS} WHERE run_id = ?", [run_id]
    ).fetchall()
    return {str(part) for part, *fp in rows if Fingerprint(*(int(x) for x in fp)) == now}


def usable(store: Store, run_id: str, part: str = COUNTS) -> bool:
    """Whether readers may answer from ``part`` of the run's summaries (valid, and not in :func:`row_path`).

    Never on a segment view (:meth:`Store.segment_view`): a summary sums over all of a prompt's tokens.
    """
    if _ROW_PATH.get() or store.segment is not None:
        return False
    with store.locked() as con:
        return part in valid_parts(con, run_id)


def drop_run(con: duckdb.DuckDBPyConnection, run_id: str, parts: tuple[str, ...] | None = None) -> None:
    """Delete the run's summary rows of ``parts`` (all by default), in the caller's transaction."""
    for part in parts or tuple(PART_TABLES):
        for table in PART_TABLES[part]:
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        con.execute(f"DELETE FROM {BUILDS} WHERE run_id = ? AND part = ?", [run_id, part])


def _record(con: duckdb.DuckDBPyConnection, run_id: str, part: str, fp: Fingerprint, build_s: float) -> None:
    con.execute(
        f"INSERT INTO {BUILDS} (run_id, part, n_prompts, n_shards, n_rows, built_at, build_s) "
        "VALUES (?, ?, ?, ?, ?, now()::TIMESTAMP, ?)",
        [run_id, part, fp.n_prompts, fp.n_shards, fp.n_rows, build_s],
    )


#: The list entries of each routing row with their gate weight. ``real`` is NULL only on the padding
#: DuckDB adds when ``weights`` is longer than ``experts``: such entries count for the gate mass (as the
#: row path's joint unnest does) but are no selection.
_ENTRIES = (
    "SELECT prompt_id, layer, unnest(experts) AS expert, unnest(weights) AS w,"
    " unnest(list_transform(experts, lambda x: TRUE)) AS real FROM routing WHERE run_id = $run"
)

#: A row's top-1 routed expert, as :mod:`workbench.store.queries.routing` defines it.
_TOP1 = (
    "CASE WHEN r.experts[1] < l.n_experts THEN r.experts[1]"
    " ELSE list_filter(r.experts, lambda x: x < l.n_experts)[1] END"
)

_COUNTS_SQL = {
    "summary_tokens": (
        "SELECT $run, prompt_id, layer, count(*), count(weights) FROM routing WHERE run_id = $run"
        " GROUP BY prompt_id, layer"
    ),
    "summary_experts": (
        f"WITH e AS (SELECT prompt_id, layer, CAST(expert AS INTEGER) AS expert, count(real) AS n, sum(w) AS w_sum"
        f"   FROM ({_ENTRIES}) GROUP BY ALL),"
        f" t AS (SELECT r.prompt_id, r.layer, CAST({_TOP1} AS INTEGER) AS expert, count(*) AS n_top1"
        "   FROM routing r JOIN layers l ON l.run_id = r.run_id AND l.layer = r.layer"
        "   WHERE r.run_id = $run GROUP BY ALL HAVING expert IS NOT NULL)"
        " SELECT $run, e.prompt_id, e.layer, e.expert, e.n, coalesce(t.n_top1, 0), e.w_sum FROM e LEFT JOIN t"
        " ON t.prompt_id = e.prompt_id AND t.layer = e.layer AND t.expert = e.expert"
    ),
    "summary_stats": (
        "SELECT $run, prompt_id, layer, CAST(expert AS INTEGER), count(*), count(out_norm), sum(out_norm),"
        " count(zero_frac), sum(zero_frac), max(abs(out_norm))"
        " FROM expert_stats WHERE run_id = $run GROUP BY prompt_id, layer, expert"
    ),
}


def build_counts(con: duckdb.DuckDBPyConnection, run_id: str) -> float:
    """(Re)build the run's ``counts`` part in one transaction; returns the seconds it took."""
    start = time.perf_counter()
    with transaction(con):
        fp = fingerprint(con, run_id)
        drop_run(con, run_id, (COUNTS,))
        for table in PART_TABLES[COUNTS]:
            con.execute(f"INSERT INTO {table} {_COUNTS_SQL[table]}", {"run": run_id})
        build_s = time.perf_counter() - start
        _record(con, run_id, COUNTS, fp, build_s)
    return build_s


def write_part(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    part: str,
    tables: dict[str, pa.Table],
    built_from: Fingerprint,
    build_s: float,
) -> bool:
    """Store a registered part's tables, unless the run changed since ``built_from``; returns whether it did."""
    if set(tables) != set(PART_TABLES[part]):
        raise ValueError(
            f"summary part {part!r} has tables {sorted(PART_TABLES[part])}, got {sorted(tables)}"
        )
    with transaction(con):
        if fingerprint(con, run_id) != built_from:
            return False
        drop_run(con, run_id, (part,))
        for table, data in tables.items():
            names = [name for name, _ in {**SCHEMA_ADDED[5], **SCHEMA_ADDED[7]}[table] if name != "run_id"]
            con.register("summary_part", data)
            try:
                cols = ", ".join(names)
                con.execute(
                    f"INSERT INTO {table} (run_id, {cols}) SELECT ?, {cols} FROM summary_part", [run_id]
                )
            finally:
                con.unregister("summary_part")
        _record(con, run_id, part, built_from, build_s)
    return True
