"""The default backend: plain torch forward hooks on routers and experts modules.

Hooks only stash device tensors (no ``.cpu()``, ``.item()`` or ``.tolist()``), so a GPU never
stalls inside the forward pass. Every hook returns None, so the model's outputs are untouched.
"""

from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle

from workbench.capture.batching import Batch
from workbench.capture.records import BatchCapture, next_token_nll
from workbench.models.discovery import MoELayer
from workbench.models.expert_math import expert_stats as compute_stats
from workbench.models.forward import model_forward
from workbench.models.tap import RoutingTap


class HooksBackend:
    """Capture through ``register_forward_hook``/``register_forward_pre_hook``; removed on close."""

    name = "hooks"

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
        self.taps = [RoutingTap(layer, want_logits, expert_stats) for layer in layers]
        self.handles: list[RemovableHandle] = []
        for tap in self.taps:
            self.handles.append(tap.layer.router.register_forward_hook(tap.on_router))
            self.handles.append(tap.layer.experts.register_forward_pre_hook(tap.on_experts, with_kwargs=True))
            if expert_stats:
                self.handles.append(tap.layer.block.register_forward_pre_hook(tap.on_block, with_kwargs=True))

    def run(self, batch: Batch) -> BatchCapture:
        for tap in self.taps:
            tap.reset()
        lm_logits = model_forward(self.model, batch)
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
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


__all__ = ["HooksBackend"]
