"""Score functions and the top-k recipe of each routing family, recomputed independently.

Given a family's declared recipe (:class:`~workbench.models.family.RoutingFamily`), this module
recomputes what a router *should* have produced, without calling the router's own code:

* :func:`recompute_logits`: the raw logits from the router's input (its linear weight and bias,
  after an optional input norm, with an optional multiplier or soft-cap),
* :func:`scores`: π(z), the scores the router ranks and weights by,
* :func:`expected_topk`: the chosen experts and the weights applied to them (softmax top-k with
  optional renormalisation; sigmoid + selection bias + group-limited choice + routed scaling,
  DeepSeek-V3 style; probabilities; Llama-4 sigmoid of the top-k logits; Switch top-1 with
  capacity; NLLB-MoE top-2 with capacity; PhiMoE's sparsemixer; hash routing by token id).

The conformance sweep (:mod:`workbench.conformance.supported`) compares these against what the capture
backend recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.family import RoutingFamily


def lookup_attr(name: str | None, *owners: object) -> Any:
    """The first non-None value of the (dotted) attribute ``name`` on ``owners``, else None."""
    if not name:
        return None
    for owner in owners:
        value: Any = owner
        for part in name.split("."):
            value = getattr(value, part, None)
            if value is None:
                break
        if value is not None:
            return value
    return None


def _tensor(value: Any) -> torch.Tensor | None:
    return value if isinstance(value, torch.Tensor) else None


def router_linear(family: RoutingFamily, router: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (weight [E,H], bias [E] or None) that produce the router's logits."""
    weight = _tensor(
        lookup_attr(next((a for a in family.router_weight_attrs if _has(router, a)), None), router)
    )
    if weight is None or weight.dim() != 2:
        raise LookupError(
            f"{type(router).__name__}: no 2-D router weight at any of {', '.join(family.router_weight_attrs)}"
        )
    bias = None
    for attr in family.router_bias_attrs:
        value = _tensor(lookup_attr(attr, router))
        if value is not None and value.dim() == 1 and value.shape[0] == weight.shape[0]:
            bias = value
            break
    return weight, bias


def _has(owner: object, name: str) -> bool:
    return lookup_attr(name, owner) is not None


def recompute_logits(
    family: RoutingFamily, router: nn.Module, x: torch.Tensor, config: object = None
) -> torch.Tensor:
    """Logits [N,E] (probabilities for ``score_fn == "probs"``) from the router's input ``x``."""
    h = x.reshape(-1, x.shape[-1]).float()
    if family.router_input_norm is not None:
        norm = lookup_attr(family.router_input_norm, router)
        h = norm(h).float()
        for attr in family.router_input_scale_attrs:
            factor = lookup_attr(attr, router)
            h = h * (factor.float() if isinstance(factor, torch.Tensor) else float(factor))
    weight, bias = router_linear(family, router)
    logits = h @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    multiplier = lookup_attr(family.logit_multiplier_attr, router, config)
    if multiplier is not None:
        logits = logits * float(multiplier)
    cap = lookup_attr(family.logit_softcap_attr, router, config)
    if cap is not None and float(cap) > 0:
        logits = torch.tanh(logits / float(cap)) * float(cap)
    if family.score_fn == "probs":
        return torch.softmax(logits, dim=-1)
    return logits


def score_name(family: RoutingFamily, router: nn.Module | None = None, config: object = None) -> str:
    """The score function in effect: the family's, or the one its ``score_fn_attr`` names."""
    named = lookup_attr(family.score_fn_attr, router, config)
    return str(named) if isinstance(named, str) else family.score_fn


_SCORE_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda z: torch.softmax(z, dim=-1),
    "sigmoid": torch.sigmoid,
    "sqrtsoftplus": lambda z: torch.sqrt(F.softplus(z)),
    "probs": lambda z: z,
}


def scores(
    family: RoutingFamily, logits: torch.Tensor, router: nn.Module | None = None, config: object = None
) -> torch.Tensor:
    """π(z) [N,E]: the family's score function applied to (float) logits."""
    name = score_name(family, router, config)
    try:
        fn = _SCORE_FNS[name]
    except KeyError:
        raise ValueError(f"family {family.name!r}: unknown score function {name!r}") from None
    return fn(logits.float())


@dataclass
class RoutingContext:
    """What a recipe may need besides the logits: modules, config and per-token side inputs."""

    router: nn.Module | None = None
    block: nn.Module | None = None
    config: object = None
    top_k: int = 2
    batch_shape: tuple[int, int] | None = None  # (B, T) of the flattened rows
    token_ids: torch.Tensor | None = None  # [N] for hash routing
    padding_mask: torch.Tensor | None = None  # what NLLB-MoE's router received

    def attr(self, name: str | None) -> Any:
        return lookup_attr(name, self.router, self.block, self.config)


def group_mask(family: RoutingFamily, choice: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
    """Mask choice scores outside the top ``topk_group`` groups with -inf (when groups apply)."""
    if family.group_attrs is None:
        return choice
    if family.group_when is not None and ctx.attr(family.group_when[0]) != family.group_when[1]:
        return choice
    n_group, topk_group = (ctx.attr(a) for a in family.group_attrs)
    if not n_group or not topk_group or int(n_group) <= 1:
        return choice
    n, e = choice.shape
    grouped = choice.view(n, int(n_group), e // int(n_group))
    if family.group_score == "max":
        group_scores = grouped.max(dim=-1).values
    else:
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
    keep = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(int(topk_group), dim=-1).indices, 1.0)
    mask = keep.unsqueeze(-1).expand_as(grouped).reshape(n, e).bool()
    return choice.masked_fill(~mask, float("-inf"))


def renormalise(family: RoutingFamily, weights: torch.Tensor, ctx: RoutingContext, name: str) -> torch.Tensor:
    """The top-k ``weights`` divided by their p-norm when the family renormalises, else unchanged.

    ``family.renorm`` decides, or (when None) the model's ``renorm_attr`` flag, or a softmax over the
    top-k only; ``name`` is the score function's name (:func:`score_name`).
    """
    renorm = family.renorm
    if renorm is None:
        renorm = bool(ctx.attr(family.renorm_attr)) or (family.softmax_over_topk and name == "softmax")
    if not renorm:
        return weights
    p = ctx.attr(family.renorm_p_attr) if family.renorm_p_attr else 1.0
    norm = torch.linalg.vector_norm(weights, ord=float(p), dim=-1, keepdim=True).clamp_min(1e-20)
    renormed: torch.Tensor = weights / norm
    return renormed


def scale_weights(
    family: RoutingFamily, weights: torch.Tensor, indices: torch.Tensor, ctx: RoutingContext
) -> torch.Tensor:
    """The weights after the family's scaling: routed scaling factors, per-expert scales, ``1/k``."""
    for attr in family.scale_attrs:
        value = ctx.attr(attr)
        if value is not None:
            weights = weights * (value.float() if isinstance(value, torch.Tensor) else float(value))
    per_expert = ctx.attr(family.per_expert_scale_attr)
    if isinstance(per_expert, torch.Tensor):
        weights = weights * per_expert.float()[indices]
    if family.divide_by_top_k:
        weights = weights / indices.shape[-1]
    return weights


def _topk(
    family: RoutingFamily, logits: torch.Tensor, ctx: RoutingContext
) -> tuple[torch.Tensor, torch.Tensor]:
    name = score_name(family, ctx.router, ctx.config)
    pi = scores(family, logits, ctx.router, ctx.config)
    choice = logits.float() if family.bias_on == "logits" else pi
    bias = next(
        (b for b in (ctx.attr(a) for a in family.correction_bias_attrs) if isinstance(b, torch.Tensor)), None
    )
    if bias is not None:
        choice = choice + bias.float().reshape(-1)
    choice = group_mask(family, choice, ctx)
    table = ctx.attr(family.hash_table_attr)
    if isinstance(table, torch.Tensor):  # hash layers: experts fixed per token id
        if ctx.token_ids is None:
            raise ValueError(f"family {family.name!r}: hash routing needs the token ids")
        indices = table[ctx.token_ids.reshape(-1)].long()
    else:
        indices = choice.topk(ctx.top_k, dim=-1).indices
    weights = pi.gather(-1, indices)
    return indices, scale_weights(family, renormalise(family, weights, ctx, name), indices, ctx)


def _sparsemixer(logits: torch.Tensor, ctx: RoutingContext) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's eval-mode sparsemixer: two argmax rounds, each weighted by a thresholded softmax."""
    z = logits.float()
    eps = float(ctx.attr("router_jitter_noise") or 0.0)
    picks, weights = [], []
    masked = z
    for _ in range(2):
        top, arg = masked.max(dim=-1, keepdim=True)
        far = ((top - z) / z.abs().clamp(min=top)) > 2 * eps
        gates = torch.softmax(masked.masked_fill(far, float("-inf")), dim=-1)
        picks.append(arg)
        weights.append(gates.gather(-1, arg))
        masked = masked.scatter(-1, arg, float("-inf"))
    return torch.cat(picks, dim=-1), torch.cat(weights, dim=-1)


def _switch(
    family: RoutingFamily, logits: torch.Tensor, ctx: RoutingContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch: top-1 of softmax; per sequence, tokens beyond the expert capacity get weight 0."""
    probs = torch.softmax(logits.float(), dim=-1)
    weight, index = probs.max(dim=-1, keepdim=True)
    if ctx.batch_shape is None:
        raise ValueError("switch capacity needs the batch shape")
    b, t = ctx.batch_shape
    one_hot = F.one_hot(index.squeeze(-1), probs.shape[-1]).view(b, t, -1)
    position = one_hot.cumsum(dim=1).view(b * t, -1).gather(-1, index)
    capacity = ctx.attr(family.capacity_attr)
    kept = position <= int(capacity) if capacity is not None else torch.ones_like(position, dtype=torch.bool)
    return index, weight * kept


def _nllb(logits: torch.Tensor, ctx: RoutingContext) -> tuple[torch.Tensor, torch.Tensor]:
    """NLLB-MoE eval routing ("all" second-expert policy): top-2 with capacity over all rows."""
    z = logits.float()
    n, e = z.shape
    probs = torch.softmax(z, dim=-1)
    first = probs.argmax(dim=-1)
    second = z.masked_fill(F.one_hot(first, e).bool(), float("-inf")).argmax(dim=-1)
    masks = [F.one_hot(first, e), F.one_hot(second, e)]
    pm = ctx.padding_mask
    if pm is not None and not ctx.attr("router_ignore_padding_tokens"):
        if pm.dim() == 4:
            pm = pm[:, :, -1, :].reshape(-1)[-n:]
        keep = (~pm.bool()).reshape(-1, 1).long()
        masks = [m * keep for m in masks]
    fraction = float(ctx.attr("moe_eval_capacity_token_fraction") or 0.0)
    capacity = (
        math.ceil(fraction * n) if fraction > 0 else ctx.attr("expert_capacity") or 2 * math.ceil(n / e)
    )
    loc1 = masks[0].cumsum(0) - 1
    loc2 = masks[1].cumsum(0) - 1 + masks[0].sum(0, keepdim=True)
    masks = [masks[0] * (loc1 < capacity), masks[1] * (loc2 < capacity)]
    p = [(probs * m).sum(dim=1) for m in masks]
    denom = (p[0] + p[1]).clamp(min=torch.finfo(probs.dtype).eps)
    indices = torch.stack([first, second], dim=-1)
    weights = torch.stack([p[0] / denom, p[1] / denom], dim=-1)
    return indices, weights


def expected_topk(
    family: RoutingFamily, logits: torch.Tensor, ctx: RoutingContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [N,k], weights [N,k]) the family's recipe gives for ``logits`` [N,E]."""
    if family.choice == "sparsemixer":
        return _sparsemixer(logits, ctx)
    if family.choice == "switch_capacity":
        return _switch(family, logits, ctx)
    if family.choice == "nllb_top2":
        return _nllb(logits, ctx)
    return _topk(family, logits, ctx)
