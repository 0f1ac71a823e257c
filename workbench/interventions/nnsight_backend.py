"""Interventions through nnsight 0.8: the same :class:`LayerEditor` callbacks, inside a trace.

nnsight applies edits inside ``with NNsight(model).trace(...)`` blocks by assigning to an envoy's
``output`` or ``inputs``, so a forward pass under this backend must go through the handle that
:func:`workbench.interventions.intervene` yields (``handle(**inputs)``); a plain ``model(...)`` call is
not intervened. The trace body touches, layer by layer and in execution order, the block's input,
the router's input and output, and the experts module's input (and output, for Llama-4-style
layouts), hands them to the layer's editor and assigns back what it returns. Values are read in
plain loops (nnsight compiles the body from this file's source).

``NNsight(model)`` instruments every module in place (an instance ``forward`` and ``__nnsight__``);
:meth:`NNsightApplier.close` deletes exactly the instance attributes the wrapping added, so the
model's modules are as they were before.
"""

from __future__ import annotations

import functools
from typing import Any

import nnsight
from torch import nn

from workbench.interventions.editor import LayerEditor

#: nnsight's path for the root envoy: a torch module at ``a.b`` is the envoy ``model.a.b``.
ROOT_PATH = "model"


def _call(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return model(*args, **kwargs)


class NNsightApplier:
    """Runs traced forwards that apply the editors; ``close`` undoes nnsight's instrumentation."""

    name = "nnsight"

    def __init__(self, model: nn.Module, editors: list[LayerEditor]) -> None:
        self.model = model
        self.editors = editors
        self._before = {id(m): set(vars(m)) for m in model.modules()}
        self.points: list[tuple[LayerEditor, Any, Any, Any]] = []
        try:
            self.wrapped = nnsight.NNsight(model)
            by_path = dict(self.wrapped.named_modules())
            paths = {id(m): name for name, m in model.named_modules()}

            def envoy(module: nn.Module) -> Any:
                name = paths.get(id(module))
                if name is None:
                    raise ValueError(f"{type(module).__name__} is not a submodule of the intervened model")
                return by_path[f"{ROOT_PATH}.{name}" if name else ROOT_PATH]

            self.points = [
                (ed, envoy(ed.layer.block), envoy(ed.layer.router), envoy(ed.layer.experts)) for ed in editors
            ]
        except BaseException:
            self.close()
            raise

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """One traced forward of the model on ``args``/``kwargs`` with the interventions applied."""
        points = self.points
        with self.wrapped.trace(*args, fn=functools.partial(_call, self.model), **kwargs) as tracer:
            for ed, block, router, experts in points:
                ed.reset()
                block_args, block_kwargs = block.inputs
                ed.on_block_input(block_args, block_kwargs)
                router_args, router_kwargs = router.inputs
                new_output = ed.on_router_output(router_args, router_kwargs, router.output)
                if new_output is not None:
                    router.output = new_output
                if ed.family.selection == "experts_args":
                    experts_args, experts_kwargs = experts.inputs
                    new_inputs = ed.on_experts_input(experts_args, experts_kwargs)
                    if new_inputs is not None:
                        experts.inputs = new_inputs
                if ed.weights_on_input:
                    new_out = ed.on_experts_output(experts.output)
                    if new_out is not None:
                        experts.output = new_out
            result = nnsight.save(tracer.result)
        return result

    def close(self) -> None:
        """Remove the instance attributes nnsight added to each module (its inert controllers)."""
        for module in self.model.modules():
            before = self._before.get(id(module))
            if before is None:
                continue
            for key in set(vars(module)) - before:
                delattr(module, key)
        for ed in self.editors:
            ed.reset()
        self.points = []
