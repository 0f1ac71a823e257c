"""Per-expert outputs recomputed from the experts' own weights.

Fused experts (``gate_up_proj[E,2I,H]``, ``down_proj[E,H,I]``) cannot be hooked per expert, so the
hidden units and output of expert e on token x are recomputed from the ``W[e]`` slices:
``h = act(x·W_gate[e]ᵀ) ⊙ (x·W_up[e]ᵀ)`` and ``y = h·W_down[e]ᵀ``. Experts held as separate
modules (Switch, NLLB-MoE, and shared experts) are called directly, with a hook on their down
projection's input to read ``h``.

``zero_frac`` is the share of hidden units with ``|h| <= tau`` (docs/methods.md §3: exact zeros for
ReLU-family activations, ``tau`` for SiLU/GELU; default 1e-3). ``out_norm`` is the L2 norm of the
unweighted expert output ``y``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.models.discovery import MoELayer

DEFAULT_TAU = 1e-3


@dataclass
class ExpertStats:
    """Per token and selected expert: output norm and zero fraction of hidden units ([N,k] each).

    ``shared_norm``/``shared_zero`` are [N,S] for the S shared experts (S may be 0); the store
    files them as pseudo-experts ``n_experts + s``.
    """

    out_norm: torch.Tensor
    zero_frac: torch.Tensor
    n_experts: int = 0
    shared_norm: torch.Tensor | None = None
    shared_zero: torch.Tensor | None = None


class ExpertStatsUnsupported(ValueError):
    """This family's experts do not expose weights we know how to slice."""


def check_expert_stats(layers: list[MoELayer]) -> None:
    """Raise :class:`ExpertStatsUnsupported` (before any run is created) for layers we cannot slice.

    Fused experts need ``gate_up_proj``/``down_proj`` and a plain ``act_fn`` (gpt-oss's clamped,
    interleaved SwiGLU has none); module experts need a Linear to read hidden units from.
    """
    for layer in layers:
        experts = layer.experts
        fused = (
            hasattr(experts, "gate_up_proj") and hasattr(experts, "down_proj") and hasattr(experts, "act_fn")
        )
        modules = expert_modules(experts)
        if not fused and modules is None:
            raise ExpertStatsUnsupported(
                f"--expert-stats is not available for {type(experts).__name__} ({layer.path}): its experts are "
                "neither fused gate_up_proj/down_proj with an act_fn nor separate modules. Capture without "
                "--expert-stats, or register a family whose experts can be sliced."
            )
        owned = len(modules) if modules is not None else int(experts.gate_up_proj.shape[0])  # type: ignore[index]
        if layer.n_experts > owned:
            raise ExpertStatsUnsupported(
                f"--expert-stats is not available for {type(layer.block).__name__} ({layer.path}): expert ids "
                f"{owned}..{layer.n_experts - 1} are parameter-free (identity) experts with no hidden units to "
                "measure. Capture without --expert-stats."
            )


def fused_hidden(experts: nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
    """Hidden units ``act(x·W_gate[e]ᵀ) ⊙ (x·W_up[e]ᵀ)`` of fused expert ``e`` on tokens ``x`` ([N,H] → [N,I]).

    Reads the ``W[e]`` slice of ``gate_up_proj`` (either orientation) and its bias, if any.
    """
    gate_up = experts.gate_up_proj[e]  # type: ignore[index]
    proj = x @ gate_up.transpose(0, 1) if gate_up.shape[-1] == x.shape[-1] else x @ gate_up
    bias = getattr(experts, "gate_up_proj_bias", None)
    if bias is not None:
        proj = proj + bias[e]
    gate, up = proj.chunk(2, dim=-1)
    act: Any = experts.act_fn
    hidden: torch.Tensor = act(gate) * up
    return hidden


def fused_output(experts: nn.Module, e: int, h: torch.Tensor) -> torch.Tensor:
    """Unweighted output ``h·W_down[e]ᵀ`` (plus bias) of fused expert ``e`` from its hidden units ``h``."""
    down = experts.down_proj[e]  # type: ignore[index]
    out = h @ down.transpose(0, 1) if down.shape[-1] == h.shape[-1] else h @ down
    bias = getattr(experts, "down_proj_bias", None)
    return out + bias[e] if bias is not None else out


def _module_hidden_and_output(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Call an expert module; read its hidden units at the input of its last Linear."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ExpertStatsUnsupported(
            f"{type(module).__name__} has no Linear layers to read hidden units from"
        )
    seen: list[torch.Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        out = module(x)
    finally:
        handle.remove()
    return seen[-1], out


def expert_modules(experts: nn.Module) -> list[nn.Module] | None:
    """The per-expert modules of an experts ModuleList/ModuleDict; None for fused experts."""
    if isinstance(experts, nn.ModuleList):
        return list(experts)
    if isinstance(experts, nn.ModuleDict):
        return list(experts.values())
    return None


@contextmanager
def onloaded(module: nn.Module) -> Iterator[None]:
    """``module``'s own weights in place for direct reads, also when a device_map offloads them.

    Outside its forward, an offloaded module (accelerate's hooks, transformers' ``device_map`` with
    ``"cpu"``/``"disk"`` offload) holds placeholders; reading its weight slices directly, as the
    fused-expert recomputation does, must bring them in first. A no-op for an undivided model.
    """
    if getattr(module, "_hf_hook", None) is None:
        yield
        return
    from accelerate.utils import align_module_device

    with align_module_device(module):
        yield


def expert_stats(
    layer: MoELayer, hidden: torch.Tensor, indices: torch.Tensor, tau: float = DEFAULT_TAU
) -> ExpertStats:
    """Stats for each token's selected experts ([N,k]) and for the shared experts ([N,S])."""
    x = hidden.reshape(-1, hidden.shape[-1])
    n, k = indices.shape
    out_norm = torch.zeros((n, k), device=x.device, dtype=torch.float32)
    zero_frac = torch.zeros((n, k), device=x.device, dtype=torch.float32)
    modules = expert_modules(layer.experts)
    if modules is None and not hasattr(layer.experts, "gate_up_proj"):
        raise ExpertStatsUnsupported(
            f"{layer.path}: {type(layer.experts).__name__} has neither fused gate_up_proj/down_proj nor expert "
            "modules; --expert-stats is not available for this family"
        )
    with onloaded(layer.experts):
        for e in torch.unique(indices).tolist():
            rows, slots = torch.nonzero(indices == e, as_tuple=True)
            xe = x[rows]
            if modules is not None:
                h, y = _module_hidden_and_output(modules[e], xe)
            else:
                h = fused_hidden(layer.experts, e, xe)
                y = fused_output(layer.experts, e, h)
            out_norm[rows, slots] = y.float().norm(dim=-1)
            zero_frac[rows, slots] = (h.abs() <= tau).float().mean(dim=-1)
    stats = ExpertStats(out_norm=out_norm, zero_frac=zero_frac, n_experts=layer.n_experts)
    if layer.shared:
        pairs = [_module_hidden_and_output(m, x) for m in layer.shared]
        stats.shared_norm = torch.stack([y.float().norm(dim=-1) for _, y in pairs], dim=1)
        stats.shared_zero = torch.stack([(h.abs() <= tau).float().mean(dim=-1) for h, _ in pairs], dim=1)
    return stats
