"""The nnsight 0.8 mechanism: each forward is one ``trace`` whose body drives the sites.

``nnsight.NNsight(model)`` wraps the model in a tree of envoys, one per module, reachable by the
module's dotted path (the root envoy's path is ``model``). Each forward is one
``with wrapped.trace(...)`` block whose body visits, layer by layer and in execution order (nnsight
requires it: every read waits for its module), the MoE block's input, the router's input and output,
and the experts module's input and output, hands them to the site and assigns back what a writing
site returns. The body is compiled by nnsight from this file's source, so it stays plain loops.

Because only traced calls are intervened, forward passes go through :meth:`NNsightHooks.call` (or
:meth:`~workbench.models.hooking.base.HookBase.forward`); a plain ``model(...)`` call sees no sites.

Side effect, undone on close: wrapping instruments every module in place (an instance ``forward``
and ``__nnsight__``-style attributes). :meth:`NNsightHooks.close` deletes exactly the instance
attributes the wrapping added, so the modules are as they were before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
from nnsight import Envoy
from torch import nn

from workbench.models.discovery import MoELayer
from workbench.models.hooking.base import HookBase, LayerSite

#: The path nnsight gives the root envoy; a module at torch path ``a.b`` is the envoy ``model.a.b``.
ROOT_PATH = "model"


@dataclass
class _Point:
    """One site and the envoys of its layer's block, router and experts module."""

    site: LayerSite
    block: Envoy
    router: Envoy
    experts: Envoy


def envoy_index(wrapped: Envoy, model: nn.Module) -> dict[int, Envoy]:
    """Map each module of ``model`` (by identity) to its envoy, through the envoys' dotted paths."""
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
            "submodule of the model handed to nnsight; discover the layers on this model"
        )
    return envoy


class NNsightHooks(HookBase):
    """Sites driven inside nnsight traces; ``close`` removes nnsight's instrumentation."""

    name = "nnsight"

    def __init__(self, model: nn.Module, sites: Sequence[LayerSite]) -> None:
        self.points: list[_Point] = []
        self._before: dict[int, set[str]] = {}
        super().__init__(model, sites)

    def _attach(self) -> None:
        self._before = {id(m): set(vars(m)) for m in self.model.modules()}
        self.wrapped = nnsight.NNsight(self.model)
        index = envoy_index(self.wrapped, self.model)
        self.points = [
            _Point(
                site=site,
                block=_envoy_for(index, site.layer.block, "MoE block", site.layer),
                router=_envoy_for(index, site.layer.router, "router", site.layer),
                experts=_envoy_for(index, site.layer.experts, "experts module", site.layer),
            )
            for site in self.sites
        ]

    def _detach(self) -> None:
        """Delete the instance attributes the wrapping added to each module (its inert controllers)."""
        for module in self.model.modules():
            before = self._before.get(id(module))
            if before is None:
                continue
            for key in set(vars(module)) - before:
                delattr(module, key)
        self.points = []

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One traced ``fn(*args, **kwargs)`` with every site visited; returns ``fn``'s result."""
        if self.closed:
            raise RuntimeError("these nnsight hooks are closed; the model is no longer instrumented")
        points = self.points
        with self.wrapped.trace(*args, fn=fn, **kwargs) as tracer:
            for point in points:
                site = point.site
                if site.reads_block_input:
                    block_args, block_kwargs = point.block.inputs
                    site.on_block_input(block_args, block_kwargs)
                router_args, router_kwargs = point.router.inputs
                new_output = site.on_router_output(router_args, router_kwargs, point.router.output)
                if new_output is not None:
                    point.router.output = new_output
                if site.reads_experts_input:
                    experts_args, experts_kwargs = point.experts.inputs
                    new_inputs = site.on_experts_input(experts_args, experts_kwargs)
                    if new_inputs is not None:
                        point.experts.inputs = new_inputs
                if site.reads_experts_output:
                    new_out = site.on_experts_output(point.experts.output)
                    if new_out is not None:
                        point.experts.output = new_out
            result = nnsight.save(tracer.result)
        return result


__all__ = ["ROOT_PATH", "NNsightHooks", "envoy_index"]
