"""A writer thread that ingests batches while the next one computes.

The queue is bounded (default 2 batches): when the store falls behind, ``put`` blocks and compute
waits, so memory stays bounded by a few batches however many prompts stream through. An error in
the writer is re-raised in the producer at its next ``put`` or at ``close``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class StreamingWriter:
    """Run ``sink(item)`` for each queued item on a background thread."""

    def __init__(self, sink: Callable[[Any], None], max_pending: int = 2) -> None:
        self._sink = sink
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="moe-workbench-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:
                    self._sink(item)
            except BaseException as exc:  # re-raised in the producer thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, item: Any) -> None:
        """Queue ``item``; blocks while ``max_pending`` items wait (back-pressure)."""
        self._raise_pending()
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                self._raise_pending()

    def close(self) -> None:
        """Drain the queue, stop the thread, and raise any error the writer hit."""
        self._queue.put(_STOP)
        self._thread.join()
        self._raise_pending()
