"""From specs to per-layer plans, and from a plan to dense per-token edit tensors for one forward.

:func:`make_plans` validates the specs against the model's MoE layers (an unknown layer or expert is
a clear error that lists what exists) and groups them per layer. At run time,
:meth:`LayerPlan.edits` turns a layer's specs into dense ``[N, E]`` tensors for the N flattened
tokens of the current forward, each spec restricted to its token span; the selection recipe
(:mod:`workbench.interventions.select`) and the output writers consume those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from workbench.interventions.specs import (
    Bias,
    Force,
    Intervention,
    InterventionSpecError,
    PerLayer,
    Prune,
    Reroute,
    Scale,
    TopK,
    TopP,
    Zero,
)
from workbench.models.discovery import MoELayer

#: Logit-level kinds: they change which experts are chosen, so the selection is recomputed.
LOGIT_KINDS = frozenset({"reroute", "force", "bias", "prune", "topk", "topp"})


@dataclass
class Edits:
    """Dense edits for N tokens × E experts of one layer in one forward pass."""

    delta: torch.Tensor  # [N,E] added to the logits (Bias)
    ban: torch.Tensor  # [N,E] bool: logit −inf before top-k (Reroute, Prune)
    force: torch.Tensor  # [N,E] bool: logit just above the maximum (Force)
    width: torch.Tensor  # [N] long: experts per token (TopK); 0 = the model's own k
    top_p: torch.Tensor  # [N] float: cumulative share (TopP); 0 = off
    factor: torch.Tensor  # [N,E] 0 where the applied gate weight is zeroed (Zero), else 1
    out_scale: torch.Tensor  # [N,E] multiplies each expert's output (Scale)
    renorm: torch.Tensor  # [N] bool: after zeroing, rescale the rest to the token's old total
    touched: torch.Tensor  # [N] bool: rows with any logit-level edit (selection recomputed)

    @property
    def any_logit(self) -> bool:
        return bool(self.touched.any())

    @property
    def any_weight(self) -> bool:
        return bool((self.factor != 1).any()) or bool((self.out_scale != 1).any())


@dataclass
class LayerPlan:
    """The specs that touch one MoE layer, in the order given."""

    layer: MoELayer
    specs: list[Intervention] = field(default_factory=list)

    @property
    def kinds(self) -> set[str]:
        return {s.kind for s in self.specs}

    def edits(self, n_rows: int, batch_shape: tuple[int, int] | None, device: torch.device) -> Edits:
        """Dense edit tensors for ``n_rows`` flattened tokens (``batch_shape`` resolves spans)."""
        e = self.layer.n_experts
        ed = Edits(
            delta=torch.zeros((n_rows, e), device=device),
            ban=torch.zeros((n_rows, e), dtype=torch.bool, device=device),
            force=torch.zeros((n_rows, e), dtype=torch.bool, device=device),
            width=torch.zeros(n_rows, dtype=torch.long, device=device),
            top_p=torch.zeros(n_rows, device=device),
            factor=torch.ones((n_rows, e), device=device),
            out_scale=torch.ones((n_rows, e), device=device),
            renorm=torch.zeros(n_rows, dtype=torch.bool, device=device),
            touched=torch.zeros(n_rows, dtype=torch.bool, device=device),
        )
        for spec in self.specs:
            rows = row_mask(spec, n_rows, batch_shape, device)
            cols = torch.zeros(e, dtype=torch.bool, device=device)
            chosen = spec.layer_experts().get(self.layer.layer, ())
            cols[list(chosen)] = True
            cell = rows[:, None] & cols[None, :]
            if isinstance(spec, Bias):
                ed.delta = ed.delta + cell * spec.delta
            elif isinstance(spec, Reroute):
                ed.ban |= cell
            elif isinstance(spec, Prune):
                ed.ban |= rows[:, None] & ~cols[None, :]
            elif isinstance(spec, Force):
                ed.force |= cell
            elif isinstance(spec, TopK):
                ed.width = torch.where(rows, spec.k, ed.width)
                ed.top_p = torch.where(rows, 0.0, ed.top_p)
            elif isinstance(spec, TopP):
                ed.top_p = torch.where(rows, spec.p, ed.top_p)
                ed.width = torch.where(rows, 0, ed.width)
            elif isinstance(spec, Zero):
                ed.factor = torch.where(cell, 0.0, ed.factor)
                ed.renorm |= rows if spec.renorm else torch.zeros_like(rows)
            elif isinstance(spec, Scale):
                ed.out_scale = torch.where(cell, ed.out_scale * spec.s, ed.out_scale)
            if spec.kind in LOGIT_KINDS:
                ed.touched |= rows
        return ed


def row_mask(
    spec: Intervention, n_rows: int, batch_shape: tuple[int, int] | None, device: torch.device
) -> torch.Tensor:
    """[N] bool: the flattened tokens ``spec`` applies to in this forward."""
    if spec.span is None:
        return torch.ones(n_rows, dtype=torch.bool, device=device)
    if batch_shape is None or batch_shape[0] * batch_shape[1] != n_rows:
        raise InterventionSpecError(
            f"{spec.kind}: a token span needs the block's [batch, seq] input shape, but the router saw "
            f"{n_rows} rows (batch shape {batch_shape}); apply this spec without a span"
        )
    b, t = batch_shape
    if isinstance(spec.span[0], tuple):  # boolean [batch, seq] mask
        mask = torch.tensor(spec.span, dtype=torch.bool, device=device)
        if mask.shape[0] == 1 and b > 1:
            mask = mask.expand(b, -1)
        if tuple(mask.shape) != (b, t):
            raise InterventionSpecError(
                f"{spec.kind}: span mask has shape {tuple(mask.shape)}, the forward pass has [batch, seq] = [{b}, {t}]"
            )
        return mask.reshape(-1)
    positions = torch.tensor(spec.span, dtype=torch.long, device=device)
    positions = torch.where(positions < 0, positions + t, positions)
    positions = positions[(positions >= 0) & (positions < t)]
    per_seq = torch.zeros(t, dtype=torch.bool, device=device)
    per_seq[positions] = True
    return per_seq.repeat(b)


def _describe(layers: Sequence[MoELayer]) -> str:
    return ", ".join(f"{x.layer} ({x.n_experts} experts, top-{x.top_k})" for x in layers)


def make_plans(specs: Sequence[Intervention], layers: Sequence[MoELayer]) -> list[LayerPlan]:
    """Validate ``specs`` against ``layers`` and group them per layer (execution order kept)."""
    by_number = {x.layer: x for x in layers}
    plans = {x.layer: LayerPlan(x) for x in layers}
    for spec in specs:
        if not isinstance(spec, Intervention):
            raise InterventionSpecError(
                f"expected intervention specs (Zero, Reroute, Force, ...), got {type(spec).__name__}"
            )
        named = spec.layer_experts()
        if isinstance(spec, PerLayer) and spec.layers is None:
            named = {x.layer: () for x in layers}
        for number, experts in named.items():
            layer = by_number.get(number)
            if layer is None:
                raise InterventionSpecError(
                    f"{spec.kind}: the model has no MoE layer {number}; its MoE layers are {_describe(layers)}"
                )
            bad = [e for e in experts if not 0 <= e < layer.n_experts]
            if bad:
                raise InterventionSpecError(
                    f"{spec.kind}: layer {number} ({layer.path}) has experts 0..{layer.n_experts - 1}; "
                    f"no expert {', '.join(map(str, bad))}"
                )
            plans[number].specs.append(spec)
    for plan in plans.values():
        _check_layer(plan)
    return [plans[x.layer] for x in layers if plans[x.layer].specs]


def _check_layer(plan: LayerPlan) -> None:
    """Errors a spec set would only show as silent nonsense at run time."""
    layer = plan.layer
    banned: set[int] = set()
    forced: set[int] = set()
    for spec in plan.specs:
        experts = set(spec.layer_experts().get(layer.layer, ()))
        if isinstance(spec, Reroute):
            banned |= experts
        elif isinstance(spec, Prune):
            banned |= set(range(layer.n_experts)) - experts
        elif isinstance(spec, Force):
            forced |= experts
        elif isinstance(spec, TopK) and spec.k > layer.n_experts:
            raise InterventionSpecError(
                f"topk: layer {layer.layer} has only {layer.n_experts} experts, k={spec.k}"
            )
    widths = [s.k for s in plan.specs if isinstance(s, TopK)] or [layer.top_k]
    if banned & forced:
        raise InterventionSpecError(
            f"layer {layer.layer}: experts {sorted(banned & forced)} are both forced and rerouted/pruned"
        )
    if layer.n_experts - len(banned) < min(widths):
        raise InterventionSpecError(
            f"layer {layer.layer}: only {layer.n_experts - len(banned)} experts remain after reroute/prune, "
            f"but each token routes to {min(widths)}"
        )
    if len(forced) > min(widths):
        raise InterventionSpecError(
            f"layer {layer.layer}: {len(forced)} experts forced but each token routes to only {min(widths)}"
        )
