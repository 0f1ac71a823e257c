"""Timing helpers of the capture benchmark: device-synchronised wall clocks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


class Clock:
    """Per-batch wall times of a single baseline run (synchronised on CUDA)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.laps: list[float] = []
        self._t = 0.0

    def start(self) -> None:
        sync(self.device)
        self._t = time.perf_counter()

    def lap(self) -> None:
        sync(self.device)
        self.laps.append(time.perf_counter() - self._t)

    @property
    def total(self) -> float:
        return sum(self.laps)

    @property
    def robust(self) -> float:
        """Median batch time × batches: a single run, minus other tenants' CPU spikes."""
        return float(np.median(self.laps)) * len(self.laps) if self.laps else 0.0
