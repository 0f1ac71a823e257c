"""What an MoE block applied, measured on the module itself by ablation (no adapter recipe).

Each expert's parameters are zeroed in turn (restored in ``finally``); the change of the output is
its weighted contribution ``c_e = w_e · f_e(x)``, exactly zero for tokens that did not use it. The
weights then come from one extra pass with unit gate weights (``Σ_e f_e``), from separate expert
modules (``f_e`` directly), or from the experts' input where the block weights the input (Llama-4).
The load-time routing self-check (:mod:`workbench.models.routing_check`) compares the result with
what the adapter records; docs/capture.md explains why this is independent of the adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.models.discovery import MoELayer
from workbench.models.expert_math import expert_modules


class AblationError(RuntimeError):
    """The block's applied weights cannot be measured (no way to isolate its experts)."""


def first_tensor(output: Any) -> torch.Tensor:
    while not isinstance(output, torch.Tensor):
        output = output[0]
    return output


def hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    hidden: torch.Tensor = args[0] if args else kwargs["hidden_states"]
    return hidden


# -- ablation: zero one expert's parameters, restore them in finally ---------------------------------


def n_parameterised(layer: MoELayer) -> int:
    """How many experts own parameters (LongCat's identity experts own none), across all ranks when
    expert parallelism splits them (the global count of the expert-sharded parameters)."""
    modules = expert_modules(layer.experts)
    if modules is not None:
        return len(modules)
    for p in layer.experts.parameters():
        if _expert_shard(p) is not None and p.dim() == 3:
            return int(p.shape[0])  # a DTensor's shape is the global one
    count = getattr(layer.experts, "num_experts", None)
    if isinstance(count, int) and count > 0:
        return count
    for p in layer.experts.parameters():
        if p.dim() == 3:
            return int(p.shape[0])
    return layer.n_experts


def _expert_shard(p: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``(local rows, first global expert)`` of a parameter that expert parallelism shards along its
    expert dimension (a DTensor with ``Shard(0)`` on a 1-D mesh); None for any other parameter."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(p, DTensor) or p.device_mesh.ndim != 1 or p.placements != (Shard(0),):
        return None
    local = p.to_local()
    return local, local.shape[0] * p.device_mesh.get_local_rank()


def _slices(layer: MoELayer, e: int, n: int) -> list[torch.Tensor]:
    """Views of expert ``e``'s parameters: a module's own, or slice ``e`` of expert-major fused ones.

    Under expert parallelism only the rank holding expert ``e`` returns views (of its local shard);
    the others return none, and zero nothing while they run the block with it.
    """
    modules = expert_modules(layer.experts)
    if modules is not None:
        return [p.data for p in modules[e].parameters()]
    views = []
    sharded = False
    for p in layer.experts.parameters():
        shard = _expert_shard(p)
        if shard is not None:
            sharded = True
            local, first = shard
            if first <= e < first + local.shape[0]:
                views.append(local.data[e - first])
        elif p.dim() >= 1 and p.shape[0] == n:  # [E, ...]: fused per-expert weights
            views.append(p.data[e])
        elif p.dim() >= 2 and p.shape[0] % n == 0:  # [E·I, H]: expert-major rows (DBRX)
            views.append(p.data.view(n, p.shape[0] // n, *p.shape[1:])[e])
    if not views and not sharded:
        raise AblationError(f"{type(layer.experts).__name__}: no expert-major parameters to ablate")
    return views


@contextmanager
def _zeroed(views: list[torch.Tensor]) -> Iterator[None]:
    """Zero ``views`` in place; their values come back in finally (inference tensors are edited in
    inference mode, which is the only place torch allows it)."""
    saved = [v.clone() for v in views]
    try:
        for v in views:
            with torch.inference_mode(v.is_inference()):
                v.zero_()
        yield
    finally:
        for v, s in zip(views, saved, strict=True):
            with torch.inference_mode(v.is_inference()):
                v.copy_(s)


# -- the experts call: find the weights it received; optionally hand it unit weights -------------------


class ExpertsCall:
    """A pre-hook on the experts module: records its input and, when ``unit``, replaces the gate weights
    it receives by 1 where they are non-zero (so the block's output change under ablation is ``f_e``)."""

    def __init__(self, experts: nn.Module, top_k: int) -> None:
        self.top_k = top_k
        self.unit = False
        self.found = False
        self.input: torch.Tensor | None = None
        self.handle = experts.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _is_weights(self, value: Any, rows: int) -> bool:
        return (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and value.dim() >= 1
            and value.shape[-1] == self.top_k
            and value.numel() == rows * self.top_k
        )

    def _hook(self, _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden = hidden_of(args, kwargs)
        self.input = hidden.detach()
        rows = hidden.numel() // hidden.shape[-1]
        positions = [i for i, v in enumerate(args) if i > 0 and self._is_weights(v, rows)]
        names = [k for k, v in kwargs.items() if k != "hidden_states" and self._is_weights(v, rows)]
        self.found = len(positions) + len(names) == 1
        if not (self.unit and self.found):
            return None
        if positions:
            new_args = list(args)
            new_args[positions[0]] = (args[positions[0]] != 0).to(args[positions[0]].dtype)
            return tuple(new_args), kwargs
        new_kwargs = dict(kwargs)
        new_kwargs[names[0]] = (kwargs[names[0]] != 0).to(kwargs[names[0]].dtype)
        return args, new_kwargs

    def close(self) -> None:
        self.handle.remove()


# -- decoding the applied routing -------------------------------------------------------------------


def _project(c: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Per row, the scalar w with c ≈ w·f (0 where f is zero)."""
    norm = (f * f).sum(-1)
    return torch.where(norm > 0, (c * f).sum(-1) / norm.clamp_min(1e-30), torch.zeros_like(norm))


@dataclass
class Applied:
    dense: torch.Tensor  # [N, E_param (+1 identity column)]
    decoded_by: str


def applied_weights(
    layer: MoELayer,
    block: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    call: ExpertsCall,
    n_param: int,
    identity: bool,
) -> Applied:
    """The dense weights the module applied to each token's experts, measured by ablation."""
    rows = x.shape[0]
    call.unit = False
    y0, full0 = block()
    contrib = torch.zeros(n_param, rows, x.shape[-1], dtype=torch.float64, device=x.device)
    by_call = call.found
    if by_call:
        call.unit = True
        unit_out = block()[0]
        call.unit = False
    for e in range(n_param):
        with _zeroed(_slices(layer, e, n_param)):
            contrib[e] = y0 - block()[0]
    modules = expert_modules(layer.experts)
    if by_call:
        decoded_by = "experts-call"
        dense = _from_unit_output(contrib, unit_out)
    elif modules is not None:
        decoded_by = "expert-modules"
        dense = torch.zeros(rows, n_param, dtype=torch.float64, device=x.device)
        for e, module in enumerate(modules):
            f = first_tensor(module(x.to(param_dtype(module, x)))).double().reshape(rows, -1)
            dense[:, e] = _project(contrib[e], f)
    elif call.input is not None and call.input.numel() == n_param * x.numel():
        decoded_by = "experts-input"  # weights applied to the experts' input (Llama-4)
        weighted = call.input.double().reshape(n_param, rows, -1)
        dense = _project(weighted, x.unsqueeze(0).expand_as(weighted)).T
        return Applied(dense * (contrib.norm(dim=-1).T > 0), decoded_by)
    else:
        raise AblationError(
            f"{type(layer.block).__name__} ({layer.path}): cannot tell the weights the experts received "
            "(no single [rows, k] float argument, no expert modules, no weighted input)"
        )
    if identity:  # parameter-free experts: the rest of the block's output, along the input
        rest = full0 - (y0 if full0 is not y0 else contrib.sum(0))
        dense = torch.cat([dense, _project(rest, x).unsqueeze(1)], dim=1)
    return Applied(dense, decoded_by)


def _from_unit_output(contrib: torch.Tensor, unit_out: torch.Tensor) -> torch.Tensor:
    """Weights from the contributions ``c_e = w_e·f_e`` and the unit-weight output ``Σ_e f_e``: per
    token, solve ``Σ_e u_e·c_e = Σ_e f_e`` over the experts that contributed; then ``w_e = 1/u_e``."""
    n_param, rows, _ = contrib.shape
    norms = contrib.norm(dim=-1).cpu()
    dense = torch.zeros(rows, n_param, dtype=torch.float64)
    cols, target = contrib.cpu(), unit_out.cpu()
    for t in range(rows):
        used = (norms[:, t] > 1e-9 * norms[:, t].max()).nonzero().flatten()
        if used.numel() == 0 or float(norms[:, t].max()) == 0.0:
            continue
        u = torch.linalg.lstsq(cols[used, t].T, target[t, :, None], driver="gelsd").solution.flatten()
        dense[t, used] = 1.0 / u
    return dense.to(contrib.device)


def param_dtype(module: nn.Module, x: torch.Tensor) -> torch.dtype:
    p = next(module.parameters(), None)
    return p.dtype if p is not None else x.dtype
