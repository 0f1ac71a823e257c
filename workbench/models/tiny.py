"""Tiny random MoE models built from configs, and a byte-level tokenizer trained on nothing.

No model hub is reachable in tests or CI, so every architecture is exercised through a tiny random
model built from its own config class, shrunk to hidden 64, 2 layers, 8 experts, top-2.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerFast

#: Attribute values applied to every (text) config that has the attribute.
TINY_OVERRIDES: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 64,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_experts": 8,
    "num_local_experts": 8,
    "n_routed_experts": 8,
    "moe_num_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 320,
    "max_position_embeddings": 512,
    "first_k_dense_replace": 0,
    "n_group": 2,
    "topk_group": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "d_model": 64,
    "d_ff": 64,
    "d_kv": 16,
    "num_heads": 4,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "tie_word_embeddings": False,
}


def shrink_config(config: PretrainedConfig, **overrides: Any) -> PretrainedConfig:
    """Shrink ``config`` (and its text sub-config) in place to a tiny size; returns it."""
    values = {**TINY_OVERRIDES, **overrides}
    targets = [config]
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    if text is not None and text is not config:
        targets.append(text)
    for target in targets:
        for key, value in values.items():
            if hasattr(target, key):
                with contextlib.suppress(AttributeError, TypeError, ValueError):
                    setattr(target, key, value)
        _fit_layer_types(target)
    return config


def _fit_layer_types(config: PretrainedConfig) -> None:
    """Per-layer lists computed for the full-size config must match the new layer count."""
    n = getattr(config, "num_hidden_layers", None)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(n, int) and isinstance(layer_types, list) and len(layer_types) != n:
        config.layer_types = layer_types[:n]


def tiny_config(model_type: str, **overrides: Any) -> PretrainedConfig:
    """A tiny config of ``model_type`` (a key of transformers' CONFIG_MAPPING)."""
    config = AutoConfig.for_model(model_type)
    return shrink_config(config, **overrides)


def byte_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 bytes + <bos>, <eos>, <pad>) that adds <bos> to each text.

    Built in code, so it needs neither a hub nor training. Token ids: specials 0..2, bytes 3..258.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<pad>", "<bos>", "<eos>"]
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        padding_side=padding_side,
    )
    return fast


def tiny_model(model_type: str = "qwen2_moe", seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A tiny random causal-LM (or seq2seq) model of ``model_type`` in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config)
    except ValueError:
        model = AutoModelForSeq2SeqLM.from_config(config)
    _randomise_routers(model, seed)
    return model.eval()


def _randomise_routers(model: torch.nn.Module, seed: int) -> None:
    """Some routers initialise to zeros (all ties); give them random weights so top-k is defined."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 2)
            if len(leaf) >= 2 and leaf[-2] in {"gate", "router", "classifier"} and param.dim() == 2:
                if torch.count_nonzero(param) == 0:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
            elif name.endswith("e_score_correction_bias"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
