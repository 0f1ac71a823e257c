"""Forward-pass helpers for the smollm2-moe build: calibration inputs, per-token losses, suffix runs.

Measuring one decomposed layer does not need the whole model again: the residual stream entering
block ``L`` is cached once from the dense model, and each variant (k-means or random experts in
place of the dense MLP of block ``L``) reruns only blocks ``L..end`` and the head. All helpers work
on any Llama-shaped causal LM (``model.model.layers``, ``.norm``, ``.rotary_emb``, ``lm_head``),
which covers the dense SmolLM2 and the emitted Qwen2-MoE alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class _Stop(Exception):
    """Raised by a hook to end a forward pass early, once every wanted activation is in."""


def _inner(model: nn.Module) -> Any:
    return model.model


def _chunks(ids: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    yield from ids.split(batch_size)


@torch.no_grad()
def mlp_inputs(
    model: nn.Module, ids: torch.Tensor, layers: Sequence[int], batch_size: int = 8
) -> dict[int, torch.Tensor]:
    """Hidden states entering each listed block's MLP, ``{layer: [N, H]}`` over all tokens of ``ids``.

    The forward stops after the deepest listed MLP, so later blocks and the head never run.
    """
    blocks = _inner(model).layers
    last = max(layers)
    got: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def hook(layer: int) -> Any:
        def grab(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            got[layer].append(args[0].reshape(-1, args[0].shape[-1]).float())
            if layer == last:
                raise _Stop

        return grab

    handles = [blocks[layer].mlp.register_forward_pre_hook(hook(layer)) for layer in layers]
    try:
        for batch in _chunks(ids, batch_size):
            try:
                model(input_ids=batch, use_cache=False)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.cat(parts) for layer, parts in got.items()}


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token next-token negative log-likelihood ``[B, L-1]``."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none").view(
        ids.shape[0], -1
    )


@torch.no_grad()
def dense_pass(
    model: nn.Module, ids: torch.Tensor, layers: Sequence[int], batch_size: int = 8
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The model's per-token NLL on ``ids`` and the residual stream entering each listed block."""
    blocks = _inner(model).layers
    got: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def hook(layer: int) -> Any:
        def grab(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            got[layer].append(hidden.detach().clone())

        return grab

    handles = [blocks[layer].register_forward_pre_hook(hook(layer), with_kwargs=True) for layer in layers]
    nll: list[torch.Tensor] = []
    try:
        for batch in _chunks(ids, batch_size):
            nll.append(token_nll(model(input_ids=batch, use_cache=False).logits, batch))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(nll), {layer: torch.cat(parts) for layer, parts in got.items()}


@torch.no_grad()
def full_nll(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Per-token NLL ``[B, L-1]`` of a full forward pass."""
    return torch.cat(
        [token_nll(model(input_ids=b, use_cache=False).logits, b) for b in _chunks(ids, batch_size)]
    )


@torch.no_grad()
def suffix_nll(
    model: nn.Module, hidden: torch.Tensor, start: int, ids: torch.Tensor, batch_size: int = 8
) -> torch.Tensor:
    """Per-token NLL when blocks ``start..end`` run on the cached residual stream ``hidden``.

    Sequences are unpadded and of equal length, so the causal mask is the plain one.
    """
    from transformers.masking_utils import create_causal_mask

    inner = _inner(model)
    out: list[torch.Tensor] = []
    for h, batch in zip(hidden.split(batch_size), ids.split(batch_size), strict=True):
        pos = torch.arange(h.shape[1]).unsqueeze(0)
        mask = create_causal_mask(
            config=inner.config, inputs_embeds=h, attention_mask=None, cache=None, position_ids=pos
        )
        emb = inner.rotary_emb(h, position_ids=pos)
        for block in inner.layers[start:]:
            h = block(h, attention_mask=mask, position_embeddings=emb, position_ids=pos)
        out.append(token_nll(model.lm_head(inner.norm(h)), batch))  # type: ignore[operator]
    return torch.cat(out)


@contextmanager
def swapped_mlp(model: nn.Module, layer: int, mlp: nn.Module) -> Iterator[None]:
    """Temporarily replace block ``layer``'s MLP with ``mlp``."""
    block = _inner(model).layers[layer]
    original = block.mlp
    block.mlp = mlp
    try:
        yield
    finally:
        block.mlp = original


def paired_delta(nll: torch.Tensor, base: torch.Tensor) -> tuple[float, float]:
    """Mean loss increase over ``base`` and its standard error, paired by sequence."""
    per_seq = (nll - base).mean(dim=1).double()
    n = per_seq.numel()
    se = float(per_seq.std() / n**0.5) if n > 1 else float("nan")
    return float(per_seq.mean()), se
