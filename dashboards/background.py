"""The dashboard's background computations: a pool of worker processes, and the non-blocking mode.

Why: a callback must never wait for an analysis (seconds on a 1M-token run). :class:`Results`
is an LRU of futures — each key computed once, its future shared by every asker. Outside
:func:`nonblocking` a miss is computed inline and waited for (tests, scripts, background jobs);
inside it (every request of the app) a miss is handed to the pool and :class:`Pending` is raised,
which the pages show as "computing … for run R…" while they poll (:mod:`dashboards.components.pending`).

The pool is a few **processes**, spawned (never forked from the threaded server) and niced: an
analysis holds the GIL for much of its time, so in a thread of the server it would slow every
callback down; in its own process it only takes CPU, at a lower priority. If the processes cannot
start (a ``__main__`` without the ``if __name__ == "__main__"`` guard) it falls back to threads.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

import duckdb

from workbench.store import StoreError

__all__ = [
    "TRANSIENT",
    "WORKERS",
    "Pending",
    "Results",
    "Task",
    "begin_nonblocking",
    "end_nonblocking",
    "nonblocking",
]

WORKERS = 2
"""Background processes computing slow results (analyses use DuckDB's and polars' threads inside)."""
WORKER_NICE = 10
"""How much lower the workers' CPU priority is than the server's."""

log = logging.getLogger("dashboards")


class Pending(Exception):
    """A slow result is being computed in the background; ask again shortly (raised in :func:`nonblocking`)."""

    def __init__(self, what: str, run: str | None = None) -> None:
        self.what = what
        self.run = run
        super().__init__(f"computing {what}" + (f" for run {run}" if run else "") + "…")


TRANSIENT = (duckdb.Error, OSError, StoreError)
"""Failures not cached: the store may be readable again on the next request."""

_PENDING: ContextVar[list[str] | None] = ContextVar("wb_pending", default=None)
"""None: blocking (compute and wait). A list: non-blocking; it collects what is still being computed."""


@contextmanager
def nonblocking() -> Iterator[list[str]]:
    """Within it, a slow result that is not ready raises :class:`Pending`; yields the list of those."""
    pending: list[str] = []
    token = _PENDING.set(pending)
    try:
        yield pending
    finally:
        _PENDING.reset(token)


def begin_nonblocking() -> Token[list[str] | None]:
    """Enter non-blocking mode for a whole request (``create_app``'s ``before_request``); see :func:`end_nonblocking`."""
    return _PENDING.set([])


def end_nonblocking(token: Token[list[str] | None]) -> None:
    """Leave the mode :func:`begin_nonblocking` entered (``teardown_request``)."""
    try:
        _PENDING.reset(token)
    except ValueError:  # a token of another context (a server that moved the request): nothing to undo here
        _PENDING.set(None)


Task = tuple[Callable[..., Any], tuple[Any, ...]]
"""A computation the pool can run: a module-level function and picklable arguments."""


def _worker_init() -> None:
    """Pool processes run at a lower CPU priority, so the server answering callbacks comes first,
    and end when the server is gone (killed without its exit handlers: no orphans left computing)."""
    try:
        os.nice(WORKER_NICE)
    except OSError as exc:  # not permitted here: run at normal priority
        log.debug("could not lower the analysis worker's priority: %s", exc)
    # DuckDB draws progress bars on stdout for long queries; a worker's stdout is nobody's console.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="wb-parent-watch").start()


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling back to the server, else the same kind of error with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):
        for kind in (StoreError, ValueError, LookupError):
            if isinstance(exc, kind):
                return kind(str(exc))
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _run_task(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """In a pool process: ``fn(*args)``, with an error the server can unpickle."""
    try:
        return fn(*args)
    except Exception as exc:  # crosses a process boundary: keep its kind and message
        log.debug("background computation %s%r failed", getattr(fn, "__name__", fn), args, exc_info=True)
        raise _portable(exc) from None


class Results:
    """An LRU of futures: each key is computed once (inline, or in the pool), and shared by every asker.

    The pool is a small set of **processes** (spawned, never forked from the threaded server;
    niced): an analysis holds the GIL for much of its time, and in a thread of the server it would
    slow every callback down; in its own process it only takes CPU, at a lower priority.

    A failure is cached like a result (an analysis the run cannot support fails the same way next
    time), except a :data:`TRANSIENT` one (the store locked by a writer, a missing file): that is
    handed to whoever asks next and then forgotten, so the next request tries again.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Any, Future[Any]] = OrderedDict()
        self._tokens: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._pool: Executor | None = None
        self._threads = False

    def _executor(self) -> Executor:
        with self._lock:
            if self._pool is None:
                self._pool = (
                    ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="wb-analysis")
                    if self._threads
                    else ProcessPoolExecutor(
                        max_workers=WORKERS,
                        mp_context=multiprocessing.get_context("spawn"),
                        initializer=_worker_init,
                    )
                )
            return self._pool

    def _fall_back_to_threads(self, broken: Executor) -> None:
        """The processes could not start (e.g. a ``__main__`` without the ``if __name__`` guard): use threads."""
        with self._lock:
            if self._pool is broken:
                log.warning("analysis worker processes could not start; computing in threads instead")
                self._pool, self._threads = None, True
        broken.shutdown(wait=False, cancel_futures=True)

    def get(self, key: Any, task: Task, what: str, run: str | None) -> Any:
        """The value of ``key``, computed by ``task`` if new. Raises :class:`Pending` in non-blocking mode."""
        pending = _PENDING.get()
        with self._lock:
            future = self._items.get(key)
            owner = future is None
            if future is None:
                future = Future()
                self._items[key] = future
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
            else:
                self._items.move_to_end(key)
        if owner:
            if pending is None:
                _fill(future, task)
            else:
                self.submit(future, task)
        if not future.done() and pending is not None:
            token = hashlib.sha1(repr(key).encode()).hexdigest()[:16]
            with self._lock:
                self._tokens[token] = future
            pending.append(token)
            raise Pending(what, run)
        try:
            return future.result()
        except TRANSIENT:
            with self._lock:
                if self._items.get(key) is future:
                    del self._items[key]
            raise

    def any_ready(self, tokens: list[str]) -> bool:
        """Whether any of the pending computations ``tokens`` (from :func:`nonblocking`) has finished."""
        with self._lock:
            found = [self._tokens.get(t) for t in tokens]
            for t, f in zip(tokens, found, strict=True):
                if f is None or f.done():
                    self._tokens.pop(t, None)
        return any(f is None or f.done() for f in found)

    def submit(self, future: Future[Any], task: Task) -> None:
        """Compute ``future``'s value in the pool (a pool that cannot take it fails it with a StoreError)."""
        pool = self._executor()
        try:
            running = pool.submit(_run_task, *task)
        except BrokenProcessPool:
            self._fall_back_to_threads(pool)
            self.submit(future, task)
            return
        except (RuntimeError, OSError) as exc:  # interpreter or app shutting down; no processes left
            future.set_exception(StoreError(f"the dashboard cannot compute now: {exc}"))
            return
        if not future.running():
            future.set_running_or_notify_cancel()

        def copy(done: Future[Any]) -> None:
            if not done.cancelled() and isinstance(done.exception(), BrokenProcessPool):
                self._fall_back_to_threads(pool)
                self.submit(future, task)
            elif done.cancelled():
                future.set_exception(StoreError("the computation was cancelled (the dashboard is stopping)"))
            elif (error := done.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())

        running.add_done_callback(copy)

    def warm(self, key: Any, task: Task) -> None:
        """Queue ``key`` in the pool unless it is known already (server start)."""
        with self._lock:
            if key in self._items:
                return
            future: Future[Any] = Future()
            self._items[key] = future
        self.submit(future, task)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._tokens.clear()

    def shutdown(self) -> None:
        """Drop queued computations and stop the pool's processes (a running analysis is abandoned)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # shutdown() would wait for a running analysis; nobody needs it now
            if process.is_alive():
                process.terminate()


def _fill(future: Future[Any], task: Task) -> None:
    """Compute ``task`` in this thread into ``future`` (blocking mode)."""
    if not future.set_running_or_notify_cancel():
        return
    fn, args = task
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # handed to the askers: guarded() turns it into a message
        future.set_exception(exc)
