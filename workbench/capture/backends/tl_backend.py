"""Capture through TransformerLens 4.x hook points on a ``TransformerBridge``.

TransformerLens 4.x has no ``HookedTransformer`` for MoE models: its ``TransformerBridge`` wraps
the Hugging Face model and puts hook points on its components. For each MoE layer this backend
hooks the router bridge (``blocks.N.mlp.gate``, or ``.router``): ``hook_out`` (raw logits),
``hook_expert_indices`` ([N,k]) and ``hook_expert_weights`` (scattered to [N,E] by the bridge and
gathered back here, bit for bit), and for expert stats the MoE block's ``hook_in``.

How the bridge is built: ``build_bridge_from_module`` (TransformerLens' entry point for an
in-memory model: no hub, no files) with the model's own config, after setting
``config.architectures`` (models built from a config have none). **The bridge modifies the model
in place** (bridge components replace its submodules), so by default the backend works on a deep
copy of the model (``copy_model=True``; twice the weights in memory). Pass ``copy_model=False``
only for a model nothing else uses.

The forward pass is :func:`workbench.models.forward.model_forward` on the bridged model, so the
inputs are exactly those of the other backends. TransformerLens' attention bridges compute
attention eagerly, so logits and NLL may differ from the ``hooks`` backend (SDPA) by ~1e-7 in
fp32; routing records are otherwise the same.

Supported: architectures whose TransformerLens adapter wraps each router in a router bridge
(``MoERouterBridge``) whose tuple layout matches the workbench family's ``router_output``, for
families that route with a ``(logits, weights, indices)`` router. The selection is read from the
router, which is what the block hands its experts module in these families. Anything else raises
:class:`TransformerLensUnsupportedError` naming the architecture and the supported ones.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from workbench.capture.batching import Batch
from workbench.capture.records import BatchCapture, next_token_nll
from workbench.models.decode import Routing, sort_descending
from workbench.models.discovery import MoELayer
from workbench.models.expert_math import expert_stats as compute_stats
from workbench.models.forward import model_forward

#: Architectures checked record-for-record against the hooks backend (tests/test_backends.py).
TESTED_ARCHITECTURES = (
    "Glm4MoeForCausalLM",
    "GptOssForCausalLM",
    "MixtralForCausalLM",
    "OlmoeForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
)
#: Router output layouts the router bridge can serve, with the tuple positions (logits, weights,
#: indices) the family expects there.
_LAYOUTS = {"logits_weights_indices": (0, 1, 2), "probs_weights_indices": (0, 1, 2)}


class TransformerLensUnsupportedError(ValueError):
    """TransformerLens cannot capture this architecture's routing (or its bridge lacks the hooks)."""


def _unsupported(architecture: str, why: str) -> TransformerLensUnsupportedError:
    return TransformerLensUnsupportedError(
        f"the transformer_lens backend cannot capture {architecture}: {why}. "
        f"Supported (tested) architectures: {', '.join(TESTED_ARCHITECTURES)}; "
        "use the hooks or nnsight backend for this model."
    )


def _registered_architectures() -> set[str]:
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

    ArchitectureAdapterFactory.discover_entry_points()
    return set(ArchitectureAdapterFactory._adapters)


def _same_layer_in(copied: nn.Module, layer: MoELayer) -> MoELayer:
    """``layer`` with its modules taken from ``copied`` (a deep copy of the model it came from)."""
    block = copied.get_submodule(layer.path)

    def own(module: nn.Module) -> nn.Module:
        for name, child in layer.block.named_modules():
            if child is module:
                return block.get_submodule(name)
        raise ValueError(f"{type(module).__name__} is not inside the MoE block at {layer.path}")

    gate = layer.shared_gate
    return replace(
        layer,
        block=block,
        router=own(layer.router),
        experts=own(layer.experts),
        shared=[own(module) for module in layer.shared],
        shared_gate=None if gate is None else own(gate),
    )


def _hook_name(module: nn.Module, attr: str) -> str:
    """The full name (``blocks.N.mlp.gate.hook_out``) of one of a bridge component's hook points."""
    name = getattr(getattr(module, attr, None), "name", None)
    if not isinstance(name, str):
        raise TransformerLensUnsupportedError(f"{type(module).__name__} has no named hook point {attr!r}")
    return name


@dataclass
class _Tap:
    """One layer's TransformerLens hook names and what they captured in the current batch."""

    layer: MoELayer
    logits: str = ""
    weights: str = ""
    indices: str = ""
    block: str = ""
    seen: dict[str, torch.Tensor] = field(default_factory=dict)

    def keep(self, key: str, tensor: torch.Tensor, hook: Any) -> None:
        self.seen[key] = tensor.detach()

    def hooks(self, want_block: bool) -> list[tuple[str, Any]]:
        names = {"logits": self.logits, "weights": self.weights, "indices": self.indices}
        if want_block:
            names["block"] = self.block
        return [(name, functools.partial(self.keep, key)) for key, name in names.items()]

    def routing(self, want_logits: bool) -> Routing:
        layer = self.layer
        if not {"logits", "weights", "indices"} <= self.seen.keys():
            raise RuntimeError(
                f"layer {layer.layer} ({layer.path}): the TransformerLens router hooks did not fire"
            )
        k = layer.top_k
        indices = self.seen["indices"].reshape(-1, k)
        weights = self.seen["weights"]
        if weights.shape[-1] != k:  # the bridge scattered the top-k weights to [N, E]
            weights = weights.reshape(-1, weights.shape[-1]).gather(-1, indices.long())
        idx, w = sort_descending(indices, weights.reshape(-1, k).float())
        logits = self.seen["logits"].reshape(-1, layer.n_experts) if want_logits else None
        return Routing(logits=logits, indices=idx, weights=w)


class TransformerLensBackend:
    """Capture through a TransformerLens ``TransformerBridge``; records as :class:`HooksBackend`."""

    name = "transformer_lens"

    def __init__(
        self,
        model: nn.Module,
        layers: list[MoELayer],
        *,
        expert_stats: bool = False,
        want_logits: bool = True,
        copy_model: bool = True,
    ) -> None:
        from transformer_lens.model_bridge.sources import build_bridge_from_module

        architecture = type(model).__name__
        self.architecture = architecture
        self.expert_stats = expert_stats
        self.want_logits = want_logits
        if architecture not in _registered_architectures():
            raise _unsupported(architecture, "TransformerLens has no adapter for it")
        for layer in layers:
            if layer.family.router_output not in _LAYOUTS:
                raise _unsupported(
                    architecture,
                    f"layer {layer.layer} routes as family {layer.family.name!r}, whose router "
                    f"returns {layer.family.router_output!r}",
                )
        work = copy.deepcopy(model) if copy_model else model
        config = getattr(work, "config", None)
        if config is None:
            raise _unsupported(architecture, "the model has no Hugging Face config")
        config.architectures = [architecture]
        # each layer as found in the model the bridge will wrap, keyed by its block's and router's identity
        targets: dict[int, tuple[str, MoELayer]] = {}
        for layer in layers:
            own = _same_layer_in(work, layer) if work is not model else layer
            targets[id(own.block)] = ("block", own)
            targets[id(own.router)] = ("router", own)
        try:
            self.bridge = build_bridge_from_module(work, architecture, hf_config=config)
        except ValueError as exc:
            raise _unsupported(architecture, f"TransformerLens could not bridge it ({exc})") from exc
        self.model = self.bridge.original_model
        self.taps = self._find_hooks(layers, targets)

    def _find_hooks(self, layers: list[MoELayer], targets: dict[int, tuple[str, MoELayer]]) -> list[_Tap]:
        from transformer_lens.model_bridge.generalized_components.moe import (
            MoERouterBridge,
            unwrap_bridge,
        )

        taps = {layer.layer: _Tap(layer) for layer in layers}
        for module in self.bridge.modules():
            wrapped = unwrap_bridge(module)
            if wrapped is module or id(wrapped) not in targets:
                continue
            kind, layer = targets[id(wrapped)]
            tap = taps[layer.layer]
            if kind == "block":
                tap.block = _hook_name(module, "hook_in")
                continue
            expected = _LAYOUTS[layer.family.router_output]
            got = tuple(
                None if i is None else i % 3
                for i in (
                    getattr(module, "logits_index", None),
                    getattr(module, "weights_index", None),
                    getattr(module, "indices_index", None),
                )
            )
            if not isinstance(module, MoERouterBridge) or got != expected:
                raise _unsupported(
                    self.architecture,
                    f"its TransformerLens adapter wraps the router of layer {layer.layer} as "
                    f"{type(module).__name__} with (logits, weights, indices) at {got}, but this "
                    f"model's router returns them at {expected}",
                )
            tap.logits = _hook_name(module, "hook_out")
            tap.weights = _hook_name(module, "hook_expert_weights")
            tap.indices = _hook_name(module, "hook_expert_indices")
        for tap in taps.values():
            if not (tap.logits and tap.block):
                raise _unsupported(
                    self.architecture,
                    f"its bridge exposes no router/MoE-block hooks for layer {tap.layer.layer} "
                    f"({tap.layer.path})",
                )
        return list(taps.values())

    def run(self, batch: Batch) -> BatchCapture:
        hooks = [hook for tap in self.taps for hook in tap.hooks(self.expert_stats)]
        for tap in self.taps:
            tap.seen.clear()
        with self.bridge.hooks(fwd_hooks=hooks):
            lm_logits = model_forward(self.model, batch)
        capture = BatchCapture(
            routing={tap.layer.layer: tap.routing(self.want_logits) for tap in self.taps},
            nll=next_token_nll(lm_logits, batch.input_ids, batch.mask),
        )
        if self.expert_stats:
            for tap in self.taps:
                route = capture.routing[tap.layer.layer]
                capture.stats[tap.layer.layer] = compute_stats(tap.layer, tap.seen["block"], route.indices)
        for tap in self.taps:
            tap.seen.clear()
        return capture

    def close(self) -> None:
        """Remove every hook this backend may have left and drop the captured tensors."""
        self.bridge.reset_hooks()
        for tap in self.taps:
            tap.seen.clear()


__all__ = ["TESTED_ARCHITECTURES", "TransformerLensBackend", "TransformerLensUnsupportedError"]
