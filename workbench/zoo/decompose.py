"""Decompose a dense SwiGLU feed-forward layer into experts (docs/methods.md §10, MoEfication / FactorLLM).

A Llama-style MLP ``down(silu(gate(x)) * up(x))`` is a sum over its intermediate units, so any
partition of the units into E groups gives E experts whose outputs *sum exactly* to the dense
output. We partition by co-activation: each unit is described by its activation magnitudes
``|silu(g_i·x) · (u_i·x)|`` over calibration tokens (normalised to unit length), the units are
clustered with k-means, and a balanced assignment (every group ``I / E`` units, solved as an
assignment problem against the centroids) makes the groups equal in size, as fused experts need.
A linear router ``hidden → E`` is then trained (Adam, full batch) to predict each group's share of
the activation mass: the L2 norm of the group's output, normalised over groups, as a soft target
of a softmax (cross-entropy). Routing keeps the top-k groups.

The result is emitted as a Qwen2-MoE sparse block (see :func:`qwen2_moe_block`). Qwen2-MoE applies
``softmax`` → top-k → renormalise (``norm_topk_prob``) weights, which sum to 1; the dense layer wants
weight 1 on each kept expert. We therefore store every expert's ``down_proj`` multiplied by ``k``
and divide the router's logits by a temperature ``T`` (store ``W / T``): the top-k *choice* is
unchanged (ranking is scale-invariant) while each applied weight is ``1/k · (1 + O(spread / T))``,
so the effective weight ``k · w`` is 1 up to that error. With ``top_k == E`` the block reproduces
the dense MLP up to ``O(spread / T)``; ``temperature=inf`` (a zero router) makes it exact.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Split = Literal["kmeans", "random"]


@dataclass
class Decomposition:
    """One dense MLP split into ``n_experts`` equal unit groups, plus a trained router."""

    groups: torch.Tensor  # [E, I/E] unit indices of each expert, sorted
    router: torch.Tensor  # [E, H] router weight as trained (logits = x @ router.T)
    gate_up_proj: torch.Tensor  # [E, 2·I/E, H]: gate rows then up rows, as fused experts store them
    down_proj: torch.Tensor  # [E, H, I/E]: unscaled, so the experts sum to the dense MLP
    split: Split
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def n_experts(self) -> int:
        return int(self.groups.shape[0])

    @property
    def expert_size(self) -> int:
        return int(self.groups.shape[1])


def unit_activations(gate: torch.Tensor, up: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)``: the MLP's intermediate activations, ``[N, I]``."""
    return F.silu(x @ gate.T) * (x @ up.T)


def balanced_kmeans(features: np.ndarray, n_groups: int, seed: int = 0, rounds: int = 8) -> np.ndarray:
    """Partition the rows of ``features`` into ``n_groups`` groups of equal size.

    k-means (scikit-learn, seeded) gives the centroids; each round then assigns rows to centroids
    under a capacity of ``n / n_groups`` by solving the assignment problem (each centroid repeated
    ``capacity`` times) and recomputes the centroids, until the assignment stops changing.
    Returns ``[n_groups, n / n_groups]`` row indices, each group sorted.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.metrics.pairwise import euclidean_distances

    n = features.shape[0]
    if n % n_groups:
        raise ValueError(f"{n} units do not split into {n_groups} equal groups")
    size = n // n_groups
    centers = KMeans(n_clusters=n_groups, n_init=1, random_state=seed).fit(features).cluster_centers_
    labels = np.full(n, -1)
    for _ in range(rounds):
        cost = euclidean_distances(features, centers, squared=True)
        _, cols = linear_sum_assignment(np.repeat(cost, size, axis=1))
        new = cols // size
        if np.array_equal(new, labels):
            break
        labels = new
        centers = np.stack([features[labels == g].mean(0) for g in range(n_groups)])
    return np.stack([np.sort(np.flatnonzero(labels == g)) for g in range(n_groups)])


def split_units(acts: torch.Tensor, n_experts: int, split: Split = "kmeans", seed: int = 0) -> torch.Tensor:
    """Unit groups ``[E, I/E]`` from activations ``[N, I]``: co-activation k-means or a random split."""
    n_units = acts.shape[1]
    if n_units % n_experts:
        raise ValueError(f"intermediate size {n_units} is not divisible by n_experts={n_experts}")
    if split == "random":
        perm = torch.randperm(n_units, generator=torch.Generator().manual_seed(seed))
        return perm.view(n_experts, -1).sort(dim=1).values
    if split != "kmeans":
        raise ValueError(f"split must be 'kmeans' or 'random', got {split!r}")
    feats = acts.abs().T.double()
    feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.from_numpy(balanced_kmeans(feats.float().numpy(), n_experts, seed)).long()


def group_mass(acts: torch.Tensor, down: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``[N, E]``: the L2 norm of each group's contribution to the MLP output, per token."""
    return torch.stack([(acts[:, g] @ down[:, g].T).norm(dim=1) for g in groups], dim=1)


def train_router(
    x: torch.Tensor, mass: torch.Tensor, steps: int = 300, lr: float = 1e-2, seed: int = 0
) -> torch.Tensor:
    """A bias-free linear router ``[E, H]`` whose softmax predicts each group's share of ``mass``."""
    target = mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(mass.shape[1], x.shape[1], generator=gen) * 1e-3).requires_grad_(True)
    opt = torch.optim.Adam([weight], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = -(target * F.log_softmax(x @ weight.T, dim=1)).sum(dim=1).mean()
            loss.backward()
            opt.step()
    return weight.detach()


def mass_recall(logits: torch.Tensor, mass: torch.Tensor, top_k: int) -> float:
    """Share of the oracle top-k mass that the router's top-k choice captures (1 = perfect)."""
    chosen = mass.gather(1, logits.topk(top_k, dim=1).indices).sum()
    best = mass.topk(top_k, dim=1).values.sum()
    return float(chosen / best.clamp_min(1e-12))


def decompose(
    gate: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
    x: torch.Tensor,
    n_experts: int = 8,
    top_k: int = 4,
    split: Split = "kmeans",
    seed: int = 0,
    router_steps: int = 300,
    holdout: float = 0.1,
) -> Decomposition:
    """Split the MLP ``(gate [I,H], up [I,H], down [H,I])`` into experts using calibration inputs ``x``.

    ``x`` ``[N, H]`` are hidden states entering the MLP (after the post-attention norm). The last
    ``holdout`` share of ``x`` is kept out of router training to report its held-out mass recall.
    """
    gate, up, down, x = (t.detach().float() for t in (gate, up, down, x))
    with torch.no_grad():
        acts = unit_activations(gate, up, x)
        groups = split_units(acts, n_experts, split, seed)
        mass = group_mass(acts, down, groups)
    n_fit = max(1, round(len(x) * (1 - holdout)))
    router = train_router(x[:n_fit], mass[:n_fit], steps=router_steps, seed=seed)
    with torch.no_grad():
        logits = x @ router.T
        val = slice(n_fit, None) if n_fit < len(x) else slice(None)
        share = mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-12)
        stats = {
            "router_recall_train": mass_recall(logits[:n_fit], mass[:n_fit], top_k),
            "router_recall_heldout": mass_recall(logits[val], mass[val], top_k),
            "oracle_topk_mass_share": float(share.topk(top_k, dim=1).values.sum(dim=1).mean()),
            "logit_std": float(logits.std()),
        }
    gate_up = torch.cat([gate[groups], up[groups]], dim=1)  # [E, 2·s, H]
    down_e = torch.stack([down[:, g] for g in groups])  # [E, H, s]
    return Decomposition(groups, router, gate_up.contiguous(), down_e.contiguous(), split, stats)


def default_temperature(dec: Decomposition, spread: float = 0.01) -> float:
    """A router temperature that maps the logits' standard deviation to ``spread``."""
    std = dec.stats.get("logit_std", 0.0)
    return std / spread if std > 0 else math.inf


def block_state(dec: Decomposition, top_k: int, temperature: float) -> dict[str, torch.Tensor]:
    """The Qwen2-MoE sparse block's routed weights (``gate.weight``, ``experts.*``) for ``dec``."""
    if not 1 <= top_k <= dec.n_experts:
        raise ValueError(f"top_k must be in 1..{dec.n_experts}, got {top_k}")
    router = torch.zeros_like(dec.router) if math.isinf(temperature) else dec.router / temperature
    return {
        "gate.weight": router,
        "experts.gate_up_proj": dec.gate_up_proj.clone(),
        "experts.down_proj": dec.down_proj * float(top_k),
    }


def qwen2_moe_config_kwargs(dec: Decomposition, top_k: int) -> dict[str, Any]:
    """The Qwen2-MoE config fields that describe blocks made from ``dec``."""
    return {
        "num_experts": dec.n_experts,
        "num_experts_per_tok": top_k,
        "moe_intermediate_size": dec.expert_size,
        "shared_expert_intermediate_size": 0,  # no shared expert: a zero-width one contributes 0
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
    }


def qwen2_moe_block(
    dec: Decomposition, top_k: int, temperature: float, hidden_act: str = "silu"
) -> nn.Module:
    """A ``Qwen2MoeSparseMoeBlock`` computing the decomposed MLP with top-``k`` routing."""
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    hidden = int(dec.router.shape[1])
    fields: dict[str, Any] = dict(
        hidden_size=hidden,
        num_attention_heads=1,
        num_key_value_heads=1,
        hidden_act=hidden_act,
        experts_implementation="eager",
        **qwen2_moe_config_kwargs(dec, top_k),
    )
    config = Qwen2MoeConfig(**fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the zero-width shared expert: "initializing zero-element tensors"
        block = Qwen2MoeSparseMoeBlock(config)
    with torch.no_grad():
        block.shared_expert_gate.weight.zero_()
        for name, value in block_state(dec, top_k, temperature).items():
            block.get_parameter(name).copy_(value)
    return block.eval()
