"""What every hook mechanism shares: the per-layer site protocol and the attach/restore lifecycle.

A *site* is one MoE layer's four callbacks, in forward order: the MoE block's input, the router's
output, the experts module's input and the experts module's output. Capture's
:class:`~workbench.models.tap.RoutingTap` is a site that *reads* (every callback returns None, the
model runs unchanged); the interventions' ``LayerEditor`` is a site that *writes* (a callback returns
the replacement value). A mechanism (:class:`~workbench.models.hooking.torch_hooks.TorchHooks`,
:class:`~workbench.models.hooking.nnsight_hooks.NNsightHooks`) attaches sites to the modules the
adapter found (:class:`~workbench.models.discovery.MoELayer`) and drives them during forward passes.

:class:`HookBase` owns the lifecycle both directions need: attach in the constructor (rolled back if
attaching fails halfway), ``close`` restores the model as it was found and resets the sites, and as a
context manager it closes in ``finally``, so the model is left as found also when the block raises.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

from torch import nn

from workbench.models.discovery import MoELayer

#: A module call as hooks see it: positional arguments and keyword arguments.
Call = tuple[tuple[Any, ...], dict[str, Any]]


class LayerSite(Protocol):
    """One MoE layer's callbacks, driven in forward order by every mechanism in the same way.

    ``writes`` says which direction the site goes: a writing site runs before reading sites on the same
    modules (so capture records the intervened routing). The ``reads_*`` flags say which optional
    points the site needs; the router's output is always visited.
    """

    layer: MoELayer
    writes: bool
    reads_block_input: bool
    reads_experts_input: bool
    reads_experts_output: bool

    def reset(self) -> None: ...

    def on_block_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None: ...

    def on_router_output(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any: ...

    def on_experts_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call | None: ...

    def on_experts_output(self, output: Any) -> Any: ...


def _call_module(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return model(*args, **kwargs)


class HookBase(ABC):
    """Sites attached to ``model`` through one mechanism; ``close`` (or leaving ``with``) restores it.

    Subclasses implement :meth:`_attach` (may fail halfway: :meth:`_detach` must then undo the part
    that was done), :meth:`_detach` and :meth:`call`.
    """

    name: str = ""

    def __init__(self, model: nn.Module, sites: Sequence[LayerSite]) -> None:
        self.model = model
        self.sites = list(sites)
        self.closed = False
        try:
            self._attach()
        except BaseException:
            self.close()
            raise

    @abstractmethod
    def _attach(self) -> None:
        """Install the sites on the model's MoE modules."""

    @abstractmethod
    def _detach(self) -> None:
        """Remove everything :meth:`_attach` installed (also a partial install)."""

    @abstractmethod
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` (which calls the model) with the sites live; return its result."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)`` with the sites live."""
        return self.call(functools.partial(_call_module, self.model), *args, **kwargs)

    def close(self) -> None:
        """Leave the model as it was found and drop what the sites hold; safe to call twice."""
        self.closed = True
        try:
            self._detach()
        finally:
            for site in self.sites:
                site.reset()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
