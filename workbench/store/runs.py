"""Run bookkeeping: creating runs, their status life cycle, and looking them up.

A run is ``running`` from creation until the writer marks it ``complete``; a crash
leaves it ``running`` (resumable; readers report it ``interrupted`` once its process is gone, see
:mod:`workbench.store.liveness`) and a caught error marks it ``failed`` with the message
kept in ``config["error"]``. ``complete`` and ``failed`` are only reached from
``running``, so a failed run has to be resumed (set back to ``running``) before it can be
called complete: a run never looks whole when it is not.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from typing import Any

import duckdb
import pyarrow as pa

from workbench.store import liveness
from workbench.store.errors import StoreError, UnknownRunError
from workbench.store.ingest import insert_view, register, transaction
from workbench.store.sqlutil import first
from workbench.store.tables import RUN_STATUSES

#: status -> statuses it may move to.
TRANSITIONS: dict[str, frozenset[str]] = {
    "running": frozenset({"running", "complete", "failed"}),
    "failed": frozenset({"running", "failed"}),
    "complete": frozenset({"running", "complete"}),
}

LAYER_TYPES: dict[str, pa.DataType] = {
    "layer": pa.int32(),
    "module_path": pa.string(),
    "n_experts": pa.int32(),
    "top_k": pa.int32(),
    "n_shared": pa.int32(),
    "score_fn": pa.string(),
}
LAYER_DEFAULTS: dict[str, Any] = {"n_shared": 0, "score_fn": None}


def utcnow() -> datetime:
    """Naive UTC timestamp (the store's TIMESTAMP columns are UTC)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_run_id(now: datetime | None = None) -> str:
    """A short readable id such as ``run-20261128-173500-ab12`` (UTC time + random)."""
    return f"run-{(now or utcnow()):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def unknown_run(con: duckdb.DuckDBPyConnection, run_id: str) -> UnknownRunError:
    """An error for ``run_id`` listing the runs that do exist (newest first)."""
    rows = con.execute("SELECT run_id, status FROM runs ORDER BY created_at DESC, run_id LIMIT 20").fetchall()
    total = first(con, "SELECT count(*) FROM runs")
    if not rows:
        return UnknownRunError(f"no run {run_id!r}: the store has no runs yet")
    listed = ", ".join(f"{rid} ({status})" for rid, status in rows)
    more = f" (showing 20 of {total[0]})" if total and total[0] > 20 else ""
    return UnknownRunError(f"no run {run_id!r} in the store; existing runs{more}: {listed}")


def status_of(con: duckdb.DuckDBPyConnection, run_id: str) -> str:
    """Current status of ``run_id``; raises :class:`UnknownRunError` if it is absent."""
    row = first(con, "SELECT status FROM runs WHERE run_id = ?", [run_id])
    if row is None:
        raise unknown_run(con, run_id)
    return str(row[0])


def layers_table(layers: list[dict[str, Any]]) -> pa.Table:
    """Validate the per-layer dicts and turn them into an Arrow table."""
    if not layers:
        raise StoreError("create_run needs at least one layer description")
    cols: dict[str, list[Any]] = {k: [] for k in LAYER_TYPES}
    for i, entry in enumerate(layers):
        extra = set(entry) - set(LAYER_TYPES)
        missing = [k for k in LAYER_TYPES if k not in entry and k not in LAYER_DEFAULTS]
        if extra or missing:
            raise StoreError(
                f"layers[{i}]: missing keys {missing}, unexpected keys {sorted(extra)}; "
                f"expected {list(LAYER_TYPES)}"
            )
        for key in LAYER_TYPES:
            cols[key].append(entry.get(key, LAYER_DEFAULTS.get(key)))
    if len(set(cols["layer"])) != len(layers):
        raise StoreError(f"layers: duplicate layer indices in {cols['layer']}")
    try:
        return pa.table({k: pa.array(v, LAYER_TYPES[k]) for k, v in cols.items()})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StoreError(f"layers: bad value: {exc}") from exc


def create_run(
    con: duckdb.DuckDBPyConnection,
    *,
    run_id: str | None,
    model: str,
    architecture: str,
    probe: str,
    n_experts: int,
    top_k: int,
    config: dict[str, Any],
    layers: list[dict[str, Any]],
) -> str:
    """Insert a ``running`` run and its layers in one transaction; return the run id."""
    now = utcnow()
    rid = run_id if run_id is not None else new_run_id(now)
    if not isinstance(rid, str) or not rid.strip():
        raise StoreError(f"run_id must be a non-empty string, got {rid!r}")
    try:
        config_json = json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"run config must be JSON-serialisable: {exc}") from exc
    table = layers_table(layers)
    if first(con, "SELECT 1 FROM runs WHERE run_id = ?", [rid]):
        raise StoreError(f"run {rid!r} already exists; choose another run_id or delete_run({rid!r}) first")
    view = register(con, "layers", table)
    try:
        with transaction(con):
            con.execute(
                "INSERT INTO runs (run_id, model, architecture, probe, n_experts, top_k, created_at, "
                "status, config) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                [rid, model, architecture, probe, int(n_experts), int(top_k), now, config_json],
            )
            liveness.claim(con, rid)  # this process writes it (pid, host, heartbeat)
            insert_view(con, "layers", view, table, rid)
    finally:
        con.unregister(view)
    return rid


def set_status(con: duckdb.DuckDBPyConnection, run_id: str, status: str, error: str | None) -> None:
    """Move a run to ``status``; ``error`` is recorded (in config) only for ``failed``."""
    if status not in RUN_STATUSES:
        raise StoreError(f"unknown run status {status!r}; use one of {list(RUN_STATUSES)}")
    if error is not None and status != "failed":
        raise StoreError(f"an error message is only recorded with status 'failed', not {status!r}")
    with transaction(con):
        row = first(con, "SELECT status, config::VARCHAR FROM runs WHERE run_id = ?", [run_id])
        if row is None:
            raise unknown_run(con, run_id)
        old, config_json = str(row[0]), row[1]
        if status not in TRANSITIONS.get(old, frozenset(RUN_STATUSES)):
            raise StoreError(
                f"run {run_id!r} is {old!r} and cannot become {status!r}; set it to 'running' "
                "first (resume it), then mark it complete or failed"
            )
        config = json.loads(config_json) if config_json else {}
        config.pop("error", None)
        if status == "failed" and error is not None:
            config["error"] = error
        con.execute(
            "UPDATE runs SET status = ?, config = ? WHERE run_id = ?", [status, json.dumps(config), run_id]
        )
        if status == "running":  # (re)started: this process writes it now
            liveness.claim(con, run_id)


def run_info(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """The ``runs`` row as a dict, ``config`` parsed, ``error`` lifted out of it, and the status a reader
    should see (``interrupted`` for a running run whose process is gone: :mod:`workbench.store.liveness`)."""
    writer = ", pid, host, heartbeat_at" if liveness.has_writer_columns(con) else ""
    cur = con.execute(
        "SELECT run_id, model, architecture, probe, n_experts, top_k, created_at, status, "
        f"config::VARCHAR AS config{writer} FROM runs WHERE run_id = ?",
        [run_id],
    )
    rows = cur.fetchall()
    if not rows:
        raise unknown_run(con, run_id)
    row = rows[0]
    names = [d[0] for d in cur.description or []]
    info = dict(zip(names, row, strict=True))
    config = json.loads(info["config"]) if info["config"] else {}
    info["error"] = config.pop("error", None)
    info["config"] = config
    return liveness.observe(info)


def empty_unfinished_runs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Runs not complete that hold no prompt (failed, or killed before their first batch), oldest first.

    They have nothing to resume from and only clutter ``runs``. Parallel runs are left out: their
    rows may still sit in rank stores, which ``resume`` absorbs.
    """
    rows = con.execute(
        "SELECT run_id FROM runs r WHERE status IN ('failed', 'running')"
        " AND coalesce(json_extract(r.config, '$.parallel')::VARCHAR, 'null') = 'null'"
        " AND NOT EXISTS (SELECT 1 FROM prompts p WHERE p.run_id = r.run_id) ORDER BY created_at, run_id"
    ).fetchall()
    return [str(r[0]) for r in rows]
