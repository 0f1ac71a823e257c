"""Non-blocking callbacks: a slow result is computed in the background while the page polls.

In :func:`dashboards.data.nonblocking` mode (every request of the app) an analysis that is not
ready raises ``Pending`` after starting its computation once; :func:`guarded` shows a
"computing …" placeholder; :func:`polled` callbacks keep their poller on until nothing is
pending. Finished tables can also be kept as parquet files (``data.configure``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dash
import duckdb
import polars as pl
import pytest
from test_dashboard import RUN, _text, dashboard_db

from dashboards import data
from dashboards.components import guarded
from dashboards.components.common import is_pending
from dashboards.components.pending import check, polled, poller
from dashboards.views import health
from workbench.store import StoreError

pytestmark = pytest.mark.unit

#: A hang guard, not a speed bound: a clean-clone run on a 2-core box shared with six other jobs
#: once took over 60 s for one background analysis here.
WAIT_S = 300.0


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(dashboard_db(tmp_path_factory.mktemp("dash-pending") / "dash.duckdb"))


@pytest.fixture(autouse=True)
def fresh() -> Any:
    data.clear_cache()
    data.configure(None)
    yield
    data.configure(None)
    data.clear_cache()


def _until_ready(fn: Any, *args: Any) -> Any:
    """Call ``fn`` in non-blocking mode until it stops raising Pending (what a polling page does)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        with data.nonblocking():
            try:
                return fn(*args)
            except data.Pending:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.02)


def test_nonblocking_starts_the_analysis_once_and_raises_pending(db: str) -> None:
    with data.nonblocking() as pending:
        with pytest.raises(data.Pending, match=f"computing load for run {RUN}"):
            data.analysis(db, RUN, "load")
        assert len(pending) == 1  # the token a page polls with
    tokens = list(pending)
    df = _until_ready(data.analysis, db, RUN, "load")
    assert isinstance(df, pl.DataFrame) and df.height > 0
    assert data.any_ready(tokens) and not data.any_ready(None)
    assert data.analysis(db, RUN, "load") is df  # blocking callers share the same cached table
    with data.nonblocking() as pending:
        assert data.analysis(db, RUN, "load") is df
    assert pending == []


def test_blocking_mode_is_the_default(db: str) -> None:
    assert data.analysis(db, RUN, "balance").height > 0  # tests, scripts and jobs simply wait


def test_guarded_shows_a_placeholder_and_polled_keeps_polling(db: str) -> None:
    with data.nonblocking():
        out = guarded(health.balance, db, RUN)
    assert is_pending(out) and "computing balance for run" in _text(out)

    def update(run: str) -> tuple[Any, ...]:
        return (guarded(health.balance, db, run),)

    callback = polled(update)
    first = callback(RUN, None)
    assert len(first) == 3 and first[1] and first[2] is False  # pending tokens; the interval goes on
    deadline = time.monotonic() + WAIT_S
    tick = 0
    while check(tick, first[1]) == (dash.no_update, dash.no_update):  # ticks: nothing rendered
        assert time.monotonic() < deadline
        tick += 1
        time.sleep(0.02)
    assert check(tick, first[1]) == (tick, None)  # ready: bump the signal, clear the tokens
    out = callback(RUN, tick)
    assert not is_pending(out[0]) and out[1] is None and out[2] is True  # filled; the interval goes off
    assert poller("health")[0].disabled is True


def test_failures_are_shown_and_transient_ones_retried(db: str, tmp_path: Path) -> None:
    with data.nonblocking(), pytest.raises(data.Pending):
        data.analysis(db, RUN, "no-such-analysis")
    deadline = time.monotonic() + WAIT_S
    while True:
        with data.nonblocking():
            out = guarded(data.analysis, db, RUN, "no-such-analysis")
        if not is_pending(out) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert "wb-message" in out.className and not is_pending(out)  # the failure, explained
    with data.nonblocking():  # a failure of the analysis itself is cached like a result
        assert not is_pending(guarded(data.analysis, db, RUN, "no-such-analysis"))
    # A store that cannot be read (here: not a DuckDB file) is transient: asked again, tried again.
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"not a database")
    with data.nonblocking(), pytest.raises(data.Pending):
        data.analysis(str(bad), RUN, "load")
    with pytest.raises((duckdb.Error, OSError, StoreError)):
        data.analysis(str(bad), RUN, "load")
    with data.nonblocking(), pytest.raises(data.Pending):
        data.analysis(str(bad), RUN, "load")


def test_tables_persist_on_disk_for_the_next_server(db: str, tmp_path: Path) -> None:
    data.configure(tmp_path / "cache")
    first = data.analysis(db, RUN, "load")
    files = list((tmp_path / "cache").glob("load-*.parquet"))
    assert len(files) == 1
    data.clear_cache()  # a new server process: memory is empty, the disk is not
    again = data.analysis(db, RUN, "load")
    assert again is not first and again.equals(first)


def test_prewarm_queues_the_page_analyses(db: str) -> None:
    data.prewarm(db, RUN, ("load", "balance"))
    deadline = time.monotonic() + WAIT_S
    while True:
        with data.nonblocking() as pending:
            for name in ("load", "balance"):
                try:
                    data.analysis(db, RUN, name)
                except data.Pending:
                    pass
        if not pending:
            break  # both were computed without anyone asking: first visits find them ready
        assert time.monotonic() < deadline
        time.sleep(0.05)
    data.prewarm(db, None)  # an empty store has no run to warm: nothing happens
