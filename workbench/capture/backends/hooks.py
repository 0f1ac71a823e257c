"""The default backend: plain torch forward hooks on routers and experts modules.

Hooks only stash device tensors (no ``.cpu()``, ``.item()`` or ``.tolist()``), so a GPU never
stalls inside the forward pass. Every hook returns None, so the model's outputs are untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from workbench.capture.batching import Batch
from workbench.capture.records import BatchCapture, next_token_nll
from workbench.models.decode import (
    Routing,
    experts_selection,
    router_logits,
    router_selection,
    sort_descending,
)
from workbench.models.discovery import MoELayer
from workbench.models.expert_math import expert_stats as compute_stats
from workbench.models.forward import model_forward


class _LayerTap:
    """Collects one layer's router output, applied selection and (optionally) its MoE input."""

    def __init__(self, layer: MoELayer, want_logits: bool, want_input: bool) -> None:
        self.layer = layer
        self.want_logits = want_logits
        self.want_input = want_input
        self.reset()

    def reset(self) -> None:
        self.logits: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None

    def on_router(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        fam, layer = self.layer.family, self.layer
        if self.want_logits or fam.selection == "router":
            self.logits = router_logits(fam, output, layer.n_experts).detach()
        if fam.selection == "router":
            idx, w = router_selection(fam, output, layer.top_k, layer.n_experts)
            self.indices, self.weights = idx.detach(), w.detach()

    def on_experts(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.layer.family.selection == "experts_args":
            idx, w = experts_selection(self.layer.family, args, kwargs)
            self.indices, self.weights = idx.detach(), w.detach()

    def on_block(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self.hidden = hidden.detach()

    def routing(self) -> Routing:
        if self.indices is None or self.weights is None:
            raise RuntimeError(
                f"layer {self.layer.layer} ({self.layer.path}): the router or experts module did not run; "
                "the adapter's family does not match this block"
            )
        k = self.layer.top_k
        idx, w = sort_descending(self.indices.reshape(-1, k), self.weights.reshape(-1, k).float())
        return Routing(logits=self.logits if self.want_logits else None, indices=idx, weights=w)


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
        self.taps = [_LayerTap(layer, want_logits, expert_stats) for layer in layers]
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
