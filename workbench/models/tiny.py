"""Tiny random MoE models built from configs, and a byte-level tokenizer trained on nothing.

No model hub is reachable in tests or CI, so every architecture is exercised through a tiny random
model built from its own config class, shrunk to hidden 64, 2 layers, 8 experts, top-2. Multimodal
configs are reduced to their *text* sub-config (the language model is where the experts live).

The config is rebuilt from keyword arguments (not patched after the fact) so that values each
config derives in ``__post_init__`` (layer types, per-layer configs) follow the tiny sizes. What a
few architectures need beyond the generic sizes is data in :data:`MODEL_OVERRIDES`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

#: Attribute values applied to every (text) config, and to its sub-configs, that has the field.
TINY_OVERRIDES: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 64,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 16,
    # heads that score keys for a sparse-attention indexer are a subset of the query heads of one key
    # head (Kolibri-1.1 validates this): with 4 query and 4 key heads, that is one head
    "index_num_heads": 1,
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
    "mlp_only_layers": [],
    "decoder_sparse_step": 1,
    "num_dense_layers": 1,
}

_MIXED = ["dense", "sparse"]


def _mrope(section: list[int]) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": 1e4, "mrope_section": section}


_GEMMA4_MOE = {
    "enable_moe_block": True,
    "top_k_experts": 2,
    "vocab_size_per_layer_input": 320,
    "hidden_size_per_layer_input": 8,
}

#: Per-architecture additions (keyed by model_type); a dict value for a sub-config field (DBRX's
#: ``ffn_config``) is merged into that sub-config.
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    # multi-head latent attention: RoPE runs over head_dim, which must equal qk_rope_head_dim
    "axk1": {"head_dim": 8},
    "deepseek_v3": {"head_dim": 8},
    # 4 zero-compute (identity) experts next to the 8 real ones, so top-k picks both kinds
    # (the default 256 identity experts leave the real experts almost never chosen)
    "longcat_flash": {"head_dim": 8, "zero_expert_num": 4},
    # first layers dense by default: keep one dense and one sparse layer
    "beam": {"mlp_layer_types": _MIXED},
    "deepseek_ocr2_text": {"mlp_layer_types": _MIXED},
    "deepseek_v4": {"mlp_layer_types": ["hash_moe", "moe"]},
    "glm5_next_text": {"mlp_layer_types": _MIXED, "qk_rope_head_dim": 0},  # DSA layers are NoPE
    "step3p5": {"mlp_layer_types": _MIXED, "sliding_window": 16},
    "step3p7_text": {"mlp_layer_types": _MIXED, "sliding_window": 16},
    "switch_transformers": {"num_sparse_encoder_layers": 1, "num_sparse_decoder_layers": 1},
    "nllb-moe": {"encoder_sparse_step": 2, "decoder_sparse_step": 2},
    # MoE switched off (or sub-configs) by default
    "dbrx": {
        "n_heads": 4,
        "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 8, "moe_top_k": 2},
    },
    "diffusion_gemma_text": _GEMMA4_MOE,
    "doge": {"is_moe": True, "num_experts": 16},
    "gemma4_text": _GEMMA4_MOE,
    # fields left None by default, or derived values that must fit the tiny sizes
    "dots1": {"n_shared_experts": 1},
    "ernie4_5_vl_moe_text": {"moe_intermediate_size": [32, 32], "rope_parameters": _mrope([3, 3, 2])},
    "glm4v_moe_text": {"rope_parameters": _mrope([2, 1, 1])},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"]},
    "hy_v4_vl_text": {"rope_parameters": _mrope([2, 1, 1])},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    "mimo_v2_flash": {"num_key_value_heads": 2},  # sliding-window layers double the kv heads
    "qwen3_omni_moe_talker_text": {"shared_expert_intermediate_size": 32},
    "zaya": {"num_experts_per_tok": 1},
}

#: Attributes set on the built config (dotted paths), for fields a config class does not declare
#: but its modeling code reads.
MODEL_ATTRS: dict[str, dict[str, Any]] = {
    "dbrx": {"attn_config.rope_theta": 10000.0},
}

#: Largest tiny model we are willing to build (parameters); larger means a size field was missed.
MAX_PARAMS = 20_000_000


class TinyConfigError(ValueError):
    """The architecture's config cannot be shrunk into a tiny, buildable one."""


class NotATextModelError(TinyConfigError):
    """The (text) model takes no token ids: it is fed hidden states by another model."""


def _field_names(config: PretrainedConfig) -> set[str]:
    return set(config.to_dict())


def _tiny_kwargs(default: PretrainedConfig, values: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``type(default)``: the ``values`` it has fields for, sub-configs merged."""
    fields = _field_names(default)
    aliases: dict[str, str] = dict(getattr(type(default), "attribute_map", {}) or {})
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name not in fields:
            continue
        current = vars(default).get(name)
        if isinstance(current, PretrainedConfig):
            extra = value if isinstance(value, dict) else {}
            generic = {k: v for k, v in TINY_OVERRIDES.items() if not isinstance(v, dict)}
            sub = _tiny_kwargs(current, {**generic, **extra})
            kwargs[name] = {**current.to_dict(), **sub}
        else:
            kwargs[name] = value
    for name in fields:  # sub-configs not named in values still shrink
        current = vars(default).get(name)
        if isinstance(current, PretrainedConfig) and name not in kwargs and name not in ("text_config",):
            kwargs[name] = {**current.to_dict(), **_tiny_kwargs(current, TINY_OVERRIDES)}
    return kwargs


def _valid_token_ids(config: PretrainedConfig) -> None:
    """Token ids beyond the tiny vocabulary (padding_idx must fit the embedding) become 0."""
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int):
        return
    for name in _field_names(config):
        if not name.endswith("token_id"):
            continue
        value = getattr(config, name, None)
        if isinstance(value, int) and not 0 <= value < vocab:
            setattr(config, name, 0)
        elif isinstance(value, list) and any(isinstance(v, int) and v >= vocab for v in value):
            setattr(config, name, [0])


def text_config_of(model_type: str) -> PretrainedConfig:
    """The default config of ``model_type``, reduced to its text sub-config when it has one."""
    try:
        default = AutoConfig.for_model(model_type)
    except Exception as exc:  # any failure means the default config cannot be built
        raise TinyConfigError(f"default config does not build: {type(exc).__name__}: {exc}") from exc
    if getattr(default, "is_encoder_decoder", False):
        return default
    try:
        return default.get_text_config()
    except ValueError:
        return default


def tiny_config(model_type: str, **overrides: Any) -> PretrainedConfig:
    """A tiny config of ``model_type`` (a key of transformers' CONFIG_MAPPING), text part only."""
    default = text_config_of(model_type)
    specific = {**MODEL_OVERRIDES.get(default.model_type, {}), **MODEL_OVERRIDES.get(model_type, {})}
    kwargs = _tiny_kwargs(default, {**TINY_OVERRIDES, **specific, **overrides})
    # per-architecture values the config class does not declare are passed through as extras
    kwargs.update({k: v for k, v in specific.items() if k not in kwargs and not isinstance(v, dict)})
    try:
        config = type(default)(**kwargs)
    except Exception as exc:  # strict configs raise many kinds of validation errors
        raise TinyConfigError(f"tiny config rejected: {type(exc).__name__}: {exc}") from exc
    _valid_token_ids(config)
    for path, value in {**MODEL_ATTRS.get(default.model_type, {}), **MODEL_ATTRS.get(model_type, {})}.items():
        *owners, name = path.split(".")
        target: Any = config
        for owner in owners:
            target = getattr(target, owner)
        setattr(target, name, value)
    return config


def model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class to build for ``config``: seq2seq LM, causal LM, else the (text) base model."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    for auto in (AutoModelForSeq2SeqLM, AutoModelForCausalLM, AutoModel):
        mapping = auto._model_mapping
        if type(config) in mapping:
            found_cls: Any = mapping[type(config)]
            if isinstance(found_cls, (tuple, list)):
                found_cls = found_cls[0]
            if auto is not AutoModelForSeq2SeqLM or getattr(config, "is_encoder_decoder", False):
                model_cls: type[PreTrainedModel] = found_cls  # the auto mappings hold model classes
                return model_cls
    package = type(config).__module__.rsplit(".", 1)[0]
    module = importlib.import_module(f"{package}.modeling_{package.rsplit('.', 1)[1]}")
    found = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, PreTrainedModel) and getattr(c, "config_class", None) is type(config)
    ]
    found.sort(
        key=lambda c: (not c.__name__.endswith("ForCausalLM"), not c.__name__.endswith("Model"), c.__name__)
    )
    if not found:
        raise TinyConfigError(f"no model class in {module.__name__} takes a {type(config).__name__}")
    return found[0]


class TextLM(nn.Module):
    """A base text model with a random LM head, for text models that have no causal-LM class."""

    def __init__(self, base: PreTrainedModel) -> None:
        super().__init__()
        try:
            embeddings = base.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            embeddings = None
        if embeddings is None:
            raise NotATextModelError(
                f"{type(base).__name__} has no token embedding: it takes hidden states from another model"
            )
        self.model = base
        self.config = base.config
        self.lm_head = nn.Linear(base.config.hidden_size, base.config.vocab_size, bias=False)
        #: some text models embed tokens through a differently named table (Qwen3-Omni talker's
        #: codec embedding) and must be fed ``inputs_embeds``
        self.feed_embeddings = not isinstance(getattr(base, "embed_tokens", None), nn.Module)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool | None = None,
    ) -> Any:
        from transformers.modeling_outputs import CausalLMOutput

        tokens: dict[str, torch.Tensor] = {"input_ids": input_ids}
        if self.feed_embeddings:
            tokens = {"inputs_embeds": self.model.get_input_embeddings()(input_ids)}
        out = self.model(
            **tokens, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache
        )
        return CausalLMOutput(logits=self.lm_head(out[0]))


def count_params_meta(cls: type[PreTrainedModel], config: PretrainedConfig) -> int:
    """Parameters ``cls`` would have for ``config``, counted without allocating them."""
    with torch.device("meta"):
        model = cls._from_config(config)
    return sum(p.numel() for p in model.parameters())


def _built(cls: Any, config: Any) -> nn.Module:
    """``cls._from_config(config)`` with every parameter its own init leaves unset given a seeded normal init.

    Some architectures' ``_init_weights`` skip a module (e.g. the fused experts of Qwen3-Omni's talker),
    leaving ``torch.empty`` memory: garbage that differs from build to build (NaN or 1e27 at times), so a
    "seeded" tiny model was not reproducible. Built with deterministic algorithms on, torch fills such
    memory with NaN; those parameters are then drawn from N(0, initializer_range) from the global seed.
    """
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        model: nn.Module = cls._from_config(config)
    finally:
        torch.use_deterministic_algorithms(before)
    std = float(getattr(config, "initializer_range", 0.02) or 0.02)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and bool(torch.isnan(param).all()):
                param.normal_(0.0, std)
    return model


def tiny_model(model_type: str = "qwen2_moe", seed: int = 0, **overrides: Any) -> nn.Module:
    """A tiny random causal-LM (or seq2seq, or text model with an LM head) of ``model_type``, eval mode."""
    config = tiny_config(model_type, **overrides)
    cls = model_class(config)
    n_params = count_params_meta(cls, config)
    if n_params > MAX_PARAMS:
        raise TinyConfigError(f"tiny config of {model_type} still has {n_params / 1e6:.1f}M parameters")
    torch.manual_seed(seed)
    model: nn.Module = _built(cls, config)
    if not any(s in cls.__name__ for s in ("ForCausalLM", "ForConditionalGeneration", "LMHead")):
        model = TextLM(model)  # type: ignore[arg-type]
    randomise_routers(model, seed)
    return model.eval()


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


#: Leaf names of router modules whose weights may initialise to zero (all-tie routing).
ROUTER_NAMES = frozenset({"gate", "router", "classifier", "linear", "proj"})
#: Buffers/parameters that bias expert *selection* and initialise to zero.
SELECTION_BIASES = ("e_score_correction_bias", "expert_bias")
#: Per-expert weight scales that initialise to ones (randomised around 1).
EXPERT_SCALES = ("per_expert_scale",)
#: Token-id → experts tables of hash routers that initialise to zeros (every token → expert 0).
HASH_TABLES = ("tid2eid",)


def randomise_routers(model: nn.Module, seed: int = 0) -> None:
    """Some routers initialise to zeros (all ties); give them random weights so top-k is defined.

    Also randomises selection-bias buffers (``e_score_correction_bias``), which are buffers, not
    parameters, and start at zero.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            parts = name.split(".")
            if name.endswith(SELECTION_BIASES) and tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.05)
            elif name.endswith(EXPERT_SCALES) and tensor.is_floating_point():
                tensor.copy_(1.0 + torch.randn(tensor.shape, generator=gen) * 0.1)
            elif name.endswith(HASH_TABLES) and tensor.dim() == 2:
                n_experts = _router_width(model, name)
                picks = torch.rand((tensor.shape[0], n_experts), generator=gen).argsort(dim=-1)
                tensor.copy_(picks[:, : tensor.shape[1]])
            elif (
                len(parts) >= 2
                and ("router" in parts or "gate" in parts or parts[-2] in ROUTER_NAMES)
                and tensor.dim() == 2
                and tensor.is_floating_point()
                and torch.count_nonzero(tensor) == 0
            ):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)


def _router_width(model: nn.Module, table_name: str) -> int:
    """The number of experts of the router that owns the hash table ``table_name``."""
    owner = model.get_submodule(table_name.rsplit(".", 1)[0])
    weight = getattr(owner, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else int(getattr(owner, "num_experts", 2))
