"""The default intervention backend: plain torch hooks that drive each layer's :class:`LayerEditor`.

Per MoE layer: a forward pre-hook on the block (batch shape for spans), a forward hook on the
router (read logits; routers that return the selection get their output replaced), a forward
pre-hook on the experts module (replace ``(indices, weights)``) and, for Llama-4-style layouts, a
forward hook on the experts module (``Scale``). All are registered with ``prepend=True`` so they run
before any capture hooks already on the same modules: capture then records the intervened routing.
Handles are removed on :meth:`HookApplier.close`, which leaves the hook dicts as they were.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from workbench.interventions.editor import LayerEditor


class HookApplier:
    """Registers the editors' callbacks as torch hooks; ``close`` removes every one of them."""

    name = "hooks"

    def __init__(self, model: nn.Module, editors: list[LayerEditor]) -> None:
        self.model = model
        self.editors = editors
        self.handles: list[RemovableHandle] = []
        try:
            for ed in editors:
                self._register(ed)
        except BaseException:
            self.close()
            raise

    def _register(self, ed: LayerEditor) -> None:
        layer = ed.layer

        def block_pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ed.reset()
            ed.on_block_input(args, kwargs)

        def router_post(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            return ed.on_router_output(args, kwargs, output)

        def experts_pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return ed.on_experts_input(args, kwargs)

        def experts_post(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
            return ed.on_experts_output(output)

        self.handles.append(layer.block.register_forward_pre_hook(block_pre, with_kwargs=True, prepend=True))
        self.handles.append(layer.router.register_forward_hook(router_post, with_kwargs=True, prepend=True))
        self.handles.append(
            layer.experts.register_forward_pre_hook(experts_pre, with_kwargs=True, prepend=True)
        )
        if ed.weights_on_input:
            self.handles.append(layer.experts.register_forward_hook(experts_post, prepend=True))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model (the hooks are live, so a plain ``model(...)`` call is the same)."""
        return self.model(*args, **kwargs)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for ed in self.editors:
            ed.reset()
