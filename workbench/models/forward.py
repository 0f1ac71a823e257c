"""One forward pass of any supported model on a padded batch, returning next-token logits.

Decoder-only models get explicit ``position_ids`` from the attention mask, so left and right
padding give identical results. Encoder-decoder models (Switch, NLLB-MoE) see the text on both
sides: the encoder reads it and the decoder is teacher-forced on the same tokens, so encoder and
decoder MoE layers are recorded at the same token positions.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import torch
from torch import nn


@lru_cache(maxsize=64)
def _accepts(cls: Any, name: str) -> bool:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def model_forward(model: nn.Module, batch: object) -> torch.Tensor:
    """Run ``model`` on ``batch`` (a capture Batch) and return its LM logits [B,T,V]."""
    input_ids = batch.input_ids  # type: ignore[attr-defined]
    mask = batch.mask  # type: ignore[attr-defined]
    kwargs: dict[str, torch.Tensor | bool] = {"input_ids": input_ids, "attention_mask": mask}
    cls: Any = type(model)
    if is_encoder_decoder(model):
        kwargs["decoder_input_ids"] = input_ids
        kwargs["decoder_attention_mask"] = mask
    elif _accepts(cls, "position_ids"):
        kwargs["position_ids"] = batch.position_ids  # type: ignore[attr-defined]
    if _accepts(cls, "use_cache"):
        kwargs["use_cache"] = False
    out = model(**kwargs)
    logits: torch.Tensor = out.logits if hasattr(out, "logits") else out[0]
    return logits
