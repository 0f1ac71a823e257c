"""Routing families: what differs between MoE architectures, described as data.

Nearly every Hugging Face MoE block has the same shape (a router child, an experts child holding
fused 3-D weights, optional shared experts). What differs is small and is written down here as a
:class:`RoutingFamily` record instead of as per-model code paths:

* where the router, experts and shared experts live (attribute names),
* how to read the router's output (``router_output`` layout),
* where the *applied* top-k choice and gate weights come from (``selection``),
* the score function ``π`` the router applies to its logits (``score_fn``) and the recipe that
  turns scores into the applied top-k weights: a selection-only bias, group-limited selection,
  renormalisation, scaling (see :mod:`workbench.models.scores`, which implements the recipe).

Hyper-parameters named by attribute (``renorm_attr``, ``scale_attrs``, ...) are looked up on the
router, then the MoE block, then the model's (text) config; a dotted name walks sub-modules.

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
    "logits_weights_indices",  # TopKRouter: (logits[T,E], weights[T,k], indices[T,k], ...)
    "logits",  # a plain linear gate returning logits[T,E]
    "scores_logits",  # Llama-4: (dense sigmoid scores[T,E] with -inf→0 off top-k, logits[T,E])
    "dispatch_probs_logits",  # Switch: (one-hot dispatch[T,E], applied prob[T,1], logits[T,E])
    "probs_weights_indices",  # routers that return probabilities where others return logits
    "mask_combine_logits",  # NLLB-MoE: (top-1 one-hot[T,E], combine weights[T,E], logits[T,E])
]
Selection = Literal[
    "experts_args",  # read (indices, weights) from the experts module's call: what was applied
    "router",  # read them from the router's output
]
#: The score function π(z). "probs": the router already returns probabilities (softmax).
ScoreFn = Literal["softmax", "sigmoid", "probs", "sqrtsoftplus"]
#: How the top-k experts are chosen from the scores.
Choice = Literal[
    "topk",  # top-k of π (+ selection bias, within the chosen groups)
    "sparsemixer",  # PhiMoE: two rounds of argmax, each weighted by a masked softmax
    "switch_capacity",  # Switch: top-1 of π, dropped (weight 0) beyond the expert capacity
    "nllb_top2",  # NLLB-MoE: top-2, weights renormalised over the pair, capacity → weight 0
]
GroupScore = Literal["top2sum", "max"]


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
    #: a fixed top-k (Switch: 1, NLLB-MoE: 2) where the modules carry no ``top_k`` attribute
    top_k: int | None = None
    #: the router attribute holding the number of experts (logit width), where it is unusual
    n_experts_attr: str | None = None
    #: attribute names under which blocks of this class are *not* text MoE layers (vision experts
    #: that never run on text, e.g. ERNIE-4.5-VL ``vision_moe``); discovery skips them
    skip_names: tuple[str, ...] = ()
    #: shared experts live on the enclosing module, next to the block (ERNIE-4.5-VL)
    shared_on_parent: bool = False

    # -- how logits come from the router's input ------------------------------------------------
    #: router attribute names that hold the linear weight (and optional bias) producing logits
    router_weight_attrs: tuple[str, ...] = (
        "weight",
        "gate.weight",
        "classifier.weight",
        "linear.weight",
        "proj.weight",
        "layer.weight",
        "wg.weight",
    )
    router_bias_attrs: tuple[str, ...] = (
        "bias",
        "gate.bias",
        "classifier.bias",
        "linear.bias",
        "proj.bias",
        "layer.bias",
    )
    #: a router that normalises its input first: the child norm module, then factors (Gemma-4)
    router_input_norm: str | None = None
    router_input_scale_attrs: tuple[str, ...] = ()
    #: logits multiplied by this attribute (MuseSpark) / soft-capped with it (Laguna)
    logit_multiplier_attr: str | None = None
    logit_softcap_attr: str | None = None

    # -- how scores become the applied top-k ----------------------------------------------------
    score_fn: ScoreFn = "softmax"
    #: an attribute naming the score function (overrides ``score_fn`` where present)
    score_fn_attr: str | None = None
    choice: Choice = "topk"
    #: a selection-only bias added to the scores (or logits, see ``bias_on``) before top-k
    correction_bias_attrs: tuple[str, ...] = ()
    bias_on: Literal["scores", "logits"] = "scores"
    #: group-limited selection (DeepSeek-V3): groups, groups kept, and how a group is scored
    group_attrs: tuple[str, str] | None = None
    group_score: GroupScore = "top2sum"
    #: (attribute, value) that must hold for group limiting to apply (DeepSeek-V2 topk_method)
    group_when: tuple[str, str] | None = None
    #: renormalise the top-k weights: True/False, or None to read ``renorm_attr``
    renorm: bool | None = None
    renorm_attr: str | None = "norm_topk_prob"
    #: when the score function in effect is softmax, the weights are a softmax over the chosen
    #: logits (renormalised), whatever ``renorm_attr`` says (Cohere2-MoE)
    softmax_over_topk: bool = False
    #: the p of the p-norm used to renormalise (DBRX ``moe_normalize_expert_weights``); default 1
    renorm_p_attr: str | None = None
    #: factors multiplied into the weights (routed_scaling_factor, route_scale, ...)
    scale_attrs: tuple[str, ...] = ()
    #: a per-expert scale vector indexed by the chosen expert (Gemma-4 ``per_expert_scale``)
    per_expert_scale_attr: str | None = None
    #: weights divided by top-k (OpenAI privacy filter)
    divide_by_top_k: bool = False
    #: a token-id → experts table; routers holding it choose by token id (DeepSeek-V4 hash layers)
    hash_table_attr: str | None = None
    #: an expert-capacity attribute (Switch), for the capacity recomputation
    capacity_attr: str | None = None
    #: why the load-time routing self-check cannot hold for this family (the module applies something
    #: other than what is recorded, by a documented convention); empty: the check runs
    routing_check_skip: str = ""
    notes: str = ""
    extra: dict[str, object] = field(default_factory=dict)


#: The conventions above, as written into docs/supported-models.md by the conformance sweep.
CONVENTIONS = """\
## Conventions

- **Layer numbers** are the model's own block index (`model.layers.12.mlp` is layer 12). In
  encoder-decoder models (Switch, NLLB-MoE) encoder blocks keep their index and decoder blocks are
  numbered after all encoder blocks: with a 2-block encoder, `decoder.block.0` is layer 2. The
  module path is stored with every layer.
- **Experts** are stored in descending applied weight; **weights** are what the model multiplied
  each routed expert's output by, after its own renormalisation and scaling. Scaling applied to
  the experts' *sum* (Beam, Laguna, Step-3.x `routed_scaling_factor`) is not part of the weights.
- **Shared experts** are always on and reported separately (`n_shared`); they never appear among
  the routed expert ids. Qwen-style sigmoid shared-expert gates are not routing weights.
- **Capacity-dropped tokens** (Switch, NLLB-MoE) keep the expert the router chose, with weight 0.
- **Llama-4** routers return `(scores, logits)`, in that order: logits are read from position 1;
  the weights are the sigmoid of the top-k logits.
- **Routers that return probabilities** (Gemma-4, DiffusionGemma: score fn `probs`) store those
  probabilities where other families store raw logits; the router normalises its input first
  (`norm(x) · scale · hidden^-½`), which the recomputation applies as declared data.
- **Multimodal** configs are reduced to their text model (column *text model*).
- **NLLB-MoE**: the recorded routing is the router's decision (top-1/top-2 experts and their
  combine weights). In the installed transformers `NllbMoeExperts` one-hot-encodes the top-1 mask
  again and so runs experts 1 and 0 on those shares instead: an upstream bug, not a capture error.
- **ERNIE-4.5-VL** vision experts (`vision_moe`) never run on text and are not reported; the
  shared experts on the enclosing block are counted with the text experts.
- **LongCat-Flash** zero-compute (identity) experts are ordinary expert ids ≥ `n_routed_experts`.
- **DeepSeek-V4** hash layers choose experts by token id (`tid2eid`); weights follow the scores.
"""


#: The default family: a TopKRouter returning (logits, weights, indices), fused experts called as
#: experts(hidden, top_k_index, top_k_weights), softmax scores. Most of transformers 5.x.
DEFAULT_FAMILY = RoutingFamily(name="topk-softmax")
