"""Capture backends: the same records through plain hooks, nnsight, or TransformerLens.

The hooks and nnsight backends are :class:`~workbench.capture.backends.recording.RecordingBackend`
subclasses: reading sites on the hook bases of :mod:`workbench.models.hooking`, which the
interventions' writing sites share. TransformerLens brings its own hook points.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from workbench.capture.backends.hooks import HooksBackend
from workbench.capture.batching import Batch
from workbench.capture.records import BatchCapture
from workbench.models.discovery import MoELayer


class Backend(Protocol):
    """Runs one batch through the model and returns its routing (device tensors)."""

    name: str

    def run(self, batch: Batch) -> BatchCapture: ...

    def close(self) -> None: ...


def make_backend(
    name: str,
    model: nn.Module,
    layers: list[MoELayer],
    *,
    expert_stats: bool = False,
    want_logits: bool = True,
) -> Backend:
    """Build the backend called ``name`` (hooks, nnsight or transformer_lens)."""
    if name == "hooks":
        return HooksBackend(model, layers, expert_stats=expert_stats, want_logits=want_logits)
    if name == "nnsight":
        from workbench.capture.backends.nnsight_backend import NNsightBackend

        return NNsightBackend(model, layers, expert_stats=expert_stats, want_logits=want_logits)
    if name == "transformer_lens":
        from workbench.capture.backends.tl_backend import TransformerLensBackend

        return TransformerLensBackend(model, layers, expert_stats=expert_stats, want_logits=want_logits)
    raise ValueError(f"unknown capture backend {name!r}; choose one of: hooks, nnsight, transformer_lens")


BACKENDS = ("hooks", "nnsight", "transformer_lens")

__all__ = ["BACKENDS", "Backend", "HooksBackend", "make_backend"]
