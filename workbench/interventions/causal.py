"""Causal resonance (docs/methods.md §5) and first-order attribution (§9): which experts move a behaviour.

Every function takes a :class:`~workbench.interventions.metrics.Metric` (a behaviour's margin, a
task's gold log-prob) or a :class:`~workbench.behaviour.registry.Behaviour` (its margin).

* ``effect[l, e]``: the mean change, over target prompts, of the behaviour margin
  ``log p(yes₀) − log p(no₀)`` at the answer position (see
  :class:`~workbench.behaviour.registry.Behaviour`) when expert (l, e) alone is ablated
  (``reroute`` by default, docs/methods.md §5). 95% CI: prompt bootstrap of the per-prompt changes; p:
  sign-flip permutation of those changes (each prompt is its own control, so the test is
  paired); q: Benjamini–Hochberg over the map.
* ``attribution[l, e]``: the first-order estimate of zero-ablating (l, e), ``−Σ g·∂m/∂g`` over
  the tokens that selected it — the gate weight times the gradient of the margin with respect
  to that gate weight (attribution patching), averaged over prompts. One forward and one
  backward pass per batch instead of one forward per expert; validate it against ``effect`` by
  rank correlation (:func:`rank_agreement`). It needs the gate weights to reach the experts
  module as an argument (``selection == "experts_args"``, the shape of nearly every family);
  other families raise a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy.stats import spearmanr

from workbench.analysis.rank import rank_correlation
from workbench.analysis.stats import benjamini_hochberg, cluster_bootstrap
from workbench.behaviour.registry import Behaviour
from workbench.interventions.apply import intervene
from workbench.interventions.metrics import Metric, as_metric, last_logprobs, metric_values, prompt_batches
from workbench.interventions.specs import Ablate
from workbench.models.decode import experts_selection
from workbench.models.loading import LoadedModel
from workbench.probefile import Prompt

__all__ = [
    "CAUSAL_COLUMNS", "ablation_diffs", "attribution", "behaviour_margins", "causal_resonance", "greedy_ablation", "rank_agreement",
]  # fmt: skip

CAUSAL_COLUMNS: tuple[str, ...] = ("layer", "expert", "effect", "ci_low", "ci_high", "p", "q", "n_target")


def behaviour_margins(
    loaded: LoadedModel, prompts: Sequence[Prompt], target: Behaviour | Metric, *, batch_size: int = 32
) -> np.ndarray:
    """Per prompt: the metric (a behaviour's margin: positive = the behaviour's answer is preferred)."""
    return metric_values(loaded, prompts, as_metric(loaded, target), batch_size=batch_size)


def _signflip_p(diffs: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided sign-flip permutation p of mean(diffs) = 0, with the +1 correction."""
    if diffs.size == 0 or not np.any(diffs):
        return 1.0
    observed = abs(diffs.mean())
    signs = rng.choice([-1.0, 1.0], size=(n_perm, diffs.size))
    null = np.abs((signs * diffs).mean(axis=1))
    return float((1 + (null >= observed - 1e-12 * max(1.0, observed)).sum()) / (n_perm + 1))


def ablation_diffs(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    target: Behaviour | Metric,
    *,
    layers: Sequence[int] | None = None,
    mode: str = "reroute",
    batch_size: int = 32,
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Per-prompt metric changes ``[n_prompts, n_cells]`` when each (layer, expert) alone is ablated.

    The per-prompt matrix (not just its mean) is what lets callers bootstrap anything built on
    the effects — an importance ranking's rank correlation, for instance — by resampling prompts.
    """
    if mode not in ("zero", "reroute"):
        raise ValueError(f"mode must be 'zero' or 'reroute', not {mode!r}")
    wanted = None if layers is None else {int(x) for x in layers}
    metric = as_metric(loaded, target)
    base = metric_values(loaded, prompts, metric, batch_size=batch_size)
    cells = [
        (m.layer, e) for m in loaded.layers if wanted is None or m.layer in wanted for e in range(m.n_experts)
    ]
    diffs = np.empty((len(prompts), len(cells)))
    for j, (layer, expert) in enumerate(cells):
        with intervene(loaded, Ablate({layer: [expert]}, mode=mode)):  # type: ignore[arg-type]
            diffs[:, j] = metric_values(loaded, prompts, metric, batch_size=batch_size) - base
    return cells, diffs


def causal_resonance(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    behaviour: Behaviour | Metric,
    *,
    layers: Sequence[int] | None = None,
    mode: str = "reroute",
    batch_size: int = 32,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
) -> pl.DataFrame:
    """The L×E causal map: per (layer, expert), the margin change when it alone is ablated (see module doc)."""
    if not prompts:
        raise ValueError("causal resonance needs target prompts (the ones showing the behaviour)")
    cells, diffs = ablation_diffs(loaded, prompts, behaviour, layers=layers, mode=mode, batch_size=batch_size)
    rng = np.random.default_rng(seed)
    rows = []
    for j, (layer, expert) in enumerate(cells):
        est, lo, hi = cluster_bootstrap(diffs[:, j], np.ones(len(prompts)), n_boot=n_boot, seed=rng)
        rows.append({
            "layer": layer, "expert": expert, "effect": float(est[0]), "ci_low": float(lo[0]),
            "ci_high": float(hi[0]), "p": _signflip_p(diffs[:, j], n_perm, rng), "n_target": len(prompts),
        })  # fmt: skip
    out = pl.DataFrame(rows)
    return out.with_columns(pl.Series("q", benjamini_hochberg(out["p"].to_numpy()))).select(CAUSAL_COLUMNS)


def attribution(
    loaded: LoadedModel, prompts: Sequence[Prompt], behaviour: Behaviour | Metric, *, batch_size: int = 16
) -> pl.DataFrame:
    """Per (layer, expert): mean over prompts of ``−Σ_tokens g·∂margin/∂g`` (first-order zero-ablation effect)."""
    for moe in loaded.layers:
        if moe.family.selection != "experts_args":
            raise ValueError(
                f"attribution needs the gate weights as an argument of the experts module; family "
                f"{moe.family.name!r} (layer {moe.layer}) applies them elsewhere — use causal_resonance"
            )
    metric = as_metric(loaded, behaviour)
    totals = {moe.layer: np.zeros(moe.n_experts) for moe in loaded.layers}
    leaves: list[tuple[Any, torch.Tensor, torch.Tensor]] = []

    def tap(moe: Any) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            indices, weights = experts_selection(moe.family, args, kwargs)
            leaf = weights.detach().requires_grad_(True)
            leaves.append((moe, indices.detach(), leaf))
            w_pos = moe.family.experts_arg_positions[1]
            w_name = moe.family.experts_kwarg_names[1]
            if w_name in kwargs:
                return args, {**kwargs, w_name: leaf}
            return (*args[:w_pos], leaf, *args[w_pos + 1 :]), kwargs

        return hook

    handles = [moe.experts.register_forward_pre_hook(tap(moe), with_kwargs=True) for moe in loaded.layers]
    try:
        for chunk, enc in prompt_batches(loaded, prompts, metric, batch_size):
            leaves.clear()
            with torch.inference_mode(False), torch.enable_grad():  # also when called under inference_mode
                margin = metric.score(last_logprobs(loaded, enc), chunk).sum()
                grads = torch.autograd.grad(margin, [leaf for _, _, leaf in leaves], allow_unused=True)
            for (moe, indices, leaf), grad in zip(leaves, grads, strict=True):
                if grad is None:
                    continue
                contrib = -(leaf.detach() * grad).float().reshape(-1)
                flat = indices.reshape(-1).long()
                sums = torch.zeros(moe.n_experts, dtype=torch.float32, device=contrib.device)
                sums.index_add_(0, flat.clamp(0, moe.n_experts - 1), contrib * (flat < moe.n_experts))
                totals[moe.layer] += sums.cpu().numpy()
    finally:
        for handle in handles:
            handle.remove()
    rows = [
        {"layer": layer, "expert": e, "attribution": float(v / len(prompts))}
        for layer, values in totals.items()
        for e, v in enumerate(values)
    ]
    return pl.DataFrame(rows)


def rank_agreement(
    frame: pl.DataFrame,
    reference: str = "effect",
    scores: Sequence[str] = ("rd", "ftri", "attribution"),
    *,
    n_perm: int = 999,
    seed: int = 0,
) -> pl.DataFrame:
    """Spearman ρ between each score column and ``reference`` over the (layer, expert) rows, with n.

    Signs are compared as they are (a score that points the other way gets ρ < 0), since an
    ablation that *lowers* the margin means the expert supports the behaviour. Each ρ comes with
    a Fisher z 95% CI (``ci_low``, ``ci_high``) and a permutation p with the +1 correction
    (``p``, floor ``p_floor``), from :func:`workbench.analysis.rank.rank_correlation`.
    """
    rows = []
    for score in scores:
        if score not in frame.columns or reference not in frame.columns:
            continue
        sub = frame.select(score, reference).drop_nulls().drop_nans()
        stats = rank_correlation(sub[score].to_numpy(), sub[reference].to_numpy(), n_perm=n_perm, seed=seed)
        rho = float(spearmanr(sub[score], sub[reference]).statistic) if sub.height >= 3 else float("nan")
        rows.append({
            "score": score, "reference": reference, "spearman": rho, "ci_low": stats["ci_low"],
            "ci_high": stats["ci_high"], "p": stats["p"], "p_floor": stats["p_floor"], "n": sub.height,
        })  # fmt: skip
    return pl.DataFrame(rows, schema=RANK_AGREEMENT_SCHEMA)


#: columns of :func:`rank_agreement`
RANK_AGREEMENT_SCHEMA: dict[str, type[pl.DataType]] = {
    "score": pl.Utf8, "reference": pl.Utf8, "spearman": pl.Float64, "ci_low": pl.Float64,
    "ci_high": pl.Float64, "p": pl.Float64, "p_floor": pl.Float64, "n": pl.Int64,
}  # fmt: skip


def greedy_ablation(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    behaviour: Behaviour | Metric,
    n: int,
    *,
    mode: str = "reroute",
    batch_size: int = 32,
) -> pl.DataFrame:
    """The ``n`` experts whose *joint* ablation lowers the behaviour margin most, chosen greedily.

    Single-expert effects miss redundancy (two experts that back each other up each look
    harmless alone), so this adds, one at a time, the expert whose ablation together with the
    ones already chosen lowers the mean margin on ``prompts`` most (docs/methods.md §9's greedy circuit
    search, driven by the margin). Rows: ``rank`` (1 = chosen first), layer, expert, and the mean
    margin after ablating the first ``rank`` experts. Costs n × (number of experts) forward passes.
    """
    if mode not in ("zero", "reroute"):
        raise ValueError(f"mode must be 'zero' or 'reroute', not {mode!r}")
    metric = as_metric(loaded, behaviour)
    candidates = [(moe.layer, e) for moe in loaded.layers for e in range(moe.n_experts)]
    top_k = {moe.layer: moe.top_k for moe in loaded.layers}
    n_experts = {moe.layer: moe.n_experts for moe in loaded.layers}
    chosen: list[tuple[int, int]] = []
    rows = []
    for rank in range(1, n + 1):
        best: tuple[float, tuple[int, int]] | None = None
        for cand in candidates:
            if cand in chosen:
                continue
            trial = [*chosen, cand]
            per_layer: dict[int, list[int]] = {}
            for layer, expert in trial:
                per_layer.setdefault(layer, []).append(expert)
            if mode == "reroute" and any(n_experts[x] - len(v) < top_k[x] for x, v in per_layer.items()):
                continue  # rerouting needs k experts left in the layer
            with intervene(loaded, Ablate(per_layer, mode=mode)):  # type: ignore[arg-type]
                margin = float(metric_values(loaded, prompts, metric, batch_size=batch_size).mean())
            if best is None or margin < best[0]:
                best = (margin, cand)
        if best is None:
            break
        chosen.append(best[1])
        rows.append({"rank": rank, "layer": best[1][0], "expert": best[1][1], "margin": best[0]})
    return pl.DataFrame(rows)
