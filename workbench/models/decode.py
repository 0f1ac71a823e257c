"""Turn what a router returned (and what the experts module received) into routing records.

Everything here is pure tensor work on the device, with no host sync: capture hooks call these
functions and only stash their results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.models.family import RoutingFamily


@dataclass
class Routing:
    """One layer's routing for N flattened tokens: raw logits [N,E] (or None), experts/weights [N,k]."""

    logits: torch.Tensor | None
    indices: torch.Tensor
    weights: torch.Tensor


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    first: torch.Tensor = output[0]  # a (tensor, ...) tuple: the tensor comes first
    return first


def router_logits(family: RoutingFamily, output: Any, n_experts: int) -> torch.Tensor:
    """The raw logits [N,E] in a router's output, per the family's ``router_output`` layout."""
    layout = family.router_output
    if layout in ("logits_weights_indices", "probs_weights_indices") or layout == "logits":
        logits = _first_tensor(output)
    elif layout in ("scores_logits",):
        logits = output[1]
    elif layout in ("dispatch_probs_logits", "mask_combine_logits"):
        logits = output[2]
    else:  # pragma: no cover - Literal exhausts the cases
        raise ValueError(f"unknown router_output layout {layout!r}")
    return logits.reshape(-1, n_experts)


def router_selection(
    family: RoutingFamily, output: Any, top_k: int, n_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [N,k], weights [N,k]) read from a router's output (``selection == "router"``)."""
    layout = family.router_output
    if layout in ("logits_weights_indices", "probs_weights_indices"):
        return output[2].reshape(-1, top_k), output[1].reshape(-1, top_k)
    if layout == "scores_logits":
        scores = output[0].reshape(-1, n_experts)
        weights, indices = torch.topk(scores, top_k, dim=-1)
        return indices, weights
    if layout == "dispatch_probs_logits":
        dispatch, probs, logits = output
        logits = logits.reshape(-1, n_experts)
        chosen = logits.argmax(dim=-1, keepdim=True)
        kept = dispatch.reshape(-1, n_experts).gather(1, chosen).to(probs.dtype)
        return chosen, probs.reshape(-1, 1) * kept
    if layout == "mask_combine_logits":
        # NLLB-MoE: the pair is the top-2 of the logits; its weights are the combine weights the
        # router kept (0 where capacity dropped the token)
        _, combine, logits = output
        logits = logits.reshape(-1, n_experts)
        indices = torch.topk(logits, top_k, dim=-1).indices
        return indices, combine.reshape(-1, n_experts).gather(1, indices)
    raise ValueError(f"family {family.name!r}: router output {layout!r} carries no selection")


def experts_selection(
    family: RoutingFamily, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, Any]:
    """(indices, weights) as passed to the experts module: what the model applied."""
    i_pos, w_pos = family.experts_arg_positions
    i_name, w_name = family.experts_kwarg_names
    indices = kwargs[i_name] if i_name in kwargs else args[i_pos]
    weights = kwargs[w_name] if w_name in kwargs else args[w_pos]
    return indices, weights


def sort_descending(indices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each token's experts by descending applied weight (ties: lower expert id first)."""
    k = indices.shape[-1]
    if k == 1:
        return indices, weights
    # stable sort on (-weight, expert id): sort by id first, then stable by weight
    by_id = torch.argsort(indices, dim=-1, stable=True)
    indices = indices.gather(-1, by_id)
    weights = weights.gather(-1, by_id)
    order = torch.argsort(-weights.float(), dim=-1, stable=True)
    return indices.gather(-1, order), weights.gather(-1, order)
