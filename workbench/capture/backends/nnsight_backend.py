"""Capture through nnsight 0.8: one trace per batch, the same records as the hooks backend.

``nnsight.NNsight(model)`` wraps the model in a tree of envoys, one per module, reachable by the
module's own dotted path. Each batch is one ``with wrapped.trace(...)`` block whose body reads, in
execution order and layer by layer, the MoE block's input (only for expert stats), the router's
output and the experts module's call arguments (only when the family reads its selection there),
and finally the traced call's result. The body keeps what it read in a list marked with
``nnsight.save`` (nnsight 0.8 hands back only saved values from the outermost trace); decoding
happens after the trace with the same :mod:`workbench.models.decode` functions the hooks backend
uses, so the records are identical.

The traced call is :func:`workbench.models.forward.model_forward` on the wrapped model (passed to
``trace`` as ``fn``), so the model sees exactly the keyword arguments every other backend passes.

Side effect: nnsight instruments every module of the model in place (it installs an inert
controller as each module's ``forward``; torch hooks still work). The instrumentation is not undone
by :meth:`NNsightBackend.close`; it costs nothing outside a trace.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import nnsight
import torch
from nnsight import Envoy
from torch import nn

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

#: The path nnsight gives the root envoy; a module at torch path ``a.b`` is the envoy ``model.a.b``.
ROOT_PATH = "model"


@dataclass
class _LayerEnvoys:
    """One MoE layer and the envoys of its block, router and experts module."""

    layer: MoELayer
    block: Envoy
    router: Envoy
    experts: Envoy

    @property
    def reads_experts(self) -> bool:
        return self.layer.family.selection == "experts_args"


def _envoy_index(wrapped: Envoy, model: nn.Module) -> dict[int, Envoy]:
    """Map each module (by identity) to its envoy, through the envoys' dotted paths."""
    by_path = dict(wrapped.named_modules())
    index: dict[int, Envoy] = {}
    for name, module in model.named_modules():
        envoy = by_path.get(f"{ROOT_PATH}.{name}" if name else ROOT_PATH)
        if envoy is not None:
            index[id(module)] = envoy
    return index


def _envoy_for(index: dict[int, Envoy], module: nn.Module, what: str, layer: MoELayer) -> Envoy:
    envoy = index.get(id(module))
    if envoy is None:
        raise ValueError(
            f"layer {layer.layer} ({layer.path}): its {what} ({type(module).__name__}) is not a "
            "submodule of the model handed to the nnsight backend; discover the layers on this model"
        )
    return envoy


def _first_input(call: tuple[tuple[Any, ...], dict[str, Any]]) -> torch.Tensor:
    args, kwargs = call
    hidden = args[0] if args else kwargs["hidden_states"]
    return hidden


class NNsightBackend:
    """Capture by tracing the model with nnsight; records identical to :class:`HooksBackend`."""

    name = "nnsight"

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
        self.wrapped = nnsight.NNsight(model)
        index = _envoy_index(self.wrapped, model)
        self.points = [
            _LayerEnvoys(
                layer=layer,
                block=_envoy_for(index, layer.block, "MoE block", layer),
                router=_envoy_for(index, layer.router, "router", layer),
                experts=_envoy_for(index, layer.experts, "experts module", layer),
            )
            for layer in layers
        ]
        self._forward = functools.partial(model_forward, model)

    def _trace(self, batch: Batch) -> tuple[list[tuple[Any, Any, Any]], torch.Tensor]:
        """One traced forward; returns, per layer, (block call, router output, experts call)."""
        points = self.points
        want_block = self.expert_stats
        # The body below is compiled from this file's source by nnsight and run interleaved with
        # the forward pass: every read waits for its module, so reads must follow execution order.
        with self.wrapped.trace(batch, fn=self._forward) as tracer:
            seen = nnsight.save([])
            for point in points:
                block_call = point.block.inputs if want_block else None
                router_out = point.router.output
                experts_call = point.experts.inputs if point.reads_experts else None
                seen.append((block_call, router_out, experts_call))
            lm_logits = nnsight.save(tracer.result)
        return seen, lm_logits

    def _routing(self, point: _LayerEnvoys, router_out: Any, experts_call: Any) -> Routing:
        layer, fam = point.layer, point.layer.family
        logits = None
        if self.want_logits:
            logits = router_logits(fam, router_out, layer.n_experts).detach()
        if fam.selection == "router":
            indices, weights = router_selection(fam, router_out, layer.top_k, layer.n_experts)
        else:
            if experts_call is None:
                raise RuntimeError(
                    f"layer {layer.layer} ({layer.path}): the experts module did not run; "
                    "the adapter's family does not match this block"
                )
            args, kwargs = experts_call
            indices, weights = experts_selection(fam, args, kwargs)
        k = layer.top_k
        idx, w = sort_descending(indices.detach().reshape(-1, k), weights.detach().reshape(-1, k).float())
        return Routing(logits=logits, indices=idx, weights=w)

    def run(self, batch: Batch) -> BatchCapture:
        seen, lm_logits = self._trace(batch)
        if len(seen) != len(self.points):
            raise RuntimeError(
                f"nnsight trace returned {len(seen)} of {len(self.points)} MoE layers; "
                "a router or experts module did not run"
            )
        capture = BatchCapture(
            routing={
                point.layer.layer: self._routing(point, router_out, experts_call)
                for point, (_, router_out, experts_call) in zip(self.points, seen, strict=True)
            },
            nll=next_token_nll(lm_logits, batch.input_ids, batch.mask),
        )
        if self.expert_stats:
            for point, (block_call, _, _) in zip(self.points, seen, strict=True):
                hidden = _first_input(block_call).detach()
                route = capture.routing[point.layer.layer]
                capture.stats[point.layer.layer] = compute_stats(point.layer, hidden, route.indices)
        return capture

    def close(self) -> None:
        """Drop the envoys; the model keeps nnsight's (inert) instrumentation."""
        self.points = []


__all__ = ["NNsightBackend"]
