"""Named query that reads committed prompts back as the batch tables ``Store.write_batch`` takes.

Part of :mod:`workbench.store.queries` (its docstring gives the rules every query keeps). Used to move
a run's rows from one store into another (the rank stores of a data-parallel capture) through the
receiving store's own ingest, which checks prompt ids and content hashes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from workbench.store.backend import Store

#: the tables one capture batch writes, in ``write_batch``'s keyword names
BATCH_TABLES = ("prompts", "tokens", "routing", "expert_stats")


def batch_tables(store: Store, run_id: str, prompt_ids: Sequence[int]) -> dict[str, pa.Table | None]:
    """The rows of ``prompt_ids`` in each batch table, without ``run_id``, as Arrow (column types kept).

    ``expert_stats`` is None when the run has none for these prompts (captured without stats).
    """
    placeholders = ", ".join(f"$p{i}" for i in range(len(prompt_ids)))
    params = {"run": run_id, **{f"p{i}": int(v) for i, v in enumerate(prompt_ids)}}
    out: dict[str, pa.Table | None] = {}
    for table in BATCH_TABLES:  # fixed identifiers; the user's values travel as parameters
        out[table] = store.con.sql(
            f'SELECT * EXCLUDE (run_id) FROM "{table}" WHERE run_id = $run AND prompt_id IN ({placeholders})',
            params=params,
        ).to_arrow_table()
    stats = out["expert_stats"]
    if stats is not None and stats.num_rows == 0:
        out["expert_stats"] = None
    return out
