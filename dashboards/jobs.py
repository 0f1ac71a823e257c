"""Long jobs of the dashboard (the lab, circuits) and the model they run on.

Why threads and not Dash's usual subprocesses: the attached model is loaded **once per app**
(``create_app(db, model=...)``) and lives in the server process. Dash's ``DiskcacheManager``
forks a process per job; a forked child cannot use a CUDA model, and forking a threaded server
that holds a torch thread pool is fragile. :class:`ThreadJobManager` keeps ``DiskcacheManager``'s
protocol (results and progress go through a ``diskcache.Cache``; the browser polls for them)
but runs each job in a thread of the server process, so every job sees the one loaded model.

Interventions install hooks on that shared model, so two jobs must never overlap on it:
every job holds :data:`MODEL_LOCK` while it runs the model (a second one waits, and says so).

A thread cannot be killed, so cancelling is cooperative: Dash's cancel (a Cancel button, or a
new run replacing an old one) calls :meth:`ThreadJobManager.terminate_job`, which sets the job's
flag; the job calls :func:`check_cancelled` between its steps (the lab does so in its progress
report) and stops there with :class:`JobCancelled`, releasing the model and its hooks on the way out.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dash import DiskcacheManager

__all__ = [
    "MODEL_LOCK",
    "Attached",
    "JobCancelled",
    "ThreadJobManager",
    "attach_model",
    "cancellable",
    "check_cancelled",
    "job_progress",
]

MODEL_LOCK = threading.Lock()
"""Held while a job runs the attached model (interventions hook into the shared modules)."""


_LOCAL = threading.local()
"""The running job's cancel flag, per job thread (absent outside jobs)."""


class JobCancelled(BaseException):
    """The job was cancelled; raised by :func:`check_cancelled` between steps.

    A ``BaseException`` (as ``asyncio.CancelledError``), so the error guards that turn an
    ``Exception`` into a message on the page (``guarded``) let it through to the job's top.
    """


def check_cancelled() -> None:
    """Raise :class:`JobCancelled` if the job running in this thread was cancelled (no-op outside jobs)."""
    flag = getattr(_LOCAL, "cancel", None)
    if flag is not None and flag.is_set():
        raise JobCancelled("cancelled")


def job_progress(set_progress: Callable[[tuple[str, str, str]], None]) -> Callable[[int, int, str], None]:
    """The ``progress(i, total, what)`` a job reports through: a cancellation point, then Dash's progress."""

    def progress(i: int, total: int, what: str) -> None:
        check_cancelled()  # between steps: a cancelled job stops here (and releases the model)
        set_progress((str(i), str(total), what))

    return progress


@contextmanager
def cancellable(model: Any) -> Iterator[None]:
    """Make every forward pass of ``model`` a cancellation point while the block runs.

    Jobs such as circuits spend minutes inside library calls (one ablation per expert) with no
    step of their own to check in between; a forward pre-hook that calls :func:`check_cancelled`
    stops them at the next pass. The hook is removed in ``finally``, and interventions restore
    the model on the way out, as for any exception.
    """
    handle = model.register_forward_pre_hook(lambda _module, _args: check_cancelled())
    try:
        yield
    finally:
        handle.remove()


@dataclass
class Attached:
    """The app's ``--model``: its name, the loaded model, or why it could not be loaded."""

    name: str | None = None
    loaded: Any = None  # workbench.models.loading.LoadedModel
    error: str | None = None


def attach_model(model: Any) -> Attached:
    """Load ``model`` once for the app: None (no lab), a zoo name or path, or a ``LoadedModel``.

    A model that fails to load does not stop the read-only pages: the failure is kept and the
    lab and circuits pages show it.
    """
    if model is None:
        return Attached()
    if not isinstance(model, str):
        return Attached(name=str(getattr(model, "name", type(model).__name__)), loaded=model)
    from workbench.models.loading import load_model

    try:
        return Attached(name=model, loaded=load_model(model))
    except Exception as exc:  # shown in the lab: a wrong --model must not take the dashboard down
        return Attached(name=model, error=f"model {model!r} could not be loaded: {exc}")


class ThreadJobManager(DiskcacheManager):
    """``DiskcacheManager`` whose jobs run in threads of the server process (module docstring).

    Job ids are small integers (not process ids), so nothing of Dash's process handling can
    reach a real process. A thread cannot be killed: a cancelled job gets its flag set and stops
    at its next :func:`check_cancelled`; whatever it returns afterwards is dropped by Dash.
    """

    def __init__(self, cache: Any = None, expire: int | None = None) -> None:
        # dash's __init__ is unannotated; mypy gives super() calls no module name, so
        # untyped_calls_exclude (pyproject.toml) cannot cover this one call.
        super().__init__(cache, expire=expire)  # type: ignore[no-untyped-call]
        self._ids = itertools.count(1)
        self._jobs: dict[int, tuple[threading.Thread, str, threading.Event]] = {}
        self._guard = threading.Lock()

    def call_job_fn(self, key: str, job_fn: Any, args: Any, context: Any) -> int:
        """Start ``job_fn`` in a daemon thread; returns the job id the browser polls with."""
        cancel = threading.Event()
        progress_key = self._make_progress_key(key)

        def run() -> None:
            _LOCAL.cancel = cancel
            job_fn(key, progress_key, args, context)

        thread = threading.Thread(target=run, daemon=True, name=f"wb-job-{key[:8]}")
        with self._guard:
            job = next(self._ids)
            self._jobs[job] = (thread, key, cancel)
        thread.start()
        return job

    def cancel_requested(self, job: Any) -> bool:
        """Whether ``job`` was asked to stop (tests, status)."""
        with self._guard:
            entry = self._jobs.get(int(job))
        return entry is not None and entry[2].is_set()

    def job_running(self, job: Any) -> bool:
        """True while the thread runs, or while its result waits to be read.

        The second part closes a race of Dash's polling: a job that finishes between the
        result check and this call would otherwise look cancelled and its result be lost.
        """
        with self._guard:
            entry = self._jobs.get(int(job))
        if entry is None:
            return False
        thread, key, _cancel = entry
        if thread.is_alive() or self.result_ready(key):
            return True
        with self._guard:
            self._jobs.pop(int(job), None)
        return False

    def terminate_job(self, job: Any) -> None:
        """Ask the job to stop at its next step (its flag), and forget it once its thread has ended."""
        if job is None:
            return
        with self._guard:
            entry = self._jobs.get(int(job))
            if entry is None:
                return
            entry[2].set()
            if not entry[0].is_alive():
                self._jobs.pop(int(job), None)

    def terminate_unhealthy_job(self, job: Any) -> bool:
        """Threads are never unhealthy in Dash's sense (a zombie process): nothing to do."""
        return False
