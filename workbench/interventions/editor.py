"""One MoE layer's intervention, as four pure callbacks that every backend drives the same way.

The callbacks follow the forward pass: the MoE block's input (its ``[batch, seq]`` shape, for
spans), the router's output (the raw logits; routers that return the selection themselves get a
rewritten output), the experts module's input (families whose block passes ``(indices, weights)``
to the experts module get rewritten arguments) and, where gate weights multiply the experts'
*input* rather than their output (Llama-4), the experts module's output (for ``Scale``).

Each returns the replacement (or None for "unchanged"), so the torch-hooks backend and the nnsight
backend apply exactly the same tensors: a :class:`LayerEditor` is the writing
:class:`~workbench.models.hooking.base.LayerSite` that both hook bases of :mod:`workbench.models.hooking`
drive (capture's taps are the reading ones). How a router's output is rewritten is chosen by its
declared ``router_output`` layout (data in :data:`WRITERS`), never by model class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from workbench.interventions.plan import Edits, LayerPlan
from workbench.interventions.select import edit_logits, select
from workbench.models.decode import experts_selection, router_logits, router_selection
from workbench.models.hooking import Call
from workbench.models.scores import RoutingContext


def _pad(idx: torch.Tensor, w: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen [N,k] to [N,width]: extra slots repeat the row's first expert with weight 0."""
    extra = width - idx.shape[1]
    if extra <= 0:
        return idx, w
    return (
        torch.cat([idx, idx[:, :1].expand(-1, extra)], dim=1),
        torch.cat([w, w.new_zeros((w.shape[0], extra))], dim=1),
    )


def weight_edits(idx: torch.Tensor, w: torch.Tensor, ed: Edits, *, scale: bool = True) -> torch.Tensor:
    """Applied weights after Zero (with optional renorm to the token's old total) and Scale."""
    zeroed = w * ed.factor.gather(1, idx)
    if bool(ed.renorm.any()):
        total, kept = w.sum(dim=-1, keepdim=True), zeroed.sum(dim=-1, keepdim=True)
        ok = ed.renorm[:, None] & (kept != 0)
        zeroed = torch.where(ok, zeroed * total / torch.where(ok, kept, 1.0), zeroed)
    return zeroed * ed.out_scale.gather(1, idx) if scale else zeroed


class LayerEditor:
    """Applies a :class:`LayerPlan` to one MoE layer, forward pass by forward pass (a writing site)."""

    writes = True
    reads_block_input = True

    def __init__(self, plan: LayerPlan, config: object = None) -> None:
        self.plan = plan
        self.layer = plan.layer
        self.family = plan.layer.family
        self.config = config
        self.writer = WRITERS.get(self.family.router_output) if self.family.selection == "router" else None
        self.weights_on_input = self.family.router_output in WEIGHTS_ON_INPUT
        self.reads_experts_input = self.family.selection == "experts_args"
        self.reads_experts_output = self.weights_on_input
        self.reset()

    def reset(self) -> None:
        self.batch_shape: tuple[int, int] | None = None
        self.logits: torch.Tensor | None = None
        self.edits: Edits | None = None
        self.ctx: RoutingContext | None = None

    # -- callbacks ------------------------------------------------------------------------------
    def on_block_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A new forward pass reaches the block: forget the last one, note the ``[batch, seq]`` shape."""
        self.reset()
        hidden = args[0] if args else kwargs.get("hidden_states")
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else ()
        self.batch_shape = (int(shape[0]), int(shape[1])) if len(shape) >= 3 else None

    def on_router_output(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        layer = self.layer
        self.logits = router_logits(self.family, output, layer.n_experts)
        x = args[0] if args else kwargs.get("hidden_states")
        second = args[1] if len(args) > 1 else None
        token_ids = kwargs.get("input_ids", second)
        batch = self.batch_shape
        if isinstance(x, torch.Tensor) and x.dim() >= 3:
            batch = (int(x.shape[0]), int(x.shape[1]))
        self.ctx = RoutingContext(
            router=layer.router,
            block=layer.block,
            config=self.config,
            top_k=layer.top_k,
            batch_shape=batch,
            token_ids=token_ids if isinstance(token_ids, torch.Tensor) else None,
            padding_mask=second if second is not None else kwargs.get("padding_mask"),
        )
        self.edits = self.plan.edits(self.logits.shape[0], self.batch_shape or batch, self.logits.device)
        if self.writer is None or not (self.edits.any_logit or self.edits.any_weight):
            return None
        return self.writer(self, output)

    def on_experts_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call | None:
        if self.family.selection != "experts_args":
            return None
        ed = self._edits()
        if not (ed.any_logit or ed.any_weight):
            return None
        idx0, w0 = experts_selection(self.family, args, kwargs)
        n = ed.touched.shape[0]
        idx, w = self.selection(idx0.reshape(n, -1).long(), w0.reshape(n, -1).float())
        w = weight_edits(idx, w, ed)
        return _replace_selection(self.family, args, kwargs, idx.to(idx0.dtype), w.to(w0.dtype))

    def on_experts_output(self, output: Any) -> Any:
        """Scale on families whose weights scale the experts' input: scale output rows per expert."""
        if not self.weights_on_input:
            return None
        ed = self._edits()
        if not bool((ed.out_scale != 1).any()):
            return None
        e, h = self.layer.n_experts, output.shape[-1]
        per_expert = output.reshape(e, -1, h)
        scale = ed.out_scale.t().reshape(e, -1, 1).to(output.dtype)
        return (per_expert * scale).reshape(output.shape)

    # -- shared pieces --------------------------------------------------------------------------
    def _edits(self) -> Edits:
        if self.edits is None or self.ctx is None:
            raise RuntimeError(
                f"layer {self.layer.layer} ({self.layer.path}): the experts module ran before its router; "
                "the adapter's family does not match this block"
            )
        return self.edits

    def selection(self, idx: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The applied (indices, weights) before weight edits: the model's own, recomputed on edited rows."""
        ed = self._edits()
        if not ed.any_logit:
            return idx, w
        assert self.logits is not None and self.ctx is not None
        new_idx, new_w = select(self.family, self.logits.reshape(ed.touched.shape[0], -1), ed, self.ctx)
        if bool(ed.touched.all()):
            return new_idx, new_w
        width = max(idx.shape[1], new_idx.shape[1])
        idx, w = _pad(idx, w, width)
        new_idx, new_w = _pad(new_idx, new_w, width)
        rows = ed.touched[:, None]
        return torch.where(rows, new_idx, idx), torch.where(rows, new_w, w)


def _replace_selection(
    family: Any, args: tuple[Any, ...], kwargs: dict[str, Any], idx: torch.Tensor, w: torch.Tensor
) -> Call:
    """The experts module's call with (indices, weights) replaced where the block passed them."""
    i_pos, w_pos = family.experts_arg_positions
    i_name, w_name = family.experts_kwarg_names
    new_args, new_kwargs = list(args), dict(kwargs)
    for name, pos, value in ((i_name, i_pos, idx), (w_name, w_pos, w)):
        if name in new_kwargs:
            new_kwargs[name] = value
        else:
            new_args[pos] = value
    return tuple(new_args), new_kwargs


# -- router-output writers, per declared layout --------------------------------------------------
def _dense(idx: torch.Tensor, w: torch.Tensor, n_experts: int) -> torch.Tensor:
    return w.new_zeros((w.shape[0], n_experts)).scatter_add_(1, idx, w)


def _write_scores_logits(ed: LayerEditor, output: Any) -> Any:
    """Llama-4: (dense scores [N,E], logits). Weights scale the experts' input; Scale acts on output."""
    scores, logits = output[0], output[1]
    n_experts = ed.layer.n_experts
    idx0, w0 = router_selection(ed.family, output, ed.layer.top_k, n_experts)
    idx, w = ed.selection(idx0.long(), w0.float())
    w = weight_edits(idx, w, ed._edits(), scale=False)
    dense = _dense(idx, w, n_experts).reshape(scores.shape).to(scores.dtype)
    return (dense, logits, *output[2:])


def _write_dispatch_probs_logits(ed: LayerEditor, output: Any) -> Any:
    """Switch: (one-hot dispatch after capacity, top-1 probability, logits), rebuilt on edited logits."""
    dispatch, probs, logits = output[0], output[1], output[2]
    edits, n_experts = ed._edits(), ed.layer.n_experts
    if edits.any_logit:
        assert ed.ctx is not None
        z = edit_logits(ed.family, logits.reshape(-1, n_experts), edits)
        idx, kept_w = select(ed.family, logits.reshape(-1, n_experts), edits, ed.ctx)
        dispatch = (F.one_hot(idx[:, 0], n_experts) * (kept_w > 0)).reshape(dispatch.shape).to(dispatch.dtype)
        w = torch.softmax(z, dim=-1).gather(1, idx)
        logits = z.reshape(logits.shape).to(logits.dtype)
    else:
        idx = logits.reshape(-1, n_experts).argmax(dim=-1, keepdim=True)
        w = probs.reshape(-1, 1).float()
    w = weight_edits(idx, w, edits)
    return (dispatch, w.reshape(probs.shape).to(probs.dtype), logits, *output[3:])


def _write_mask_combine_logits(ed: LayerEditor, output: Any) -> Any:
    """NLLB-MoE: (top-1 mask after capacity, combine weights [N,E], logits), rebuilt on edited logits."""
    top1, combine, logits = output[0], output[1], output[2]
    edits, n_experts = ed._edits(), ed.layer.n_experts
    if edits.any_logit:
        assert ed.ctx is not None
        z = edit_logits(ed.family, logits.reshape(-1, n_experts), edits)
        idx, w = select(ed.family, logits.reshape(-1, n_experts), edits, ed.ctx)
        top1 = (F.one_hot(idx[:, 0], n_experts) * (w[:, :1] > 0)).reshape(top1.shape).to(top1.dtype)
        dense = _dense(idx, w, n_experts)
        logits = z.reshape(logits.shape).to(logits.dtype)
    else:
        dense = combine.reshape(-1, n_experts).float()
    every = torch.arange(n_experts, device=dense.device).expand(dense.shape[0], -1)
    dense = weight_edits(every, dense, edits)
    return (top1, dense.reshape(combine.shape).to(combine.dtype), logits, *output[3:])


def _write_logits_weights_indices(ed: LayerEditor, output: Any) -> Any:
    """A TopKRouter read as the selection (LongCat-Flash since transformers 5.25): (logits, weights,
    indices) with the edited selection in place of the router's."""
    logits, weights, indices = output[0], output[1], output[2]
    idx0, w0 = router_selection(ed.family, output, ed.layer.top_k, ed.layer.n_experts)
    idx, w = ed.selection(idx0.long(), w0.float())
    w = weight_edits(idx, w, ed._edits())
    return (logits, w.to(weights.dtype), idx.to(indices.dtype), *output[3:])


Writer = Callable[[LayerEditor, Any], Any]
#: How a router that returns the selection itself gets its output rewritten, by declared layout.
WRITERS: dict[str, Writer] = {
    "logits_weights_indices": _write_logits_weights_indices,
    "probs_weights_indices": _write_logits_weights_indices,
    "scores_logits": _write_scores_logits,
    "dispatch_probs_logits": _write_dispatch_probs_logits,
    "mask_combine_logits": _write_mask_combine_logits,
}
#: Layouts whose gate weights multiply the experts' input (so Scale acts on the experts' output).
WEIGHTS_ON_INPUT = frozenset({"scores_logits"})
