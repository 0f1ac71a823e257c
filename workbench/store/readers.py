"""Parameterised read queries returning polars DataFrames.

Why here and like this: every filter is pushed into DuckDB (so only the rows and columns
asked for are materialised) and every user value reaches SQL as a parameter, never by
string formatting: labels such as ``O'Brien`` just work and cannot inject SQL. Per-run
readers omit the ``run_id`` column, which would otherwise repeat one string per row of
tables with tens of millions of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from workbench.store.tables import ORDER_BY, column_names, column_type

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl
    import pyarrow as pa

T = TypeVar("T")


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

    df: pl.DataFrame = con.sql(sql, params=list(params) if params else None).pl()
    return df


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


def logits_sql(run_id: str, layers: Iterable[int], labels: Iterable[str] | None) -> tuple[str, list[Any]]:
    """SQL + params for :meth:`Store.iter_logits`: keys (and label) plus non-NULL logits, unsorted."""
    cols = "r.prompt_id, r.position, r.layer" + (", p.label" if labels is not None else "") + ", r.logits"
    join = (
        " JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id" if labels is not None else ""
    )
    sql = (
        f"SELECT {cols} FROM routing r{join} WHERE r.run_id = ? AND r.layer = ANY(?) AND r.logits IS NOT NULL"
    )
    params: list[Any] = [run_id, [int(x) for x in layers]]
    if labels is not None:
        sql += " AND p.label = ANY(?)"
        params.append([str(x) for x in labels])
    return sql, params


#: DuckDB (2.x) hands an ``ORDER BY`` result to the Arrow reader in blocks of this many rows
#: (its row-group size), and no batch straddles two blocks: ``to_arrow_reader(b)`` yields
#: ``min(b, rows left in the block)`` rows at a time. :func:`routing_batches` reproduces
#: these boundaries so that consumers seeded batch by batch (``router_confidence``'s noise)
#: see exactly the batches the single sorted query gave.
SORT_BLOCK_ROWS = 122_880


def routing_batches(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    layers: Iterable[int] | None,
    labels: Iterable[str] | None,
    prompt_ids: Iterable[int] | None,
    logits: bool,
    batch_rows: int,
) -> Iterator[pl.DataFrame]:
    """The routing reader streamed in (prompt_id, position, layer) order with bounded memory.

    Same rows, order and batch boundaries as streaming :func:`routing_sql` in one query, but
    DuckDB never sorts the whole run (with its logits) at once: the rows are read and sorted
    in ranges of consecutive prompt ids of a few hundred thousand rows each (a prompt count
    per prompt id is read first), and re-cut into batches of at most ``batch_rows`` rows.
    """
    import polars as pl
    import pyarrow as pa

    batch_rows = max(1, int(batch_rows))
    sql, params = routing_sql(run_id, layers, labels, prompt_ids, logits)
    head, _, _ = sql.partition(" ORDER BY ")
    where = " AND " if " WHERE " in head else " WHERE "
    count_sql = f"SELECT r.prompt_id, count(*) AS n FROM{head.split(' FROM', 1)[1]} GROUP BY r.prompt_id"
    counts = con.sql(count_sql, params=list(params)).fetchall()
    has_null = any(pid is None for pid, _ in counts)
    sizes = sorted((int(pid), int(n)) for pid, n in counts if pid is not None)
    target = max(4 * SORT_BLOCK_ROWS, batch_rows)
    ranges: list[tuple[str, list[Any]]] = []
    start, acc = 0, 0
    for i, (pid, n) in enumerate(sizes):
        acc += n
        if acc >= target or i == len(sizes) - 1:
            ranges.append(("r.prompt_id BETWEEN ? AND ?", [sizes[start][0], pid]))
            start, acc = i + 1, 0
    if has_null:  # NULLS LAST, as ORDER BY puts them
        ranges.append(("r.prompt_id IS NULL", []))
    pending: pa.Table | None = None
    emitted = 0
    for cond, extra in ranges:
        part = con.sql(
            f"{head}{where}{cond} ORDER BY r.prompt_id, r.position, r.layer", params=[*params, *extra]
        ).to_arrow_table()
        pending = part if pending is None else pa.concat_tables([pending, part])
        while True:
            need = min(batch_rows, SORT_BLOCK_ROWS - emitted % SORT_BLOCK_ROWS)
            if pending.num_rows < need:
                break
            yield pl.from_arrow(pending.slice(0, need).combine_chunks())  # type: ignore[misc]
            pending = pending.slice(need)
            emitted += need
    while pending is not None and pending.num_rows > 0:
        need = min(batch_rows, SORT_BLOCK_ROWS - emitted % SORT_BLOCK_ROWS)
        yield pl.from_arrow(pending.slice(0, need).combine_chunks())  # type: ignore[misc]
        pending = pending.slice(need)
        emitted += need


def arrow_batches(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Stream a query as Arrow record batches of at most ``batch_rows`` rows (the query runs at the first one)."""
    yield from con.sql(sql, params=list(params)).to_arrow_reader(max(1, int(batch_rows)))


def closing(cursor: duckdb.DuckDBPyConnection, items: Iterator[T]) -> Iterator[T]:
    """Yield ``items`` (a lazy stream reading ``cursor``), then close ``cursor``, also when abandoned."""
    try:
        yield from items
    finally:
        cursor.close()
