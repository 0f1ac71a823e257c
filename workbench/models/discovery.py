"""Structural discovery of MoE layers in a model.

A module is a candidate MoE block when it has an ``experts`` child and a router child. Each
candidate is resolved to a :class:`RoutingFamily` through the registry; the result is one
:class:`MoELayer` per block, carrying the model's own block index.

Layer numbering: ``layer`` is the index of the transformer block that contains the MoE block
(``model.layers.12.mlp`` → 12). In encoder-decoder models, encoder blocks keep their index and
decoder blocks are numbered after the encoder's (``decoder.block.1`` of a 4-block encoder → 5); the
``module_path`` stored with each layer removes any doubt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from workbench.models.family import RoutingFamily
from workbench.models.registry import UnknownArchitectureError, lookup, unknown_architecture_message


class NoMoELayersError(ValueError):
    """The model contains no mixture-of-experts block."""


@dataclass
class MoELayer:
    """One MoE block of a model, with the pieces capture and interventions hook."""

    layer: int
    path: str
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    shared: list[nn.Module]
    shared_gate: nn.Module | None
    family: RoutingFamily
    n_experts: int
    top_k: int
    stack: str  # "decoder", "encoder" or "" for decoder-only models

    @property
    def n_shared(self) -> int:
        return len(self.shared)


_INDEX = re.compile(r"\.(\d+)(?:\.|$)")


def _block_index(path: str) -> int | None:
    """The outermost index in ``path``: the block (``encoder.block.1.layer.2.mlp`` → 1)."""
    found = _INDEX.findall(path)
    return int(found[0]) if found else None


def _child(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def _n_experts(router: nn.Module, experts: nn.Module, family_attr: str | None = None) -> int:
    for attr in (family_attr, "num_experts", "n_routed_experts", "num_local_experts"):
        if attr is None:
            continue
        value = getattr(router, attr, None) or getattr(experts, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    for name in ("gate_up_proj", "w1", "up_proj"):
        param = getattr(experts, name, None)
        if param is not None and getattr(param, "dim", lambda: 0)() == 3:
            return int(param.shape[0])
    if isinstance(experts, (nn.ModuleList, nn.ModuleDict)):
        return len(experts)
    weight = getattr(router, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    raise UnknownArchitectureError(f"cannot tell how many experts {type(experts).__name__} holds")


def _top_k(block: nn.Module, router: nn.Module, config: object) -> int:
    for owner in (router, block):
        for attr in ("top_k", "num_experts_per_tok", "k"):
            value = getattr(owner, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    for attr in ("num_experts_per_tok", "moe_topk", "top_k", "moe_k", "top_k_experts"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1


def _stack(path: str) -> str:
    parts = path.split(".")
    if "encoder" in parts:
        return "encoder"
    if "decoder" in parts:
        return "decoder"
    return ""


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """All MoE blocks of ``model`` in execution order, resolved through the registry.

    Raises :class:`NoMoELayersError` when the model has none, and
    :class:`UnknownArchitectureError` when it has blocks no adapter describes.
    """
    config = getattr(model, "config", None)
    text_config = (
        config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    )
    found: list[MoELayer] = []
    unknown: list[str] = []
    for path, module in model.named_modules():
        experts = getattr(module, "experts", None)
        if not isinstance(experts, nn.Module):
            continue
        family = lookup(module)
        if family is None:
            unknown.append(type(module).__name__)
            continue
        if path.rsplit(".", 1)[-1] in family.skip_names:
            continue  # e.g. vision-only experts, which never run on text
        router = _child(module, family.router_attrs)
        if router is None:
            unknown.append(type(module).__name__)
            continue
        owner = model.get_submodule(path.rsplit(".", 1)[0]) if family.shared_on_parent else module
        shared = _child(owner, family.shared_attrs)
        shared_mods = [] if shared is None else [shared[1]]
        gate = getattr(module, family.shared_gate_attr, None) if family.shared_gate_attr else None
        index = _block_index(path)
        found.append(
            MoELayer(
                layer=-1 if index is None else index,
                path=path,
                block=module,
                router=router[1],
                experts=experts,
                shared=shared_mods,
                shared_gate=gate if isinstance(gate, nn.Module) else None,
                family=family,
                n_experts=_n_experts(router[1], experts, family.n_experts_attr),
                top_k=family.top_k or _top_k(module, router[1], text_config),
                stack=_stack(path),
            )
        )
    if unknown and not found:
        raise UnknownArchitectureError(unknown_architecture_message(model, unknown))
    if not found:
        kinds = sorted({type(m).__name__ for m in model.modules() if "mlp" in type(m).__name__.lower()})[:6]
        raise NoMoELayersError(
            f"{type(model).__name__} has no mixture-of-experts layers (no module with an `experts` child; "
            f"its feed-forward modules are {', '.join(kinds) or 'unnamed'}). moe-workbench analyses MoE "
            "models; pick a model whose config has num_experts / num_local_experts, or decompose a dense "
            "model into experts first."
        )
    _number_decoder_after_encoder(found, text_config)
    return found


def _number_decoder_after_encoder(layers: list[MoELayer], config: object) -> None:
    encoder = [layer.layer for layer in layers if layer.stack == "encoder"]
    if not encoder:
        return
    n_blocks = getattr(config, "encoder_layers", None) or getattr(config, "num_layers", None)
    if not isinstance(n_blocks, int) or n_blocks <= max(encoder):
        n_blocks = max(encoder) + 1
    for layer in layers:
        if layer.stack == "decoder":
            layer.layer += n_blocks
