"""The built-in adapter table: which HF MoE blocks belong to which routing family.

Every entry is data: a HF MoE-block class name mapped to a :class:`RoutingFamily` record that says
where the router, experts and shared experts live and which score recipe the router applies
(:mod:`workbench.models.scores` implements the recipes). Adding an architecture is one line in
:data:`BLOCK_FAMILIES` (or a ``register_adapter`` call from outside). Blocks we know and do not
support are listed in :data:`UNSUPPORTED_BLOCKS` with the reason.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from workbench.models.family import DEFAULT_FAMILY, RoutingFamily
from workbench.models.registry import register_adapter, register_rule

_BIAS = ("e_score_correction_bias",)
_SCALE = ("routed_scaling_factor",)

# -- softmax families --------------------------------------------------------------------------
#: softmax top-k, weights always renormalised over the k (Mixtral; top-k logits then softmax)
SOFTMAX_RENORM = RoutingFamily(name="softmax-topk-renorm", renorm=True)
#: softmax top-k, renormalised when the router's ``norm_topk_prob`` says so (Qwen-MoE, OLMoE)
SOFTMAX_OPTIONAL_RENORM = RoutingFamily(name="softmax-topk")
#: softmax top-k, never renormalised (Jamba)
SOFTMAX_PLAIN = RoutingFamily(name="softmax-topk-plain", renorm=False)
#: softmax with a selection-only bias, renormalised (ERNIE-4.5)
ERNIE = RoutingFamily(
    name="ernie", renorm=True, correction_bias_attrs=("moe_statics.e_score_correction_bias",)
)
#: softmax or sigmoid as the config says; a softmax over the chosen logits (Cohere2-MoE)
COHERE2 = RoutingFamily(name="cohere2", score_fn_attr="expert_selection_fn", softmax_over_topk=True)
#: DeepSeek-V2: softmax, group-limited (group max) when topk_method says so, scaled, no renorm
DEEPSEEK_V2 = RoutingFamily(
    name="deepseek-v2",
    renorm=False,
    group_attrs=("num_group", "topk_group"),
    group_score="max",
    group_when=("topk_method", "group_limited_greedy"),
    scale_attrs=_SCALE,
)
#: Mistral-4: softmax, group-limited (top-2 sum), optional renorm, scaled
MISTRAL4 = RoutingFamily(
    name="mistral4-softmax-group", group_attrs=("num_group", "topk_group"), scale_attrs=_SCALE
)
#: LongCat-Flash: softmax + selection bias, scaled, with zero-compute (identity) experts in the logits.
#: The selection is read from the router: since transformers 5.25 the block moves identity-expert
#: choices onto dummy real expert ids with weight 0 before calling its experts module, so the
#: experts' arguments no longer say which experts were chosen (the router's output still does).
LONGCAT = RoutingFamily(
    name="longcat",
    selection="router",
    renorm=False,
    correction_bias_attrs=_BIAS,
    scale_attrs=_SCALE,
    n_experts_attr="n_routed_experts",
)
#: GPT-OSS privacy filter: softmax over the top-k logits, divided by k, router with a bias
OPENAI_PF = RoutingFamily(name="softmax-topk-over-k", renorm=True, divide_by_top_k=True)
#: DBRX: a plain linear router; softmax top-k, renormalised with a p-norm from the block
DBRX = RoutingFamily(
    name="dbrx",
    router_output="logits",
    renorm_attr="moe_normalize_expert_weights",
    renorm_p_attr="moe_normalize_expert_weights",
)
#: Gemma-4: the router normalises its input, returns probabilities; renormalised, per-expert scale
GEMMA4 = RoutingFamily(
    name="gemma4-probs",
    router_attrs=("router",),
    router_output="probs_weights_indices",
    score_fn="probs",
    router_input_norm="norm",
    router_input_scale_attrs=("scale", "scalar_root_size"),
    renorm=True,
    per_expert_scale_attr="per_expert_scale",
)
#: PhiMoE: sparsemixer (two argmax rounds with thresholded softmax weights)
PHIMOE = RoutingFamily(name="sparsemixer", router_attrs=("router",), choice="sparsemixer", top_k=2)

# -- sigmoid families --------------------------------------------------------------------------
#: DeepSeek-V3: sigmoid, selection bias, group-limited (top-2 sum), optional renorm, routed scaling
DEEPSEEK_V3 = RoutingFamily(
    name="deepseek-v3-sigmoid-group",
    score_fn="sigmoid",
    correction_bias_attrs=_BIAS,
    group_attrs=("num_group", "topk_group"),
    scale_attrs=_SCALE,
)
#: as DeepSeek-V3, but the routed scaling is applied to the experts' sum, not the weights
DEEPSEEK_V3_UNSCALED = replace(DEEPSEEK_V3, name="deepseek-v3-sigmoid-group-unscaled", scale_attrs=())
#: sigmoid + selection bias, always renormalised (MiniMax-M2, Step-3.x, Laguna)
SIGMOID_BIAS_RENORM = RoutingFamily(
    name="sigmoid-bias-renorm", score_fn="sigmoid", correction_bias_attrs=_BIAS, renorm=True
)
#: ... and scaled by the router's ``routed_scaling_factor`` (Ergo; Inkling-2 and DeepSeek-V4 with
#: their score function). Ergo's experts have no gate projection and RMS-normalise each expert's
#: output before weighting it: the weights are still what the block multiplies each output by.
SIGMOID_BIAS_RENORM_SCALED = replace(
    SIGMOID_BIAS_RENORM, name="sigmoid-bias-renorm-scaled", scale_attrs=_SCALE
)
INKLING2 = replace(SIGMOID_BIAS_RENORM_SCALED, name="scored-bias-renorm-scaled", score_fn_attr="scoring_func")
DEEPSEEK_V4 = replace(INKLING2, name="deepseek-v4", hash_table_attr="tid2eid")
MUSE_SPARK = replace(SIGMOID_BIAS_RENORM_SCALED, name="muse-spark", logit_multiplier_attr="output_multiplier")
LAGUNA = replace(SIGMOID_BIAS_RENORM, name="laguna-softcap", logit_softcap_attr="router_logit_softcapping")
#: AFMoE: sigmoid with the block's ``expert_bias``, renormalised, times ``route_scale``
AFMOE = RoutingFamily(
    name="afmoe",
    score_fn="sigmoid",
    correction_bias_attrs=("expert_bias",),
    renorm=True,
    scale_attrs=("route_scale",),
)
#: Hunyuan-V3: sigmoid with the block's correction bias, renormalised, times ``router_scaling_factor``
HY_V3 = replace(SIGMOID_BIAS_RENORM, name="hy-v3", scale_attrs=("router_scaling_factor",))
#: LFM2-MoE: sigmoid with the block's ``expert_bias``, optional renorm, scaled
LFM2 = RoutingFamily(
    name="lfm2", score_fn="sigmoid", correction_bias_attrs=("expert_bias",), scale_attrs=_SCALE
)
#: Kolibri (1 and 1.1): the selection bias is added to the logits; weights are the sigmoid of the
#: chosen logits, renormalised when ``norm_topk_prob`` says so
KOLIBRI = RoutingFamily(name="kolibri", score_fn="sigmoid", correction_bias_attrs=_BIAS, bias_on="logits")
#: Flint: sigmoid top-k, optional renorm
SIGMOID_TOPK = RoutingFamily(name="sigmoid-topk", score_fn="sigmoid")
#: Llama-4: the router returns (scores, logits); weights are the sigmoid of the top-k logits
LLAMA4 = RoutingFamily(
    name="llama4", router_attrs=("router",), router_output="scores_logits", selection="router",
    score_fn="sigmoid", renorm=False,
)  # fmt: skip

# -- capacity-limited encoder-decoder families -------------------------------------------------
SWITCH = RoutingFamily(
    name="switch-top1-capacity", router_attrs=("router",), router_output="dispatch_probs_logits",
    selection="router", choice="switch_capacity", top_k=1, capacity_attr="expert_capacity",
)  # fmt: skip
NLLB_MOE = RoutingFamily(
    name="nllb-top2-capacity", router_attrs=("router",), router_output="mask_combine_logits",
    selection="router", choice="nllb_top2", top_k=2,
    routing_check_skip=(
        "the recorded routing is the router's decision; the installed NllbMoeExperts re-encodes the top-1 "
        "mask and runs experts 0 and 1 on those shares instead (an upstream bug, see docs/supported-models.md)"
    ),
)  # fmt: skip

_V3_BLOCKS = (
    "DeepseekV3MoE DeepseekV32MoE Dots1MoE Dots3NoteTextMoE ExaoneMoeSparseMoEBlock Glm4MoeMoE "
    "Glm4MoeLiteMoE Glm4vMoeTextMoE GlmMoeDsaMoE KimiLinearMoE SolarOpenMoE BailingHybridMoE AXK1MoE "
    "AXK2MoE NemotronHMoE MiMoV2FlashMoE Glm5NextTextMoE HYV4MoE HYV4VLMoE MiniCPM5MoeMoE"
)

#: HF MoE-block class name → routing family. The whole per-architecture knowledge of the workbench.
BLOCK_FAMILIES: dict[str, RoutingFamily] = {
    **{name: DEEPSEEK_V3 for name in _V3_BLOCKS.split()},
    "BeamMoE": DEEPSEEK_V3_UNSCALED,
    "MixtralSparseMoeBlock": SOFTMAX_RENORM,
    "MiniMaxSparseMoeBlock": SOFTMAX_RENORM,
    "Qwen3VLMoeTextSparseMoeBlock": SOFTMAX_RENORM,
    "Qwen3_5MoeSparseMoeBlock": SOFTMAX_RENORM,
    "HunYuanMoEV1Moe": SOFTMAX_RENORM,
    "AriaTextMoELayer": SOFTMAX_RENORM,
    "GptOssMLP": SOFTMAX_RENORM,
    "GraniteMoeMoE": SOFTMAX_RENORM,
    "GraniteMoeSWAMoE": SOFTMAX_RENORM,
    "GraniteMoeHybridMoE": SOFTMAX_RENORM,
    "GraniteMoeSharedMoE": SOFTMAX_RENORM,
    "OlmoeSparseMoeBlock": SOFTMAX_OPTIONAL_RENORM,
    "FlexOlmoSparseMoeBlock": SOFTMAX_OPTIONAL_RENORM,
    "Qwen2MoeSparseMoeBlock": SOFTMAX_OPTIONAL_RENORM,
    "Qwen3MoeSparseMoeBlock": SOFTMAX_OPTIONAL_RENORM,
    "Qwen3NextSparseMoeBlock": SOFTMAX_OPTIONAL_RENORM,
    "Qwen3OmniMoeThinkerTextSparseMoeBlock": SOFTMAX_OPTIONAL_RENORM,
    "Qwen3OmniMoeTalkerTextSparseMoeBlock": SOFTMAX_OPTIONAL_RENORM,
    "Qwen4ExpTextSparseMoeBlock": SOFTMAX_OPTIONAL_RENORM,
    "MellumSparseMoeBlock": SOFTMAX_OPTIONAL_RENORM,
    "LaraMiniSparseMoeBlock": SOFTMAX_OPTIONAL_RENORM,
    "JambaSparseMoeBlock": SOFTMAX_PLAIN,
    "Ernie4_5_MoeSparseMoeBlock": ERNIE,
    "Ernie4_5_VLMoeSparseMoeBlock": replace(
        ERNIE, name="ernie-vl-text", skip_names=("vision_moe",), shared_on_parent=True
    ),
    "Cohere2MoeSparseMoeBlock": COHERE2,
    "DeepseekV2Moe": DEEPSEEK_V2,
    "DeepseekOcr2TextMoe": DEEPSEEK_V2,
    "UnlimitedOcrTextMoe": DEEPSEEK_V2,
    "Mistral4MoE": MISTRAL4,
    "MistralLarge4TextMoE": replace(MISTRAL4, name="mistral-large4-softmax-group", renorm=True),
    "LongcatFlashMoE": LONGCAT,
    "OpenAIPrivacyFilterMLP": OPENAI_PF,
    "DbrxFFN": DBRX,
    "Gemma4TextDecoderLayer": GEMMA4,
    "DiffusionGemmaEncoderTextLayer": GEMMA4,
    "PhimoeSparseMoeBlock": PHIMOE,
    "MiniMaxM2SparseMoeBlock": SIGMOID_BIAS_RENORM,
    "MiniMaxM3VLSparseMoeBlock": SIGMOID_BIAS_RENORM,
    "Step3p7SparseMoeBlock": SIGMOID_BIAS_RENORM,
    "LagunaSparseMoeBlock": LAGUNA,
    "ErgoMoE": SIGMOID_BIAS_RENORM_SCALED,
    "Inkling2SparseMoeBlock": INKLING2,
    "Inkling2LoopSparseMoeBlock": INKLING2,
    "DeepseekV4SparseMoeBlock": DEEPSEEK_V4,
    "MuseSparkMoE": MUSE_SPARK,
    "AfmoeSparseMoeBlock": AFMOE,
    "HYV3MoE": HY_V3,
    "Lfm2MoeSparseMoeBlock": LFM2,
    "Kolibri1SparseMoeBlock": KOLIBRI,
    "Kolibri1_1SparseMoeBlock": KOLIBRI,
    "FlintSparseMoeBlock": SIGMOID_TOPK,
    "Llama4TextMoe": LLAMA4,
    "SwitchTransformersSparseMLP": SWITCH,
    "NllbMoeSparseMLP": NLLB_MOE,
}

#: MoE blocks we recognise and deliberately do not adapt, with the reason (shown in errors/docs).
UNSUPPORTED_BLOCKS: dict[str, str] = {
    "JetMoeAttention": (
        "mixture of attention heads (JetMoeMoA) plus an MoE MLP without an `experts` child; its router "
        "returns a token-sorted dispatch (sorted index, batch index, gates), not per-token top-k"
    ),
    "ZayaSparseMoeBlock": (
        "router logits come from an MLP over a state carried across layers (EDA) and include a skip-expert "
        "class; they are not a linear function of the block input"
    ),
    "DogeCDMoE": (
        "cross-domain MoE: expert weights are embedding rows (`down_embed`/`up_embed`) chosen by "
        "product-key retrieval over `router_gate` scores; there is no experts module or per-token top-k"
    ),
    "InklingMoE": (
        "the router mixes shared-expert logits into the top-k softmax (log-sigmoid normalisation over routed "
        "and shared experts), so routed weights are not a function of the routed logits alone"
    ),
}

for _name, _family in BLOCK_FAMILIES.items():
    register_adapter(_name, _family)


def _is_topk_router_block(block: nn.Module) -> bool:
    """A block with a fused experts child and a router whose class says it is a top-k router."""
    experts = getattr(block, "experts", None)
    if experts is None or type(block).__name__ in UNSUPPORTED_BLOCKS:
        return False
    router = getattr(block, "gate", None) or getattr(block, "router", None)
    if router is None:
        return False
    return "topkrouter" in type(router).__name__.lower() and hasattr(experts, "gate_up_proj")


register_rule("fused experts + TopKRouter", _is_topk_router_block, DEFAULT_FAMILY)
