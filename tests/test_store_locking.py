"""Sharing a store file between processes (issue 15 item 4): a writer waits for readers and says so,
readers step back while it waits, a writer holding the file fails the other writer at once, and
every refusal names who holds the file and whether it reads or writes.

The other process is a plain ``python -c`` holding a DuckDB connection, so no dashboard or model
is needed; ``test_capture_while_serving.py`` does the same with a real ``serve`` and a capture.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from workbench.store import Store, StoreLockedError, locking

pytestmark = pytest.mark.unit


@contextmanager
def holding(db: Path, *, read_only: bool, seconds: float = 60.0, until_marker: bool = False) -> Iterator[int]:
    """Another process holding ``db`` (reading or writing) for ``seconds``; yields its PID.

    ``until_marker``: it lets go 0.5 s after a writer's waiting marker appears (a dashboard's request ending).
    """
    code = textwrap.dedent(f"""
        import duckdb, os, time
        con = duckdb.connect({str(db)!r}, read_only={read_only})
        print("ready", flush=True)
        marker = {str(db) + locking.MARKER_SUFFIX!r}
        end = time.time() + {seconds}
        while time.time() < end and not ({until_marker} and os.path.exists(marker)):
            time.sleep(0.05)
        time.sleep(0.5 if {until_marker} else 0)
        con.close()
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "shared.duckdb"
    Store(path).close()
    return path


def test_a_writer_waits_for_a_reader_and_says_who_it_waits_for(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="workbench.store")
    with holding(db, read_only=True, until_marker=True) as pid:
        started = time.monotonic()
        with Store(db, lock_wait_s=30) as store:
            waited = time.monotonic() - started
            assert store.runs().height == 0
    assert 0.4 < waited < 25
    (said,) = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
    assert f"open for reading by another process (PID {pid}" in said and "waiting up to 30 s" in said
    assert not (db.parent / (db.name + locking.MARKER_SUFFIX)).exists()  # the marker goes with the wait


def test_readers_step_back_while_a_writer_waits(db: Path) -> None:
    opened: list[Store] = []
    writer = threading.Thread(target=lambda: opened.append(Store(db, lock_wait_s=60)))
    with holding(db, read_only=True):
        writer.start()
        marker = db.parent / (db.name + locking.MARKER_SUFFIX)
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists()
        # this process is the writer: its own marker does not stop its readers; another process's does
        assert locking.waiting_writer(db) is None
        code = f"from workbench.store import Store; Store({str(db)!r}, read_only=True)"
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert writer.is_alive()  # still waiting for the holder
    writer.join(timeout=30)  # the holder is gone: the writer is in
    assert "is waiting to write to it" in other.stderr and "Try again when it has finished" in other.stderr
    assert opened and not opened[0].read_only
    opened[0].close()


def test_a_writer_that_is_never_let_in_gets_a_true_message(db: Path) -> None:
    with holding(db, read_only=True) as pid, pytest.raises(StoreLockedError) as caught:
        Store(db, lock_wait_s=0.5)
    msg = str(caught.value)
    assert f"PID {pid}" in msg and "has it open for reading" in msg and "Waited 1 s" in msg
    assert "-c import duckdb, os, time con = duckdb.connect(" in msg  # its command line, on one line
    assert "\n" not in msg
    assert "open for writing" not in msg and locking.LOCK_WAIT_ENV in msg and "--db" in msg


def test_a_writer_holding_the_file_fails_readers_and_writers_at_once(db: Path) -> None:
    with holding(db, read_only=False) as pid:
        started = time.monotonic()
        with pytest.raises(StoreLockedError) as as_writer:
            Store(db, lock_wait_s=30)
        assert time.monotonic() - started < 5  # no point waiting out a capture
        with pytest.raises(StoreLockedError) as as_reader:
            Store(db, read_only=True)
    assert f"PID {pid}" in str(as_writer.value) and "has it open for writing" in str(as_writer.value)
    assert "cannot read store" in str(as_reader.value) and "has it open for writing" in str(as_reader.value)
    assert "open for reading" not in str(as_writer.value) + str(as_reader.value)


def test_a_stale_marker_is_ignored(db: Path) -> None:
    marker = db.parent / (db.name + locking.MARKER_SUFFIX)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    marker.write_text(f"{int(dead.stdout)} {time.time()}")
    assert locking.waiting_writer(db) is None  # its writer is gone
    marker.write_text(f"1 {time.time() - 3600}")
    assert locking.waiting_writer(db) is None  # older than any wait
    with Store(db, read_only=True) as store:
        assert store.runs().height == 0


def test_the_wait_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(locking.LOCK_WAIT_ENV, "120")
    assert locking.lock_wait_s() == 120
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv(locking.LOCK_WAIT_ENV, bad)
        assert locking.lock_wait_s() == locking.LOCK_WAIT_S
