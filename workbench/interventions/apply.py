"""``with intervene(model, specs): ...``: apply intervention specs for the duration of a block.

The context manager validates the specs against the model's MoE layers, installs one
:class:`~workbench.interventions.editor.LayerEditor` (a writing site) per touched layer through the
chosen backend's hook base (:mod:`workbench.models.hooking`: torch hooks or nnsight traces, the same
bases capture reads through), and on exit (normal or by exception) removes everything it installed.
Nothing is written to the model's parameters, buffers or module attributes at any point (top-k changes
are recomputed from the router's logits, not by setting ``top_k``), so leaving the block restores the
model bit-for-bit; the tests check parameters, buffers, attributes and hook dicts.

>>> with intervene(model, [Reroute({12: [3, 7]}), Scale({13: [0]}, s=2.0)]) as run:
...     logits = run(input_ids=ids).logits      # or model(input_ids=ids) with the hooks backend
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from torch import nn

from workbench.interventions.editor import LayerEditor
from workbench.interventions.plan import LayerPlan, make_plans
from workbench.interventions.specs import Intervention
from workbench.models.discovery import MoELayer, find_moe_layers
from workbench.models.hooking import HookBase, mechanism
from workbench.models.routing_check import check_routing

Backend = Literal["hooks", "nnsight"]
BACKENDS: tuple[Backend, ...] = ("hooks", "nnsight")


class Intervened:
    """What :func:`intervene` yields: the specs, their per-layer plans, and a forward runner.

    ``handle(*args, **kwargs)`` runs ``model(*args, **kwargs)`` under the interventions with either
    backend; with the hooks backend a plain ``model(...)`` call inside the block is intervened too.
    """

    def __init__(self, model: nn.Module, specs: list[Intervention], plans: list[LayerPlan], runner: HookBase):
        self.model = model
        self.specs = specs
        self.plans = plans
        self.backend: str = runner.name
        self._runner = runner

    @property
    def layers(self) -> list[int]:
        """The layer numbers the interventions touch."""
        return [plan.layer.layer for plan in self.plans]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._runner.forward(*args, **kwargs)


def _unwrap(model: Any, layers: Sequence[MoELayer] | None) -> tuple[nn.Module, list[MoELayer]]:
    """Accept a torch module or a :class:`~workbench.models.loading.LoadedModel`."""
    module = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(module, nn.Module):
        raise TypeError(f"intervene needs a torch model or a loaded model, got {type(model).__name__}")
    if layers is not None:
        return module, list(layers)
    loaded = None if isinstance(model, nn.Module) else getattr(model, "layers", None)
    return module, list(loaded) if isinstance(loaded, list) else find_moe_layers(module)


def _text_config(module: nn.Module) -> object:
    config = getattr(module, "config", None)
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


@contextmanager
def intervene(
    model: Any,
    specs: Intervention | Sequence[Intervention],
    *,
    backend: Backend = "hooks",
    layers: Sequence[MoELayer] | None = None,
    skip_routing_check: bool = False,
) -> Iterator[Intervened]:
    """Apply ``specs`` to ``model`` inside the ``with`` block; the model is restored on exit.

    ``specs`` is one spec or a list (applied in order; e.g. a Bias then a Reroute on the same
    layer). ``backend`` is ``"hooks"`` (plain torch hooks, default) or ``"nnsight"`` (forward passes
    through the yielded handle). Unknown layers or experts raise
    :class:`~workbench.interventions.specs.InterventionSpecError` listing what the model has; a
    semantics a routing family cannot apply exactly raises
    :class:`~workbench.interventions.select.UnsupportedIntervention` when the forward pass reaches it.

    Before anything is installed, each MoE block class is verified once per model to apply the routing
    its adapter describes (:func:`~workbench.models.routing_check.check_routing`; it raises
    :class:`~workbench.models.routing_check.RoutingCheckError`); ``skip_routing_check=True`` skips it.
    """
    module, found = _unwrap(model, layers)
    items = [specs] if isinstance(specs, Intervention) else list(specs)
    plans = make_plans(items, found)
    if not skip_routing_check:
        check_routing(module, found)
    config = _text_config(module)
    editors = [LayerEditor(plan, config) for plan in plans]
    if backend not in BACKENDS:
        raise ValueError(f"unknown intervention backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    with mechanism(backend)(module, editors) as runner:
        yield Intervened(module, items, plans, runner)
