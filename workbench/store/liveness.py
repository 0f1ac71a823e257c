"""Is a ``running`` run still being written? The capture's process id, host and heartbeat (schema v6).

A capture records in its ``runs`` row the process that writes it (``pid``, ``host``) when it creates or
resumes the run, and refreshes ``heartbeat_at`` in the transaction of every batch it writes (no
transaction of its own). A reader then tells a live capture from one whose process died (killed,
out of memory, a closed laptop), which the stored status alone cannot: a crash leaves it ``running``.

A ``running`` run reads as ``interrupted`` when

- its process is gone on this host: no process with that pid, or one that started after the run's
  last heartbeat (the pid was reused);
- it was written from another host and its last heartbeat is older than :func:`stale_after_s`
  (:data:`STALE_AFTER_S`, or ``$MOE_WORKBENCH_STALE_S``): a process on another machine cannot be
  asked, so a long silence is taken as death. A batch that takes longer than that on another host
  reads as interrupted while it computes; raise the limit for such models.

A run that recorded no pid (captured before schema v6, or written by a tool that does not claim
runs) keeps the stored status. ``interrupted`` is never stored: it is what readers report
(``Store.runs()``, ``Store.run()``, ``moe-workbench runs``, the notebook API and the dashboard), and
``moe-workbench resume`` finishes such a run.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timedelta, timezone
from typing import Any

import duckdb
import polars as pl

from workbench.store.envnum import env_seconds

__all__ = [
    "INTERRUPTED",
    "STALE_AFTER_S",
    "beat",
    "claim",
    "finish_hint",
    "has_writer_columns",
    "interrupted_runs",
    "observe",
    "observed_status",
    "stale_after_s",
    "with_observed_status",
]

INTERRUPTED = "interrupted"
"""The status readers report for a ``running`` run whose process is gone (never stored)."""

STALE_AFTER_S = 900.0
"""Seconds without a heartbeat after which a run written from another host reads as interrupted."""

_ENV = "MOE_WORKBENCH_STALE_S"


def stale_after_s() -> float:
    """The heartbeat age limit for runs of other hosts: ``$MOE_WORKBENCH_STALE_S`` or :data:`STALE_AFTER_S`."""
    return env_seconds(_ENV, STALE_AFTER_S, allow_zero=False)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def has_writer_columns(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``runs`` has the v6 writer columns (a writable open migrates every store to v6; tests
    simulating an older release, tests/store_support.schema_upto, write stores without them)."""
    row = con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'runs' AND column_name = 'heartbeat_at'"
    ).fetchone()
    return bool(row and row[0])


def claim(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Record this process as the writer of ``run_id`` (pid, host) with a fresh heartbeat."""
    if has_writer_columns(con):
        con.execute(
            "UPDATE runs SET pid = ?, host = ?, heartbeat_at = ? WHERE run_id = ?",
            [os.getpid(), socket.gethostname(), _now(), run_id],
        )


def beat(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Refresh ``run_id``'s heartbeat; called inside the transaction of the batch being written."""
    if has_writer_columns(con):
        con.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", [_now(), run_id])


def _process_start(pid: int) -> datetime | None:
    """When process ``pid`` started (naive UTC), from /proc; None where /proc cannot say (not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        ticks = int(fields[19])  # field 22 of stat(5), counted after the ")" that ends the command name
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return datetime.fromtimestamp(started, timezone.utc).replace(tzinfo=None)


def _alive(pid: int, since: datetime | None) -> bool:
    """Whether process ``pid`` exists on this host and could be the one that beat at ``since``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OSError:
        return False
    started = _process_start(pid)
    # a process that started after the last heartbeat cannot have written it: the pid was reused
    return not (started is not None and since is not None and started > since + timedelta(seconds=2))


def observed_status(
    status: str,
    pid: int | None,
    host: str | None,
    heartbeat_at: datetime | None,
    *,
    this_host: str | None = None,
    now: datetime | None = None,
) -> str:
    """``status`` as a reader should report it: ``interrupted`` for a ``running`` run whose writer is gone."""
    if status != "running" or pid is None:
        return status
    if host is None or host == (this_host or socket.gethostname()):
        return status if _alive(int(pid), heartbeat_at) else INTERRUPTED
    if heartbeat_at is None:
        return status
    age = ((now or _now()) - heartbeat_at).total_seconds()
    return INTERRUPTED if age > stale_after_s() else status


def observe(info: dict[str, Any]) -> dict[str, Any]:
    """A run's info dict (``Store.run``) with its observed status (idempotent)."""
    info["status"] = observed_status(
        str(info.get("status")), info.get("pid"), info.get("host"), info.get("heartbeat_at")
    )
    return info


def with_observed_status(runs: pl.DataFrame) -> pl.DataFrame:
    """A ``runs`` frame with each row's observed status (idempotent; frames without pid are returned as is)."""
    if runs.height == 0 or not {"status", "pid", "host", "heartbeat_at"} <= set(runs.columns):
        return runs
    host = socket.gethostname()
    statuses = [
        observed_status(str(status), pid, h, beat_at, this_host=host)
        for status, pid, h, beat_at in runs.select("status", "pid", "host", "heartbeat_at").iter_rows()
    ]
    return runs.with_columns(pl.Series("status", statuses, dtype=runs.schema["status"]))


def finish_hint(db: object, run_id: str, config: dict[str, Any] | str | None = None) -> str:
    """How to finish an interrupted run, as a clause: ``moe-workbench resume`` for a capture (its
    ``config`` holds the capture options that resume re-reads). A run another writer made
    (``import-routing``) has none, and resume cannot finish it. ``config`` may be the stored JSON text."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    if isinstance(config, dict) and "options" not in config:
        return (
            f"it is not a capture, so resume cannot finish it; moe-workbench runs --db {db} --prune "
            "removes it if it holds no rows"
        )
    return f"finish it with moe-workbench resume --db {db} --run {run_id}"


def interrupted_runs(runs: pl.DataFrame) -> list[str]:
    """Ids of the runs of an observed ``runs`` frame (:func:`with_observed_status`) that read as interrupted."""
    if runs.height == 0:
        return []
    return [str(r) for r in runs.filter(pl.col("status") == INTERRUPTED)["run_id"].to_list()]
