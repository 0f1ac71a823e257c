"""One hook base per mechanism, shared by capture (sites that read) and interventions (sites that write).

- :mod:`~workbench.models.hooking.base`: the per-layer :class:`LayerSite` protocol and
  :class:`HookBase`, the attach / run / restore lifecycle (a context manager that leaves the model as
  found, also on exceptions).
- :mod:`~workbench.models.hooking.torch_hooks`: :class:`TorchHooks`, plain torch forward hooks.
- :mod:`~workbench.models.hooking.nnsight_hooks`: ``NNsightHooks``, nnsight traces (imported lazily
  through :func:`mechanism`: importing nnsight takes seconds).

It sits on the models floor so that capture (floor 2) and interventions (floor 4) can both use it; it
imports nothing above ``workbench.models``.
"""

from __future__ import annotations

from workbench.models.hooking.base import Call, HookBase, LayerSite
from workbench.models.hooking.torch_hooks import TorchHooks

#: The mechanisms by name, as the ``backend=`` options of capture and interventions spell them.
MECHANISMS = ("hooks", "nnsight")


def mechanism(name: str) -> type[HookBase]:
    """The hook base called ``name`` (``hooks`` or ``nnsight``)."""
    if name == "hooks":
        return TorchHooks
    if name == "nnsight":
        from workbench.models.hooking.nnsight_hooks import NNsightHooks

        return NNsightHooks
    raise ValueError(f"unknown hook mechanism {name!r}; choose one of: {', '.join(MECHANISMS)}")


__all__ = ["MECHANISMS", "Call", "HookBase", "LayerSite", "TorchHooks", "mechanism"]
