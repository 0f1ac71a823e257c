"""Sharing a store file between processes: who holds DuckDB's lock, and waiting out readers.

DuckDB lets one process write a file while no other process has it open, or many processes read
it. The dashboard reads (read-only, one short connection per request or analysis), so a capture
that starts while a page is loading finds the file held by a reader for a moment. Instead of
failing at once (and saying, wrongly, that the other process writes), a writable open:

1. learns from DuckDB's refusal whether the holder reads or writes (DuckDB adds "you would be
   able to open this database in read-only mode" only when the holder is a reader) and which
   process it is (its PID, and on Linux its command line);
2. when readers hold it, leaves a marker file beside the store (``<file>.writer-waiting``: PID and
   time) and retries for up to :func:`lock_wait_s` seconds, saying once that it waits and for whom;
   read-only opens in other processes see the marker and step back
   (:func:`waiting_writer`), so a busy dashboard cannot starve the capture;
3. when a writer holds it, or the wait runs out, raises :class:`StoreLockedError` saying who holds
   the file and what to do.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from workbench.store.envnum import env_seconds
from workbench.store.errors import StoreLockedError

__all__ = [
    "LOCK_WAIT_ENV",
    "LOCK_WAIT_S",
    "holder",
    "is_lock_error",
    "lock_wait_s",
    "locked_message",
    "waiting_writer",
    "with_write_lock",
]

LOCK_WAIT_S = 30.0
"""How long a writable open waits for readers (a dashboard's requests) to let go of the file."""
LOCK_WAIT_ENV = "MOE_WORKBENCH_LOCK_WAIT"
"""Environment variable overriding :data:`LOCK_WAIT_S` (seconds; 0 fails at once)."""
POLL_S = 0.1
MARKER_SUFFIX = ".writer-waiting"
READER_HINT = "would be able to open this database in read-only mode"
log = logging.getLogger("workbench.store")
T = TypeVar("T")


def lock_wait_s() -> float:
    """The wait for readers: ``$MOE_WORKBENCH_LOCK_WAIT`` when it is a number >= 0, else :data:`LOCK_WAIT_S`."""
    return env_seconds(LOCK_WAIT_ENV, LOCK_WAIT_S, allow_zero=True)


def is_lock_error(exc: BaseException) -> bool:
    """Whether DuckDB refused to open a file because another process holds its lock."""
    return isinstance(exc, duckdb.IOException) and "Could not set lock" in str(exc)


def holder(exc: BaseException) -> str:
    """The process DuckDB names in its lock error: ``PID n (its command line)``, or "another process"."""
    found = re.search(r"PID (\d+)", str(exc))
    if not found:
        return "another process"
    pid = found.group(1)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # not Linux, or the process has just gone
        return f"another process (PID {pid})"
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    # `python .../bin/moe-workbench serve ...` reads best from the script on
    if len(words) > 1 and Path(words[0]).name.startswith("python") and not words[1].startswith("-"):
        words = [Path(words[1]).name, *words[2:]]
    command = " ".join(" ".join(words).split())  # one line, even for `python -c "<several lines>"`
    command = command if len(command) <= 120 else command[:117] + "..."
    return f"another process (PID {pid}: {command})" if command else f"another process (PID {pid})"


def locked_message(path: Path, exc: BaseException, *, read_only: bool, waited_s: float = 0.0) -> str:
    """What to tell a user whose open of ``path`` was refused: who holds it, reading or writing, what to do."""
    who = holder(exc)
    if read_only:
        return (
            f"cannot read store {path}: {who} has it open for writing (DuckDB lets no other process open a "
            "file while one may write to it). Wait for that process (e.g. a running capture) to finish, or use "
            "another file with --db."
        )
    if READER_HINT in str(exc):
        waited = f" Waited {waited_s:.0f} s for it to let go." if waited_s else ""
        return (
            f"cannot write to store {path}: {who} has it open for reading (a dashboard or a notebook; "
            f"DuckDB lets one process write only while no other has the file open).{waited} A dashboard "
            "holds it only while it answers a request: try again; close a notebook's Store (store.close()), "
            f"set {LOCK_WAIT_ENV}=SECONDS to wait longer, or use another file with --db."
        )
    return (
        f"cannot write to store {path}: {who} has it open for writing (e.g. another capture; DuckDB allows "
        "one writer process). Wait for it to finish, or use another file with --db."
    )


def _marker(path: Path) -> Path:
    return path.with_name(path.name + MARKER_SUFFIX)


def waiting_writer(path: Path) -> int | None:
    """The PID of another live process waiting to write ``path`` (its marker is fresh), else None."""
    try:
        pid_text, _, stamp = _marker(path).read_text().partition(" ")
        pid, since = int(pid_text), float(stamp)
    except (OSError, ValueError):
        return None
    if pid == os.getpid() or time.time() - since > lock_wait_s() + 5.0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a writer killed while waiting: its marker is stale
    except PermissionError:
        pass  # alive, another user's
    return pid


def with_write_lock(path: Path, open_: Callable[[], T], *, wait_s: float | None = None) -> T:
    """``open_()`` (a writable DuckDB open of ``path``), retried while only readers hold the file.

    Gives up after ``wait_s`` seconds (default :func:`lock_wait_s`) with :class:`StoreLockedError`;
    a writer holding the file fails at once. While it waits, the marker tells readers to step back.
    """
    budget = lock_wait_s() if wait_s is None else wait_s
    started = time.monotonic()
    marker: Path | None = None
    warned = False
    try:
        while True:
            try:
                return open_()
            except duckdb.IOException as exc:
                if not is_lock_error(exc):
                    raise
                waited = time.monotonic() - started
                if READER_HINT not in str(exc) or waited >= budget:
                    raise StoreLockedError(
                        locked_message(path, exc, read_only=False, waited_s=waited)
                    ) from exc
                if not warned:
                    warned = True
                    marker = _leave_marker(path)
                    log.warning(
                        "store %s is open for reading by %s; waiting up to %.0f s for it to let go "
                        "(a dashboard lets go between requests)",
                        path, holder(exc), budget,
                    )  # fmt: skip
                time.sleep(POLL_S)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)


def _leave_marker(path: Path) -> Path | None:
    """Write the writer-waiting marker beside ``path``; None where the folder is read-only.

    Without a marker the writer still waits; readers just do not know to step back.
    """
    marker = _marker(path)
    try:
        marker.write_text(f"{os.getpid()} {time.time()}")
    except OSError:
        return None
    return marker
