"""A running run whose writer is gone reads as `interrupted` (workbench/store/liveness.py).

The capture records pid/host at creation and resume and refreshes the heartbeat in each batch's own
transaction; readers (Store, the dashboard's data layer) derive the status on every call. The end
to end case, a capture killed with SIGKILL, is in tests/test_robustness.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.store_support import make_batch, new_run
from workbench.store import Store
from workbench.store.envnum import env_seconds
from workbench.store.liveness import INTERRUPTED, observed_status, stale_after_s, with_observed_status

pytestmark = pytest.mark.unit

HOST = socket.gethostname()


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # the store's timestamps are naive UTC


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of this host that the test can kill (a capture stand-in)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child
    child.kill()
    child.wait()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_this_host_asks_the_process() -> None:
    beat = _now()
    assert observed_status("running", os.getpid(), HOST, beat, this_host=HOST) == "running"
    assert observed_status("running", _dead_pid(), HOST, beat, this_host=HOST) == INTERRUPTED
    # a live process that started after the last heartbeat cannot have written it: the pid was reused
    long_ago = beat - timedelta(days=3650)
    assert observed_status("running", os.getpid(), HOST, long_ago, this_host=HOST) == INTERRUPTED


def test_another_host_goes_by_the_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    now = _now()
    limit = stale_after_s()
    fresh, stale = now - timedelta(seconds=limit - 60), now - timedelta(seconds=limit + 60)
    # the pid belongs to another machine: never looked up here (a dead pid here must not matter)
    assert observed_status("running", _dead_pid(), "elsewhere", fresh, this_host=HOST, now=now) == "running"
    assert observed_status("running", os.getpid(), "elsewhere", stale, this_host=HOST, now=now) == INTERRUPTED
    monkeypatch.setenv("MOE_WORKBENCH_STALE_S", str(limit + 120))  # a stated, adjustable limit
    assert observed_status("running", 1, "elsewhere", stale, this_host=HOST, now=now) == "running"


@pytest.mark.parametrize("status", ["complete", "failed"])
def test_only_running_runs_can_be_interrupted(status: str) -> None:
    assert observed_status(status, _dead_pid(), HOST, _now(), this_host=HOST) == status


def test_runs_without_a_writer_keep_their_status() -> None:
    """Runs of an older release recorded no pid: nothing to ask, the stored status stands."""
    assert observed_status("running", None, None, None, this_host=HOST) == "running"


def _set_writer(db: Path, run: str, **values: Any) -> None:
    with Store(db) as st:
        for column, value in values.items():
            st.con.execute(f"UPDATE runs SET {column} = ? WHERE run_id = ?", [value, run])


def test_store_records_the_writer_and_beats_in_each_batch(db: Path) -> None:
    with Store(db) as st:
        run = new_run(st, "r")
        pid, host, first = st.con.execute("SELECT pid, host, heartbeat_at FROM runs").fetchone()  # type: ignore[misc]
        assert (pid, host) == (os.getpid(), HOST) and first is not None
        st.write_batch(run, **make_batch([0, 1]))
        (second,) = st.con.execute("SELECT heartbeat_at FROM runs").fetchone()  # type: ignore[misc]
        assert second > first
        assert st.run(run)["status"] == "running"  # this process is alive
    _set_writer(db, "r", pid=_dead_pid())
    with Store(db, read_only=True) as st:
        assert st.run("r")["status"] == INTERRUPTED
        assert st.runs()["status"].to_list() == [INTERRUPTED]
    with Store(db) as st:  # a resume claims the run again for its own process
        st.set_status("r", "running")
        assert st.run("r")["status"] == "running" and st.run("r")["pid"] == os.getpid()
        st.set_status("r", "complete")
        assert with_observed_status(st.runs())["status"].to_list() == ["complete"]


def test_dashboard_sees_a_writer_die_without_the_file_changing(
    db: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """The dashboard caches reads per file version; a killed capture changes no byte of the file."""
    from dashboards import data
    from dashboards.views.runs import run_detail

    with Store(db) as st:
        new_run(st, "r")
    _set_writer(db, "r", pid=sleeper.pid, config='{"options": {}}')  # a capture's run: resume finishes it
    assert data.runs(str(db))["status"].to_list() == ["running"]
    assert data.run_info(str(db), "r")["status"] == "running"
    before = db.stat().st_mtime_ns
    sleeper.kill()
    sleeper.wait()
    assert db.stat().st_mtime_ns == before
    assert data.runs(str(db))["status"].to_list() == [INTERRUPTED]
    assert data.run_info(str(db), "r")["status"] == INTERRUPTED
    page = str(run_detail(str(db), "r"))
    assert "runs-interrupted" in page
    assert f"the process writing it is gone; finish it with moe-workbench resume --db {db} --run r." in page


@pytest.mark.parametrize(
    ("raw", "allow_zero", "want"),
    [("", False, 7.0), ("12", False, 12.0), ("0", False, 7.0), ("0", True, 0.0), ("-3", True, 7.0),
     ("nan", True, 7.0), ("inf", True, 7.0), ("soon", True, 7.0), (" 2.5 ", False, 2.5)],
)  # fmt: skip
def test_env_seconds_takes_only_a_usable_number(
    monkeypatch: pytest.MonkeyPatch, raw: str, allow_zero: bool, want: float
) -> None:
    monkeypatch.setenv("WB_TEST_SECONDS", raw)
    assert env_seconds("WB_TEST_SECONDS", 7.0, allow_zero=allow_zero) == want
