"""Expert weight similarity ("A Closer Look into MoE", docs/methods.md §7): cosine of flattened expert weights.

Why here, with the interventions: it reads a loaded model's expert parameters (torch tensors),
not the run store, and ``analysis/`` reads records only.

:func:`expert_weight_similarity` takes the cosine similarity of the flattened weights of every
pair of experts of one layer, from a fused experts module (``gate_up_proj [E, 2I, H]`` and
``down_proj [E, H, I]``, as in recent transformers) or a sequence of per-expert modules (a
``ModuleList``, a ``ModuleDict`` as in Switch Transformers, or a plain list: all parameters of
each expert, in ``named_parameters`` order, concatenated). The Gram matrix is accumulated tensor
by tensor in float64 on the weights' device, so no ``E × P`` copy is materialised.
:func:`merge_candidates` lists the most similar distinct pairs whose cosine reaches
:data:`MERGE_MIN_COSINE` (none when every pair is near-orthogonal). Output similarity, and the
catalogued ``expert-similarity`` analysis that joins both, live in
:mod:`workbench.interventions.expert_similarity`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

__all__ = ["MERGE_MIN_COSINE", "expert_weight_similarity", "merge_candidates"]


def _expert_tensors(experts: Any) -> tuple[int, list[Any]]:
    """(E, list of tensors each shaped [E, ...]) or per-expert parameter lists, normalised to [E, P_j]."""
    import torch

    if hasattr(experts, "gate_up_proj") and hasattr(experts, "down_proj"):
        tensors = []
        for name in ("gate_up_proj", "down_proj"):
            value = getattr(experts, name)
            weight = value.weight if isinstance(value, torch.nn.Module) else value
            if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
                raise TypeError(f"fused experts module: {name} must be a 3-D tensor [E, ., .]")
            tensors.append(weight.detach().reshape(weight.shape[0], -1))
        n = int(tensors[0].shape[0])
        if int(tensors[1].shape[0]) != n:
            raise ValueError("gate_up_proj and down_proj disagree on the number of experts")
        return n, tensors
    if isinstance(experts, torch.nn.ModuleDict):  # Switch Transformers: experts["expert_0"], ...
        modules: Sequence[Any] = list(experts.values())
    elif isinstance(experts, torch.nn.Module) and not isinstance(experts, torch.nn.ModuleList):
        raise TypeError(
            "expected a fused experts module (gate_up_proj, down_proj) or a sequence of expert modules, "
            f"got {type(experts).__name__}"
        )
    else:
        modules = list(experts)
    if not modules:
        raise ValueError("no experts given")
    per_expert = [[p.detach().reshape(-1) for _, p in m.named_parameters()] for m in modules]
    shapes = {tuple(int(p.numel()) for p in ps) for ps in per_expert}
    if len(shapes) != 1:
        raise ValueError("experts have different parameter shapes; cannot compare flattened weights")
    n_params = len(per_expert[0])
    return len(modules), [torch.stack([ps[j] for ps in per_expert]) for j in range(n_params)]


def expert_weight_similarity(model_layer_experts: Any) -> pl.DataFrame:
    """Cosine similarity of flattened expert weights: tidy ``(a, b, cosine)``, all E×E pairs.

    Accepts a fused experts module (``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``) or a
    sequence / ``ModuleList`` of per-expert modules. Sorted by a, b; the diagonal is 1 (NaN for
    an all-zero expert).
    """
    import torch

    n, tensors = _expert_tensors(model_layer_experts)
    gram = torch.zeros((n, n), dtype=torch.float64)
    with torch.no_grad():
        for t in tensors:
            x = t.to(torch.float64)
            gram += (x @ x.T).cpu()
    g = gram.numpy()
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = g / np.outer(norms, norms)
    cos = np.clip(cos, -1.0, 1.0)
    a, b = np.meshgrid(np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32), indexing="ij")
    return pl.DataFrame({"a": a.ravel(), "b": b.ravel(), "cosine": cos.ravel().astype(np.float64)})


#: Weight cosine a pair must reach to be proposed for merging. Independent random weight
#: vectors have cosine ≈ 0 in high dimension, so the most similar pair of unrelated experts is
#: still near-orthogonal; 0.5 (an angle of 60°) is the least that says "alike".
MERGE_MIN_COSINE = 0.5


def merge_candidates(sim: pl.DataFrame, top: int = 5, min_cosine: float = MERGE_MIN_COSINE) -> pl.DataFrame:
    """Up to ``top`` distinct pairs (``a < b``) with cosine ≥ ``min_cosine``, most similar first.

    Empty when no pair clears the threshold: near-orthogonal experts are not merge candidates.
    """
    return (
        sim.filter(
            (pl.col("a") < pl.col("b")) & pl.col("cosine").is_not_nan() & (pl.col("cosine") >= min_cosine)
        )
        .sort(["cosine", "a", "b"], descending=[True, False, False])
        .head(top)
    )
