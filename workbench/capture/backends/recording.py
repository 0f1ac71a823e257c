"""Capture as a reading site per layer on one hook mechanism: what the hooks and nnsight backends share.

Each MoE layer gets a :class:`~workbench.models.tap.RoutingTap` (a site that only reads); the backend's
mechanism (:mod:`workbench.models.hooking`) attaches the taps and runs the forward pass, and
:meth:`RecordingBackend.run` turns what they stashed into a :class:`BatchCapture`. The decoding is the
taps' own code whichever mechanism drives them, so the backends' records are identical.
"""

from __future__ import annotations

import functools
from types import TracebackType
from typing import ClassVar, Self

from torch import nn

from workbench.capture.batching import Batch
from workbench.capture.records import BatchCapture, next_token_nll
from workbench.models.discovery import MoELayer
from workbench.models.expert_math import expert_stats as compute_stats
from workbench.models.forward import model_forward
from workbench.models.hooking import HookBase
from workbench.models.tap import RoutingTap


class RecordingBackend:
    """Capture through :attr:`mechanism`; ``close`` (or leaving ``with``) leaves the model as found."""

    name: str
    mechanism: ClassVar[type[HookBase]]

    def __init__(
        self,
        model: nn.Module,
        layers: list[MoELayer],
        *,
        expert_stats: bool = False,
        want_logits: bool = True,
    ) -> None:
        self.model = model
        self.expert_stats = expert_stats
        self.want_logits = want_logits
        self.taps = [RoutingTap(layer, want_logits, expert_stats) for layer in layers]
        self._forward = functools.partial(model_forward, model)
        self.attached = self.mechanism(model, self.taps)

    def run(self, batch: Batch) -> BatchCapture:
        """One forward pass of ``batch`` with the taps live; their routing as device tensors."""
        for tap in self.taps:
            tap.reset()
        lm_logits = self.attached.call(self._forward, batch)
        capture = BatchCapture(
            routing={tap.layer.layer: tap.routing() for tap in self.taps},
            nll=next_token_nll(lm_logits, batch.input_ids, batch.mask),
        )
        if self.expert_stats:
            for tap in self.taps:
                assert tap.hidden is not None
                route = capture.routing[tap.layer.layer]
                capture.stats[tap.layer.layer] = compute_stats(tap.layer, tap.hidden, route.indices)
        for tap in self.taps:
            tap.reset()
        return capture

    def close(self) -> None:
        """Detach the taps: no hooks or nnsight instrumentation is left on the model."""
        self.attached.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["RecordingBackend"]
