"""Long jobs of the dashboard (the lab, circuits) and the model they run on.

Why threads and not Dash's usual subprocesses: the attached model is loaded **once per app**
(``create_app(db, model=...)``) and lives in the server process. Dash's ``DiskcacheManager``
forks a process per job; a forked child cannot use a CUDA model, and forking a threaded server
that holds a torch thread pool is fragile. :class:`ThreadJobManager` keeps ``DiskcacheManager``'s
protocol (results and progress go through a ``diskcache.Cache``; the browser polls for them)
but runs each job in a thread of the server process, so every job sees the one loaded model.

Interventions install hooks on that shared model, so two jobs must never overlap on it:
every job holds :data:`MODEL_LOCK` while it runs the model (a second one waits, and says so).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any

from dash import DiskcacheManager

__all__ = ["MODEL_LOCK", "Attached", "ThreadJobManager", "attach_model"]

MODEL_LOCK = threading.Lock()
"""Held while a job runs the attached model (interventions hook into the shared modules)."""


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


class ThreadJobManager(DiskcacheManager):  # type: ignore[misc]
    """``DiskcacheManager`` whose jobs run in threads of the server process (module docstring).

    Job ids are small integers (not process ids), so nothing of Dash's process handling can
    reach a real process. A thread cannot be killed: a cancelled job runs to its end and its
    result is dropped.
    """

    def __init__(self, cache: Any = None, expire: int | None = None) -> None:
        super().__init__(cache, expire=expire)
        self._ids = itertools.count(1)
        self._jobs: dict[int, tuple[threading.Thread, str]] = {}
        self._guard = threading.Lock()

    def call_job_fn(self, key: str, job_fn: Any, args: Any, context: Any) -> int:
        """Start ``job_fn`` in a daemon thread; returns the job id the browser polls with."""
        thread = threading.Thread(
            target=job_fn, args=(key, self._make_progress_key(key), args, context), daemon=True
        )
        with self._guard:
            job = next(self._ids)
            self._jobs[job] = (thread, key)
        thread.start()
        return job

    def job_running(self, job: Any) -> bool:
        """True while the thread runs, or while its result waits to be read.

        The second part closes a race of Dash's polling: a job that finishes between the
        result check and this call would otherwise look cancelled and its result be lost.
        """
        with self._guard:
            entry = self._jobs.get(int(job))
        if entry is None:
            return False
        thread, key = entry
        if thread.is_alive() or self.result_ready(key):
            return True
        with self._guard:
            self._jobs.pop(int(job), None)
        return False

    def terminate_job(self, job: Any) -> None:
        """Forget the job (its thread, if still running, ends on its own)."""
        if job is None:
            return
        with self._guard:
            entry = self._jobs.get(int(job))
            if entry is not None and not entry[0].is_alive():
                self._jobs.pop(int(job), None)

    def terminate_unhealthy_job(self, job: Any) -> bool:
        """Threads are never unhealthy in Dash's sense (a zombie process): nothing to do."""
        return False
