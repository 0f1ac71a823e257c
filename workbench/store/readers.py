"""Parameterised read queries returning polars DataFrames.

Why here and like this: every filter is pushed into DuckDB (so only the rows and columns
asked for are materialised) and every user value reaches SQL as a parameter, never by
string formatting: labels such as ``O'Brien`` just work and cannot inject SQL. Per-run
readers omit the ``run_id`` column, which would otherwise repeat one string per row of
tables with tens of millions of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from workbench.store.schema import ORDER_BY, column_names, column_type

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl


class Query:
    """A SELECT being assembled: a list of WHERE conditions plus their parameters."""

    def __init__(self) -> None:
        self.where: list[str] = []
        self.params: list[Any] = []

    def eq(self, column: str, value: Any) -> Query:
        """Add ``column = ?``."""
        self.where.append(f"{column} = ?")
        self.params.append(value)
        return self

    def any_of(self, column: str, values: Iterable[Any] | None, cast: type) -> Query:
        """Add ``column = ANY(?)`` unless ``values`` is None (no filter)."""
        if values is None:
            return self
        if isinstance(values, (str, bytes)):  # a lone label, not an iterable of characters
            values = [values]
        items = [cast(v) for v in values]
        if not items:
            self.where.append("FALSE")
        else:
            self.where.append(f"{column} = ANY(?)")
            self.params.append(items)
        return self

    def clause(self) -> str:
        """The WHERE clause (or an empty string)."""
        return f"WHERE {' AND '.join(self.where)}" if self.where else ""


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
    """Run ``sql`` with ``params`` and return the result as a polars DataFrame."""
    import polars  # noqa: F401  (``.pl()`` needs it importable)

    return con.sql(sql, params=list(params) if params else None).pl()


def batches(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any], batch_rows: int
) -> Iterator[pl.DataFrame]:
    """Stream a query as polars frames of at most ``batch_rows`` rows each."""
    import polars as pl

    reader = con.sql(sql, params=list(params)).to_arrow_reader(batch_rows)
    for batch in reader:
        yield pl.from_arrow(batch)  # type: ignore[misc]


def select_cols(table: str, alias: str = "", exclude: Sequence[str] = ("run_id",)) -> str:
    """Select list of a table's contract columns; JSON columns come back as VARCHAR."""
    prefix = f"{alias}." if alias else ""
    out = []
    for col in column_names(table):
        if col in exclude:
            continue
        if column_type(table, col) == "JSON":
            out.append(f'{prefix}"{col}"::VARCHAR AS "{col}"')
        else:
            out.append(f'{prefix}"{col}"')
    return ", ".join(out)


def runs(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """All runs, oldest first (``config`` as a JSON string)."""
    return frame(con, f"SELECT {select_cols('runs', exclude=())} FROM runs ORDER BY {ORDER_BY['runs']}")


def per_run(con: duckdb.DuckDBPyConnection, table: str, query: Query) -> pl.DataFrame:
    """A per-run table filtered by ``query``, in its natural order, without ``run_id``."""
    sql = f"SELECT {select_cols(table)} FROM {table} {query.clause()} ORDER BY {ORDER_BY[table]}"
    return frame(con, sql, query.params)


def routing_sql(
    run_id: str,
    layers: Iterable[int] | None,
    labels: Iterable[str] | None,
    prompt_ids: Iterable[int] | None,
    logits: bool,
) -> tuple[str, list[Any]]:
    """SQL + params for the routing reader; adds a ``label`` column when filtering on labels."""
    q = Query().eq("r.run_id", run_id).any_of("r.layer", layers, int).any_of("r.prompt_id", prompt_ids, int)
    cols = ["r.prompt_id", "r.position", "r.layer", "r.experts", "r.weights"]
    if logits:
        cols.append("r.logits")
    join = ""
    if labels is not None:
        cols.insert(3, "p.label")
        join = "JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id"
        q.any_of("p.label", labels, str)
    sql = (
        f"SELECT {', '.join(cols)} FROM routing r {join} {q.clause()} "
        "ORDER BY r.prompt_id, r.position, r.layer"
    )
    return sql, q.params
