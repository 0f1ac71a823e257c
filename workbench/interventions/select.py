"""The family's routing recipe, re-run on edited logits: where top-k is decided, edits apply.

Logit-level specs cannot be applied by editing what a router *returns* (a ``TopKRouter`` has
already chosen by then), so the selection is recomputed from the router's raw logits with the
family's declared recipe (:mod:`workbench.models.scores`, the same recipe the conformance sweep
checks against every architecture), with the edits inserted at the points docs/methods.md §8 names:

* ``Bias``: ``z + δ`` before the score function;
* ``Reroute``/``Prune``: ``z = −inf`` (so the score is 0) **and** the choice value is −inf where
  top-k is decided (after a DeepSeek-V3-style selection bias, before group limiting), so a
  selection bias cannot bring the expert back;
* ``Force``: ``z`` = the token's max logit + :data:`FORCE_MARGIN`, and its choice value above every
  other (its group is then kept by group-limited routers);
* ``TopK``/``TopP``: the number of experts taken per token; weights follow the family recipe
  (score, renormalisation, scaling) over the experts taken.

Routers that only expose probabilities (``score_fn == "probs"``) are edited in log space
(``z = log p``; ``softmax(log p) == p``). Hash layers (DeepSeek-V4 ``tid2eid``) choose by token id:
there a rerouted expert's slot is refilled with the highest-scoring unused expert and a forced
expert takes the lowest-scoring slot (the hash router has no ranking of its own; an extension).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from workbench.interventions.plan import Edits
from workbench.models.family import RoutingFamily
from workbench.models.scores import (
    RoutingContext,
    expected_topk,
    group_mask,
    renormalise,
    scale_weights,
    score_name,
    scores,
)

#: Forced experts' logit: the token's maximum logit plus this margin ("just above the max").
FORCE_MARGIN = 1e-3
_BIG = 1e4  # choice offset that puts forced (and, on hash layers, table) experts first


class UnsupportedIntervention(ValueError):
    """A family cannot apply a semantics exactly; the message names both."""


def _family_error(family: RoutingFamily, kind: str, why: str) -> UnsupportedIntervention:
    return UnsupportedIntervention(
        f"{kind} is not supported for routing family {family.name!r}: {why} (see docs/interventions.md)"
    )


def edit_logits(family: RoutingFamily, logits: torch.Tensor, ed: Edits) -> torch.Tensor:
    """The edited logits z' [N,E] (float32); for probability routers, edited log-probabilities."""
    z = logits.float()
    if family.score_fn == "probs":
        z = torch.log(z.clamp_min(0.0))
    z = z + ed.delta
    z = z.masked_fill(ed.ban, float("-inf"))
    if bool(ed.force.any()):
        top = z.masked_fill(ed.force, float("-inf")).max(dim=-1, keepdim=True).values
        z = torch.where(ed.force, top + FORCE_MARGIN, z)
    return z


def _pi(family: RoutingFamily, z: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
    if family.score_fn == "probs":
        return torch.softmax(z, dim=-1)
    return scores(family, z, ctx.router, ctx.config)


def _counts(ed: Edits, order_pi: torch.Tensor, default_k: int) -> torch.Tensor:
    """[N] experts per token: TopK's k, TopP's prefix length, else the model's k."""
    counts = torch.where(ed.width > 0, ed.width, default_k)
    use_p = ed.top_p > 0
    if bool(use_p.any()):
        share = order_pi / order_pi.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        before = share.cumsum(dim=-1) - share  # mass of the experts ranked above each one
        needed = (before < ed.top_p[:, None] - 1e-7).sum(dim=-1).clamp(min=1)
        counts = torch.where(use_p, needed, counts)
    return counts


def select_topk(
    family: RoutingFamily, logits: torch.Tensor, ed: Edits, ctx: RoutingContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [N,W], weights [N,W]) of the ``topk`` recipe with edits; unused slots weigh 0."""
    z = edit_logits(family, logits, ed)
    pi = _pi(family, z, ctx)
    choice = z if family.bias_on == "logits" else pi
    bias = next(
        (b for b in (ctx.attr(a) for a in family.correction_bias_attrs) if isinstance(b, torch.Tensor)), None
    )
    if bias is not None:
        choice = choice + bias.float().reshape(-1)
    choice = choice.masked_fill(ed.ban, float("-inf"))
    if bool(ed.force.any()):
        top = choice.masked_fill(ed.force | ed.ban, float("-inf")).max(dim=-1, keepdim=True).values
        choice = torch.where(ed.force, top.clamp_min(-_BIG) + _BIG, choice)
    choice = group_mask(family, choice, ctx)
    table = ctx.attr(family.hash_table_attr)
    if isinstance(table, torch.Tensor):  # hash layer: the table's experts first, then by choice
        if bool((ed.width > 0).any()) or bool((ed.top_p > 0).any()):
            raise _family_error(
                family, "topk/topp", "hash layers take a fixed number of experts per token id"
            )
        if ctx.token_ids is None:
            raise ValueError(f"family {family.name!r}: hash routing needs the token ids")
        picks = table[ctx.token_ids.reshape(-1)].long()
        in_table = torch.zeros_like(ed.ban).scatter_(1, picks, True)
        finite = torch.where(torch.isfinite(choice), choice, pi)
        choice = torch.where(ed.force, 4 * _BIG, finite + 2 * _BIG * in_table)
        choice = choice.masked_fill(ed.ban, float("-inf"))
    order = choice.argsort(dim=-1, descending=True, stable=True)
    counts = _counts(
        ed, pi.gather(-1, order).masked_fill(~torch.isfinite(choice.gather(-1, order)), 0.0), ctx.top_k
    )
    counts = torch.minimum(counts, torch.isfinite(choice).sum(dim=-1).clamp(min=1))
    width = int(counts.max())
    indices = order[:, :width]
    valid = torch.arange(width, device=indices.device)[None, :] < counts[:, None]
    weights = pi.gather(-1, indices) * valid
    weights = renormalise(family, weights, ctx, score_name(family, ctx.router, ctx.config))
    weights = scale_weights(replace(family, divide_by_top_k=False), weights, indices, ctx) * valid
    if family.divide_by_top_k:
        weights = weights / counts[:, None]
    indices = torch.where(valid, indices, indices[:, :1])  # pad with the row's first expert at weight 0
    return indices, weights


def select(
    family: RoutingFamily, logits: torch.Tensor, ed: Edits, ctx: RoutingContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights) the family's recipe gives under the edits ``ed``, for all N rows."""
    if family.choice == "topk":
        return select_topk(family, logits, ed, ctx)
    if bool((ed.width > 0).any()) or bool((ed.top_p > 0).any()):
        raise _family_error(
            family, "topk/topp", f"its {family.choice!r} routing takes a fixed number of experts"
        )
    if family.correction_bias_attrs:
        raise _family_error(family, "logit edits", "a selection bias outside the top-k recipe")
    # sparsemixer, Switch and NLLB choose by argmax of the logits: editing z is editing the choice
    return expected_topk(family, edit_logits(family, logits, ed), ctx)
