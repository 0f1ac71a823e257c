"""What the adapter records for one MoE layer: a reading site that takes a family's router output and
the selection the block hands its experts module.

One implementation serves the ``hooks`` and ``nnsight`` capture backends (through the mechanisms in
:mod:`workbench.models.hooking`) and the load-time routing self-check
(:mod:`workbench.models.routing_check`), so the check verifies exactly what capture will store.
"""

from __future__ import annotations

from typing import Any

import torch

from workbench.models.decode import (
    Routing,
    experts_selection,
    router_logits,
    router_selection,
    sort_descending,
)
from workbench.models.discovery import MoELayer


class RoutingTap:
    """Collects one layer's router output, applied selection and (optionally) its MoE input.

    A :class:`~workbench.models.hooking.base.LayerSite` that only reads: every callback returns None
    and only stashes device tensors; :meth:`routing` turns them into the record.
    """

    writes = False
    reads_experts_output = False

    def __init__(self, layer: MoELayer, want_logits: bool, want_input: bool) -> None:
        self.layer = layer
        self.want_logits = want_logits
        self.want_input = want_input
        self.reads_block_input = want_input
        self.reads_experts_input = layer.family.selection == "experts_args"
        self.reset()

    def reset(self) -> None:
        self.logits: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None

    def on_block_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self.hidden = hidden.detach()

    def on_router_output(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        fam, layer = self.layer.family, self.layer
        if self.want_logits or fam.selection == "router":
            self.logits = router_logits(fam, output, layer.n_experts).detach()
        if fam.selection == "router":
            idx, w = router_selection(fam, output, layer.top_k, layer.n_experts)
            self.indices, self.weights = idx.detach(), w.detach()

    def on_experts_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.layer.family.selection == "experts_args":
            idx, w = experts_selection(self.layer.family, args, kwargs)
            self.indices, self.weights = idx.detach(), w.detach()

    def on_experts_output(self, output: Any) -> None:
        """Nothing to record there (:attr:`reads_experts_output` is False); part of the site protocol."""
        return None

    def routing(self) -> Routing:
        if self.indices is None or self.weights is None:
            raise RuntimeError(
                f"layer {self.layer.layer} ({self.layer.path}): the router or experts module did not run; "
                "the adapter's family does not match this block"
            )
        k = self.layer.top_k
        idx, w = sort_descending(self.indices.reshape(-1, k), self.weights.reshape(-1, k).float())
        return Routing(logits=self.logits if self.want_logits else None, indices=idx, weights=w)
