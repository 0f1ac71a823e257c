"""The torch-hooks mechanism: each site becomes plain forward hooks on its layer's modules.

Per site: a forward pre-hook on the MoE block (only when the site reads the block's input), a forward
hook on the router (its return value replaces the router's output when not None), a forward pre-hook
on the experts module (replaces its arguments when not None) and, when asked, a forward hook on the
experts module's output. Writing sites are registered with ``prepend=True`` so they run before any
reading hooks already on the same modules: capture then records the routing the model actually used.
Closing removes every handle, which leaves the modules' hook dicts exactly as they were.

Hooks only hand device tensors to the sites (no host copies), so a GPU never stalls in the forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from workbench.models.hooking.base import HookBase, LayerSite


class TorchHooks(HookBase):
    """Sites as torch forward hooks; a plain ``model(...)`` call inside the lifetime runs them too."""

    name = "hooks"

    def __init__(self, model: nn.Module, sites: Sequence[LayerSite]) -> None:
        self.handles: list[RemovableHandle] = []
        super().__init__(model, sites)

    def _attach(self) -> None:
        for site in self.sites:
            self._register(site)

    def _register(self, site: LayerSite) -> None:
        layer, first = site.layer, site.writes

        def block_pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            site.on_block_input(args, kwargs)

        def router_post(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            return site.on_router_output(args, kwargs, output)

        def experts_pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return site.on_experts_input(args, kwargs)

        def experts_post(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
            return site.on_experts_output(output)

        if site.reads_block_input:
            self.handles.append(
                layer.block.register_forward_pre_hook(block_pre, with_kwargs=True, prepend=first)
            )
        self.handles.append(layer.router.register_forward_hook(router_post, with_kwargs=True, prepend=first))
        if site.reads_experts_input:
            self.handles.append(
                layer.experts.register_forward_pre_hook(experts_pre, with_kwargs=True, prepend=first)
            )
        if site.reads_experts_output:
            self.handles.append(layer.experts.register_forward_hook(experts_post, prepend=first))

    def _detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The hooks are live for the whole lifetime, so this is just ``fn(*args, **kwargs)``."""
        return fn(*args, **kwargs)


__all__ = ["TorchHooks"]
