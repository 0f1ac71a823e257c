"""Emit a dense Llama (SmolLM2) with decomposed MLPs as a Hugging Face Qwen2-MoE model.

Qwen2-MoE with ``qkv_bias=False`` has Llama's attention, RMSNorms, rope and (optionally) tied
embeddings; layers listed in ``mlp_only_layers`` keep a dense ``Qwen2MoeMLP`` with the same
``gate_proj``/``up_proj``/``down_proj`` names, so the dense weights copy over unchanged. Its sparse
block always has a shared expert: we give it width 0 (and a zero gate), so it contributes exactly 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from workbench.zoo.decompose import Decomposition, block_state, qwen2_moe_config_kwargs


def _no_init() -> AbstractContextManager[Any]:
    """Skip random initialisation of a model whose weights are all loaded afterwards."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # an older or newer transformers: initialise, only slower
        return nullcontext()
    return no_init_weights()


def moe_config(dense_config: Any, layers: Sequence[int], decomps: Sequence[Decomposition], top_k: int) -> Any:
    """A Qwen2-MoE config equal to the dense Llama config, with sparse blocks at ``layers``."""
    from transformers import Qwen2MoeConfig

    c = dense_config
    kinds = {(d.n_experts, d.expert_size) for d in decomps}
    if len(kinds) != 1:
        raise ValueError(f"all decomposed layers need the same expert shape, got {sorted(kinds)}")
    fields: dict[str, Any] = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=getattr(c, "head_dim", c.hidden_size // c.num_attention_heads),
        hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters),
        tie_word_embeddings=c.tie_word_embeddings,
        qkv_bias=False,
        mlp_only_layers=[i for i in range(c.num_hidden_layers) if i not in set(layers)],
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        architectures=["Qwen2MoeForCausalLM"],
        **qwen2_moe_config_kwargs(decomps[0], top_k),
    )
    return Qwen2MoeConfig(**fields)


def to_qwen2_moe(
    dense: Any, decomps: dict[int, Decomposition], top_k: int, temperatures: dict[int, float]
) -> Any:
    """The dense model as a Qwen2-MoE: same weights, with ``decomps`` in place of those layers' MLPs."""
    from transformers import Qwen2MoeForCausalLM

    config = moe_config(dense.config, sorted(decomps), list(decomps.values()), top_k)
    state = {
        k: v
        for k, v in dense.state_dict().items()
        if not k.startswith("lm_head") or not config.tie_word_embeddings
    }
    for layer, dec in decomps.items():
        prefix = f"model.layers.{layer}.mlp."
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        state.update({prefix + k: v for k, v in block_state(dec, top_k, temperatures[layer]).items()})
        hidden = config.hidden_size
        state[prefix + "shared_expert_gate.weight"] = torch.zeros(1, hidden)
        for proj, shape in (("gate_proj", (0, hidden)), ("up_proj", (0, hidden)), ("down_proj", (hidden, 0))):
            state[prefix + f"shared_expert.{proj}.weight"] = torch.zeros(shape)
    with warnings.catch_warnings(), _no_init():
        warnings.simplefilter("ignore")  # zero-width shared expert: "initializing zero-element tensors"
        model = Qwen2MoeForCausalLM(config)  # every parameter is overwritten below (strict check)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


@torch.no_grad()
def all_experts_logit_diff(
    dense: nn.Module, decomps: dict[int, Decomposition], ids: torch.Tensor, n_experts: int
) -> float:
    """Max |logit difference| between the dense model and its Qwen2-MoE conversion routing to all experts."""
    model = to_qwen2_moe(dense, decomps, n_experts, {layer: math.inf for layer in decomps})
    return float((model(input_ids=ids).logits - dense(input_ids=ids).logits).abs().max())
