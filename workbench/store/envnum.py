"""Reading a number of seconds from an environment variable, with the default for anything unusable.

Why one function: the store's waits and limits (the lock wait, the heartbeat age) are tuned from the
environment, and each must ignore a value that is not a finite number in its range rather than crash
or wait forever.
"""

from __future__ import annotations

import math
import os


def env_seconds(name: str, default: float, *, allow_zero: bool) -> float:
    """``$name`` as seconds when it is a finite number > 0 (or >= 0 with ``allow_zero``), else ``default``."""
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        return default
    return value
