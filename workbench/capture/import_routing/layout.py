"""Which engine layer is which model block: the layer axis of routed-expert arrays, mapped to ``layer``.

The store's ``layer`` is the model's own block index ("layer 48, expert 176" means what a paper
means). Both engines, as read (docs/import-routing.md), size the layer axis by the config's
``num_hidden_layers`` and write each MoE layer's ids at its block index, so dense blocks stay
all-zero rows. Some engine builds count MoE layers only. So the mapping is, in this order:

1. ``--layers`` (the model block index of each MoE layer): an axis as long as the list is read as
   "MoE layers only" (axis entry i is block ``layers[i]``); a longer axis keeps the listed entries.
2. ``--model-config`` (a Hugging Face ``config.json``): the MoE blocks it declares
   (``first_k_dense_replace``, ``mlp_only_layers``, ``decoder_sparse_step``, ``moe_layer_freq``),
   mapped the same way.
3. Otherwise every axis entry is its own block, and entries that are all zero in every record are
   dropped as dense blocks (an MoE layer returns k distinct ids per token, never k zeros for k >= 2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.capture.import_routing.formats import RoutingImportError

__all__ = ["LayerMap", "ModelConfig", "read_model_config", "resolve_layers"]

_EXPERT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")
_TOPK_KEYS = ("num_experts_per_tok", "moe_topk", "moe_k", "num_experts_per_token")


@dataclass(frozen=True)
class ModelConfig:
    """What a model's ``config.json`` says about its MoE layers (None: it does not say)."""

    num_layers: int | None
    top_k: int | None
    n_experts: int | None
    moe_layers: tuple[int, ...] | None
    architecture: str | None
    name: str | None


@dataclass(frozen=True)
class LayerMap:
    """Kept engine axis entries and the model block index each one is stored as; how it was decided."""

    axis: tuple[int, ...]
    layers: tuple[int, ...]
    rule: str
    dropped: tuple[int, ...] = ()


def _first_int(cfg: dict[str, Any], keys: Sequence[str]) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, list) and value and isinstance(value[0], int):
            return int(value[0])
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    return None


def _moe_layers(cfg: dict[str, Any], n_layers: int | None) -> tuple[int, ...] | None:
    """The MoE block indices the config declares, or None when it declares no pattern."""
    if n_layers is None:
        return None
    keys = ("first_k_dense_replace", "mlp_only_layers", "decoder_sparse_step", "moe_layer_freq")
    if not any(k in cfg for k in keys):
        return None
    dense_first = int(cfg.get("first_k_dense_replace") or 0)
    mlp_only = {int(x) for x in cfg.get("mlp_only_layers") or []}
    step = cfg.get("decoder_sparse_step") or 1
    freq = cfg.get("moe_layer_freq") if isinstance(cfg.get("moe_layer_freq"), int) else 1
    return tuple(
        i
        for i in range(n_layers)
        if i >= dense_first and i not in mlp_only and (i + 1) % int(step) == 0 and i % int(freq or 1) == 0
    )


def read_model_config(path: Path) -> ModelConfig:
    """Read a Hugging Face ``config.json`` (its ``text_config`` when it has one)."""
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RoutingImportError(f"--model-config {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise RoutingImportError(f"--model-config {path}: expected a JSON object")
    top = cfg
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    n_layers = _first_int(cfg, ("num_hidden_layers",))
    archs = top.get("architectures")
    return ModelConfig(
        num_layers=n_layers,
        top_k=_first_int(cfg, _TOPK_KEYS),
        n_experts=_first_int(cfg, _EXPERT_KEYS),
        moe_layers=_moe_layers(cfg, n_layers),
        architecture=archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None,
        name=top.get("_name_or_path") if isinstance(top.get("_name_or_path"), str) else None,
    )


def _mapped(listed: Sequence[int], n_axis: int, source: str) -> LayerMap:
    blocks = tuple(int(x) for x in listed)
    if len(set(blocks)) != len(blocks) or any(b < 0 for b in blocks):
        raise RoutingImportError(
            f"{source}: layer indices must be distinct and non-negative, got {list(blocks)}"
        )
    if len(blocks) == n_axis:
        return LayerMap(
            tuple(range(n_axis)), blocks, f"{source}: the engine's layer axis lists MoE layers only"
        )
    if len(blocks) < n_axis:
        beyond = [b for b in blocks if b >= n_axis]
        if beyond:
            raise RoutingImportError(
                f"{source}: layers {beyond} are beyond the engine's layer axis of {n_axis} entries"
            )
        dropped = tuple(a for a in range(n_axis) if a not in blocks)
        return LayerMap(blocks, blocks, f"{source}: the engine's layer axis is the model's blocks", dropped)
    raise RoutingImportError(
        f"{source} names {len(blocks)} MoE layers but the engine's arrays have only {n_axis} layer entries"
    )


def resolve_layers(
    n_axis: int,
    top_k: int,
    all_zero: Sequence[bool],
    layers: Sequence[int] | None,
    config: ModelConfig | None,
) -> LayerMap:
    """The :class:`LayerMap` for an engine layer axis of ``n_axis`` entries (see the module docstring)."""
    if layers:
        return _mapped(layers, n_axis, "--layers")
    if config is not None and config.moe_layers is not None:
        return _mapped(config.moe_layers, n_axis, "--model-config")
    if top_k >= 2:
        dense = tuple(a for a in range(n_axis) if all_zero[a])
        kept = tuple(a for a in range(n_axis) if not all_zero[a])
        if not kept:
            raise RoutingImportError(
                "every layer of every record is all zeros: there is no routing to import"
            )
        rule = "every engine layer entry is the model block of the same index"
        if dense:
            rule += "; entries that are all zero in every record were dropped as dense blocks"
        return LayerMap(kept, kept, rule, dense)
    return LayerMap(
        tuple(range(n_axis)),
        tuple(range(n_axis)),
        "every engine layer entry is the model block of the same index (top-1: dense blocks cannot be told "
        "from routing, give --layers to drop them)",
    )
