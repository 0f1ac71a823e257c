"""Interventions on a run, their evaluations, and resonance maps (the "effects" half of the store).

Kept apart from capture ingest because these rows are written later, by the
interventions package, and are small: one row per intervention, a handful of metric
rows per evaluation. Evaluations still go in through Arrow, like every bulk insert.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import duckdb

from workbench.store import ingest
from workbench.store.errors import StoreError
from workbench.store.readers import Query, select_cols
from workbench.store.runs import status_of, utcnow
from workbench.store.sqlutil import first


def create_intervention(
    con: duckdb.DuckDBPyConnection, run_id: str, kind: str, spec: dict[str, Any], intervention_id: str | None
) -> str:
    """Insert an intervention row for an existing run; return its id (``iv-xxxxxxxx``)."""
    iid = intervention_id or f"iv-{secrets.token_hex(4)}"
    status_of(con, run_id)
    if first(con, "SELECT 1 FROM interventions WHERE intervention_id = ?", [iid]):
        raise StoreError(f"intervention {iid!r} already exists; choose another intervention_id")
    try:
        spec_json = json.dumps(spec)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"intervention spec must be JSON-serialisable: {exc}") from exc
    con.execute(
        "INSERT INTO interventions (intervention_id, run_id, kind, spec, created_at) VALUES (?, ?, ?, ?, ?)",
        [iid, run_id, kind, spec_json, utcnow()],
    )
    return iid


def write_evaluations(con: duckdb.DuckDBPyConnection, intervention_id: str, table: ingest.ArrowLike) -> None:
    """Append evaluation rows (every ``evaluations`` column but intervention_id) atomically."""
    arrow = ingest.as_arrow(table, "evaluations")
    ingest.select_list("evaluations", arrow, leading="intervention_id")
    if not first(con, "SELECT 1 FROM interventions WHERE intervention_id = ?", [intervention_id]):
        raise StoreError(f"no intervention {intervention_id!r}; call create_intervention() first")
    view = ingest.register(con, "evaluations", arrow)
    try:
        with ingest.transaction(con):
            ingest.insert_view(con, "evaluations", view, arrow, intervention_id, leading="intervention_id")
    except duckdb.Error as exc:
        raise StoreError(f"evaluations for {intervention_id!r} were rolled back: {exc}") from exc
    finally:
        con.unregister(view)


def interventions_sql(run_id: str | None) -> tuple[str, list[Any]]:
    """SQL + params listing interventions (of one run, or all), oldest first."""
    q = Query()
    if run_id is not None:
        q.eq("run_id", run_id)
    sql = (
        f"SELECT {select_cols('interventions', exclude=())} FROM interventions {q.clause()} "
        "ORDER BY created_at, intervention_id"
    )
    return sql, q.params


def evaluations_sql(intervention_id: str | None, run_id: str | None) -> tuple[str, list[Any]]:
    """SQL + params for evaluations of one intervention and/or of one run's interventions."""
    q = Query()
    if intervention_id is not None:
        q.eq("intervention_id", intervention_id)
    if run_id is not None:
        q.where.append("intervention_id IN (SELECT intervention_id FROM interventions WHERE run_id = ?)")
        q.params.append(run_id)
    sql = (
        f"SELECT {select_cols('evaluations', exclude=())} FROM evaluations {q.clause()} "
        "ORDER BY intervention_id, label, metric"
    )
    return sql, q.params


def write_resonance(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    table: ingest.ArrowLike,
    *,
    target: str,
    control: str,
    span: str | None,
    method: str,
    map_id: str | None,
) -> str:
    """Store one resonance map (rows: layer, expert and its scores) atomically; returns its id."""
    import pyarrow as pa

    mid = map_id or f"rm-{secrets.token_hex(4)}"
    status_of(con, run_id)
    if first(con, "SELECT 1 FROM resonance WHERE map_id = ?", [mid]):
        raise StoreError(f"resonance map {mid!r} already exists; choose another map_id")
    arrow = ingest.as_arrow(table, "resonance")
    n = arrow.num_rows
    for name, value in (
        ("run_id", run_id), ("target", target), ("control", control), ("span", span or "all"), ("method", method),
    ):  # fmt: skip
        if name in arrow.column_names:
            arrow = arrow.drop_columns([name])
        arrow = arrow.append_column(name, pa.array([value] * n, pa.string()))
    arrow = arrow.append_column("created_at", pa.array([utcnow()] * n, pa.timestamp("us")))
    ingest.select_list("resonance", arrow, leading="map_id")
    view = ingest.register(con, "resonance", arrow)
    try:
        with ingest.transaction(con):
            ingest.insert_view(con, "resonance", view, arrow, mid, leading="map_id")
    except duckdb.Error as exc:
        raise StoreError(f"resonance map {mid!r} was rolled back: {exc}") from exc
    finally:
        con.unregister(view)
    return mid


def resonance_sql(run_id: str | None, map_id: str | None) -> tuple[str, list[Any]]:
    """SQL + params for stored resonance rows (of one run and/or one map), oldest map first."""
    q = Query()
    if run_id is not None:
        q.eq("run_id", run_id)
    if map_id is not None:
        q.eq("map_id", map_id)
    sql = f"SELECT {select_cols('resonance', exclude=())} FROM resonance {q.clause()} ORDER BY created_at, map_id, layer, expert"
    return sql, q.params
