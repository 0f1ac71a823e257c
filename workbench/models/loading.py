"""Load a model and its tokenizer from a local directory, a hub id, the zoo, or memory.

Safe by default: weights load from safetensors (or GGUF), never via pickle, and remote code runs
only with ``trust_remote_code=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.models.discovery import MoELayer, find_moe_layers

#: Files of which at least one must sit in a local model directory for its tokenizer to load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


class ModelLoadError(RuntimeError):
    """A model or its tokenizer could not be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    """A model ready for capture: the module, its tokenizer, a display name and its MoE layers."""

    model: nn.Module
    tokenizer: Any
    name: str
    layers: list[MoELayer]

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(DTYPES))}") from None


def _auto_model(config: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if (
        getattr(config, "is_encoder_decoder", False)
        or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ):
        return AutoModelForSeq2SeqLM
    return AutoModelForCausalLM


def _load_pretrained(
    source: str, *, trust_remote_code: bool, dtype: torch.dtype | None, local: bool
) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoTokenizer

    where = "directory" if local else "hub id"
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        hint = (
            "the directory needs a config.json"
            if local
            else "the model hub (or its local cache) must be reachable; download the model where it is and pass "
            "its local directory instead"
        )
        raise ModelLoadError(f"cannot load {where} {source!r}: {exc}. Hint: {hint}.") from exc
    no_tokenizer = (
        f"{source!r} has no usable tokenizer{{why}}. Save one next to the weights with "
        "tokenizer.save_pretrained(dir), or pass an in-memory model together with its tokenizer."
    )
    if local and not any((Path(source) / name).exists() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            no_tokenizer.format(why=f" (none of {', '.join(TOKENIZER_FILES)} in the directory)")
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(no_tokenizer.format(why=f" ({exc})")) from exc
    if len(tokenizer) < 2:  # transformers 5 builds an empty tokenizer when files are missing
        raise ModelLoadError(no_tokenizer.format(why=" (it loaded with an empty vocabulary)"))
    cls = _auto_model(config)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    gguf = sorted(Path(source).glob("*.gguf")) if local else []
    if gguf and not any(Path(source).glob("*.safetensors")):
        kwargs["gguf_file"] = gguf[0].name
    else:
        kwargs["use_safetensors"] = True
    try:
        model = cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load weights of {source!r}: {exc}. moe-workbench loads safetensors or GGUF only "
            "(never pickled .bin files); convert the checkpoint with save_pretrained(safe_serialization=True)."
        ) from exc
    return model, tokenizer


def _zoo(name: str) -> tuple[nn.Module, Any] | None:
    """Built-in models by name.

    ``tiny-ref`` is the committed reference model (datasets/tiny-ref); ``smollm2-moe`` is the
    decomposed SmolLM2 built by ``moe-workbench zoo build smollm2-moe``; ``tiny:<model_type>`` is a
    tiny random model of that architecture.
    """
    if name == "tiny-ref":
        from workbench.zoo import tiny_ref

        try:
            return tiny_ref.load()
        except FileNotFoundError as exc:
            raise ModelLoadError(str(exc)) from exc
    if name == "smollm2-moe":
        from workbench.zoo.smollm2 import default_dir

        built = default_dir()
        if not (built / "config.json").exists():
            raise ModelLoadError(
                f"smollm2-moe is not built yet (looked in {built}); run `moe-workbench zoo build smollm2-moe` first"
            )
        return _load_pretrained(str(built), trust_remote_code=False, dtype=None, local=True)
    if name.startswith("tiny:"):
        from workbench.models.tiny import byte_tokenizer, tiny_model

        model_type = name.split(":", 1)[1]
        try:
            return tiny_model(model_type), byte_tokenizer()
        except (KeyError, ValueError) as exc:
            raise ModelLoadError(f"no tiny model for architecture {model_type!r}: {exc}") from exc
    return None


def load_model(
    source: str | Path | nn.Module,
    tokenizer: Any = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    name: str | None = None,
) -> LoadedModel:
    """Load ``source`` and discover its MoE layers.

    ``source`` is an in-memory model (then ``tokenizer`` is required), a zoo name such as
    ``tiny:qwen2_moe``, a local Hugging Face directory, or a hub id (needs the hub or its cache).
    """
    torch_dtype = resolve_dtype(dtype)
    if isinstance(source, nn.Module):
        if tokenizer is None:
            raise ModelLoadError("an in-memory model needs its tokenizer: load_model(model, tokenizer)")
        model, display = source, name or type(source).__name__
    else:
        text = str(source)
        zoo = _zoo(text)
        if zoo is not None:
            model, tok = zoo
        else:
            local = Path(text).exists()
            if not local and (text.startswith((".", "/")) or text.count("/") > 1):
                raise ModelLoadError(f"{text!r}: no such model directory")
            model, tok = _load_pretrained(
                text, trust_remote_code=trust_remote_code, dtype=torch_dtype, local=local
            )
        tokenizer = tokenizer or tok
        display = name or text
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=display, layers=find_moe_layers(model))
