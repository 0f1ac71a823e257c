"""Whole-run operations: Parquet export and deletion.

Export exists so a run can leave DuckDB (share it, load it in another tool) with the
same column names as the store; deletion removes every row a run owns in one
transaction, so a store never holds half a run.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from workbench.store.ingest import transaction
from workbench.store.readers import select_cols
from workbench.store.schema import ORDER_BY

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


def delete_run(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Delete a run and everything that belongs to it (including its evaluations)."""
    with transaction(con):
        con.execute(f"DELETE FROM evaluations WHERE {_RUN_INTERVENTIONS}", [run_id])
        for table in reversed(RUN_TABLES):
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
