"""Routing families: what differs between MoE architectures, described as data.

Nearly every Hugging Face MoE block has the same shape (a router child, an experts child holding
fused 3-D weights, optional shared experts). What differs is small and is written down here as a
:class:`RoutingFamily` record instead of as per-model code paths:

* where the router, experts and shared experts live (attribute names),
* how to read the router's output (``router_output`` layout),
* where the *applied* top-k choice and gate weights come from (``selection``),
* the score function ``π`` the router applies to its logits (``score_fn``), with the config
  attributes that renormalise or scale the top-k weights.

Conventions shared by all families (documented in docs/supported-models.md):

* ``logits`` are the raw router logits ``z`` (before softmax/sigmoid/bias); for routers that only
  expose probabilities (``score_fn == "probs"``) the stored values are those probabilities.
* ``weights`` are the gate weights the model applied to each selected expert's output, after its own
  renormalisation and scaling; experts are stored in descending weight.
* Shared experts are always on; they are never mixed into the routed expert ids.
* Capacity-limited routers (Switch, NLLB-MoE) keep the router's choice for a dropped token and
  record the weight it actually received: 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RouterOutput = Literal[
    "logits_weights_indices",  # TopKRouter: (logits[T,E], weights[T,k], indices[T,k])
    "logits",  # a plain linear gate returning logits[T,E]
    "scores_logits",  # Llama-4: (dense sigmoid scores[T,E] with -inf→0 off top-k, logits[T,E])
    "dispatch_probs_logits",  # Switch: (one-hot dispatch[T,E], applied prob[T,1], logits[T,E])
    "probs_weights_indices",  # routers that return probabilities where others return logits
]
Selection = Literal[
    "experts_args",  # read (indices, weights) from the experts module's call: what was applied
    "router",  # read them from the router's output
]
ScoreFn = Literal["softmax", "sigmoid", "probs"]


@dataclass(frozen=True)
class RoutingFamily:
    """How one family of MoE blocks routes, and where its pieces live."""

    name: str
    router_attrs: tuple[str, ...] = ("gate", "router")
    experts_attr: str = "experts"
    shared_attrs: tuple[str, ...] = ("shared_expert", "shared_experts", "shared_mlp")
    shared_gate_attr: str | None = "shared_expert_gate"
    router_output: RouterOutput = "logits_weights_indices"
    selection: Selection = "experts_args"
    #: positions of (indices, weights) among the experts module's positional arguments
    experts_arg_positions: tuple[int, int] = (1, 2)
    #: keyword names of (indices, weights) when the block calls the experts module by keyword
    experts_kwarg_names: tuple[str, str] = ("top_k_index", "top_k_weights")
    score_fn: ScoreFn = "softmax"
    #: config attributes read for the independent recomputation of top-k weights
    renorm_attr: str | None = "norm_topk_prob"
    scale_attr: str | None = None
    correction_bias_attr: str | None = None
    #: router attribute names that hold the linear weight (and optional bias) producing logits
    router_weight_attrs: tuple[str, ...] = ("weight", "classifier.weight", "linear.weight", "proj.weight")
    notes: str = ""
    extra: dict[str, object] = field(default_factory=dict)


#: The default family: a TopKRouter returning (logits, weights, indices), fused experts called as
#: experts(hidden, top_k_index, top_k_weights), softmax scores. Most of transformers 5.x.
DEFAULT_FAMILY = RoutingFamily(name="topk-softmax")
