"""Circuits at expert granularity (docs/methods.md §9, after "Circuit Component Reuse").

* **Importance** of (l, e) for a label: the change of the label's metric (default: the gold
  answer's log-prob) when (l, e) alone is zero-ablated (``effect``, with a prompt-bootstrap CI),
  and the first-order ``attribution`` estimate; their Spearman ρ says whether the cheap estimate
  can stand in for the ablations.
* **Circuit(t)**: experts ordered by importance (most harmful ablation first); the *supporting*
  experts are those whose ablation lowers the metric. The circuit is the shortest prefix whose
  joint ablation removes ≥ ``share`` (80%) of the metric drop caused by ablating all supporting
  experts together.
* **Comparison of two labels**: IoU and overlap coefficient of the circuits; Spearman ρ of the
  importance vectors with a prompt-bootstrap CI (both labels' prompts resampled); and
  cross-ablation specificity: the effect of ablating circuit(a) on a's prompts vs on b's (and
  the other way round), each with a CI. The IoU itself comes without a CI: one would need a
  circuit extraction per bootstrap replicate.
* **Selection and evaluation**: :func:`compare_circuits` splits each label's prompts in two
  (:func:`split_prompts`: by pair, deterministically by a seeded hash) and picks experts on the
  *selection* half only; what the circuit does (its held-out share of the full drop and the
  cross-ablation table) is measured on the *evaluation* half only, and the output lists which
  prompts served which purpose. Every Spearman ρ comes with a 95% CI and a permutation p.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from workbench.analysis.rank import rank_correlation
from workbench.analysis.stats import cluster_bootstrap
from workbench.interventions.apply import intervene
from workbench.interventions.causal import ablation_diffs, attribution
from workbench.interventions.metrics import Metric, metric_values
from workbench.interventions.specs import Zero, expert_map
from workbench.models.loading import LoadedModel
from workbench.probefile import Prompt

__all__ = [
    "Circuit",
    "CircuitComparison",
    "compare_circuits",
    "extract_circuit",
    "importance",
    "split_prompts",
]

Cell = tuple[int, int]


@dataclass
class Circuit:
    """One label's circuit: its experts (in the order they were added) and what ablating them does."""

    label: str
    experts: list[Cell]
    full_drop: float  # metric change when every supporting expert is ablated (negative)
    drop: float  # metric change when the circuit is ablated
    importance: pl.DataFrame = field(repr=False)
    diffs: np.ndarray = field(repr=False)  # [prompts, cells] single-ablation changes
    support: list[Cell] = field(default_factory=list)  # every expert whose single ablation lowers the metric

    @property
    def share(self) -> float:
        """Fraction of the full drop the circuit reproduces."""
        return self.drop / self.full_drop if self.full_drop < 0 else float("nan")


def _ablated_mean(
    loaded: LoadedModel, prompts: Sequence[Prompt], metric: Metric, cells: Sequence[Cell]
) -> np.ndarray:
    per_layer: dict[int, list[int]] = {}
    for layer, expert in cells:
        per_layer.setdefault(layer, []).append(expert)
    with intervene(loaded, Zero(expert_map(per_layer))):
        return metric_values(loaded, prompts, metric)


def importance(
    loaded: LoadedModel, prompts: Sequence[Prompt], metric: Metric, *, n_boot: int = 1000, seed: int = 0
) -> tuple[pl.DataFrame, np.ndarray]:
    """Per (layer, expert): ``effect`` of zero-ablating it alone (CI) and its ``attribution``; plus the per-prompt diffs."""
    if not prompts:
        raise ValueError("no prompts for this label")
    cells, diffs = ablation_diffs(loaded, prompts, metric, mode="zero")
    est, lo, hi = cluster_bootstrap(diffs, np.ones(len(prompts)), n_boot=n_boot, seed=seed)
    table = pl.DataFrame({
        "layer": [c[0] for c in cells], "expert": [c[1] for c in cells],
        "effect": est, "ci_low": lo, "ci_high": hi,
    })  # fmt: skip
    return table.join(attribution(loaded, prompts, metric), on=["layer", "expert"], how="left"), diffs


def extract_circuit(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    metric: Metric,
    label: str,
    *,
    share: float = 0.8,
    n_boot: int = 1000,
) -> Circuit:
    """The fewest experts (greedy by importance) whose joint ablation removes ≥ ``share`` of the full drop."""
    table, diffs = importance(loaded, prompts, metric, n_boot=n_boot)
    base = float(metric_values(loaded, prompts, metric).mean())
    ordered = table.filter(pl.col("effect") < 0).sort("effect")
    support = [(int(a), int(b)) for a, b in ordered.select("layer", "expert").rows()]
    if not support:
        return Circuit(label, [], 0.0, 0.0, table, diffs, [])
    full = float(_ablated_mean(loaded, prompts, metric, support).mean()) - base
    chosen: list[Cell] = []
    drop = 0.0
    for cell in support:
        chosen.append(cell)
        drop = float(_ablated_mean(loaded, prompts, metric, chosen).mean()) - base
        if full < 0 and drop <= share * full:
            break
    return Circuit(label, chosen, full, drop, table, diffs, support)


def _group_key(prompt: Prompt) -> str:
    return f"pair:{prompt.pair_id}" if prompt.pair_id is not None else f"text:{prompt.text}"


def split_prompts(prompts: Sequence[Prompt], *, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """Selection and evaluation halves of ``prompts``, disjoint and deterministic for a given ``seed``.

    Prompts are grouped by ``pair_id`` (by text when it is unset, so a repeated text cannot land
    in both halves); the groups are ordered by the SHA-256 of ``seed`` and their key and dealt
    alternately, the first to selection. Order within each half follows ``prompts``.
    """
    keys = sorted(
        {_group_key(p) for p in prompts}, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()
    )
    chosen = set(keys[0::2])
    select = [p for p in prompts if _group_key(p) in chosen]
    evaluate = [p for p in prompts if _group_key(p) not in chosen]
    return select, evaluate


@dataclass
class CircuitComparison:
    """Two labels' circuits and the numbers that compare them."""

    a: Circuit
    b: Circuit
    iou: float
    overlap: float
    spearman: float
    spearman_ci: tuple[float, float]
    cross: pl.DataFrame  # ablated circuit, evaluated on, effect, ci_low, ci_high, n (evaluation prompts)
    importance_agreement: pl.DataFrame  # per label: Spearman of attribution vs true ablation, CI, p
    spearman_p: float = math.nan  # permutation p of ``spearman`` over experts (+1 correction)
    selection: dict[str, list[int]] = field(default_factory=dict)  # label -> prompt ids that chose experts
    evaluation: dict[str, list[int]] = field(default_factory=dict)  # label -> prompt ids that judged them
    held_out: pl.DataFrame = field(default_factory=pl.DataFrame)  # label, drop, full_drop, share, n

    def summary(self) -> dict[str, Any]:
        return {
            "labels": [self.a.label, self.b.label],
            "circuit_sizes": [len(self.a.experts), len(self.b.experts)],
            "circuits": {c.label: [list(x) for x in c.experts] for c in (self.a, self.b)},
            "shares": {c.label: c.share for c in (self.a, self.b)},
            "iou": self.iou, "overlap": self.overlap,
            "importance_spearman": self.spearman, "importance_spearman_ci": list(self.spearman_ci),
            "importance_spearman_p": self.spearman_p,
            "cross_ablation": self.cross.to_dicts(),
            "attribution_vs_ablation": self.importance_agreement.to_dicts(),
            "held_out": self.held_out.to_dicts(),
            "prompts": {"selection": self.selection, "evaluation": self.evaluation},
        }  # fmt: skip


def _bootstrap_spearman(da: np.ndarray, db: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        ia = rng.integers(0, da.shape[0], da.shape[0])
        ib = rng.integers(0, db.shape[0], db.shape[0])
        reps.append(spearmanr(da[ia].mean(0), db[ib].mean(0)).statistic)
    lo, hi = np.nanquantile(np.asarray(reps, dtype=float), [0.025, 0.975])
    return float(lo), float(hi)


def _ablation_diffs(
    loaded: LoadedModel, prompts: Sequence[Prompt], metric: Metric, cells: Sequence[Cell]
) -> np.ndarray:
    """Per prompt: metric with ``cells`` ablated jointly minus the metric without (zeros for no cells)."""
    if not cells:
        return np.zeros(len(prompts))
    diffs: np.ndarray = _ablated_mean(loaded, prompts, metric, cells) - metric_values(loaded, prompts, metric)
    return diffs


def compare_circuits(
    loaded: LoadedModel,
    prompts_a: Sequence[Prompt],
    prompts_b: Sequence[Prompt],
    metric: Metric,
    *,
    share: float = 0.8,
    n_boot: int = 1000,
    seed: int = 0,
    split: bool = True,
) -> CircuitComparison:
    """Extract both circuits on the selection halves and judge them on the evaluation halves (module doc).

    ``split=False`` selects and evaluates on the same prompts (then the effects are in-sample).
    """
    la, lb = prompts_a[0].label, prompts_b[0].label
    if split:
        sel_a, ev_a = split_prompts(prompts_a, seed=seed)
        sel_b, ev_b = split_prompts(prompts_b, seed=seed)
        if not (sel_a and ev_a and sel_b and ev_b):
            raise ValueError(
                "each label needs prompts from at least 2 pairs (or distinct texts) to split them into "
                "selection and evaluation halves; pass more prompts"
            )
    else:
        sel_a, ev_a, sel_b, ev_b = list(prompts_a), list(prompts_a), list(prompts_b), list(prompts_b)
    a = extract_circuit(loaded, sel_a, metric, la, share=share, n_boot=n_boot)
    b = extract_circuit(loaded, sel_b, metric, lb, share=share, n_boot=n_boot)
    sa, sb = set(a.experts), set(b.experts)
    union = sa | sb
    iou = len(sa & sb) / len(union) if union else float("nan")
    overlap = len(sa & sb) / min(len(sa), len(sb)) if sa and sb else float("nan")
    between = rank_correlation(
        a.importance["effect"].to_numpy(), b.importance["effect"].to_numpy(), seed=seed
    )
    rho = float(spearmanr(a.importance["effect"], b.importance["effect"]).statistic)
    ci = _bootstrap_spearman(a.diffs, b.diffs, min(n_boot, 500), seed)
    rows = []
    for circuit in (a, b):
        for prompts in (ev_a, ev_b):
            diffs = _ablation_diffs(loaded, prompts, metric, circuit.experts)
            est, lo, hi = cluster_bootstrap(diffs, np.ones(len(prompts)), n_boot=n_boot, seed=seed)
            rows.append({
                "ablated": f"circuit({circuit.label})", "evaluated_on": prompts[0].label,
                "effect": float(est[0]), "ci_low": float(lo[0]), "ci_high": float(hi[0]), "n": len(prompts),
            })  # fmt: skip
    held = []
    for circuit, prompts in ((a, ev_a), (b, ev_b)):
        drop = float(_ablation_diffs(loaded, prompts, metric, circuit.experts).mean())
        full = float(_ablation_diffs(loaded, prompts, metric, circuit.support).mean())
        held.append({
            "label": circuit.label, "drop": drop, "full_drop": full,
            "share": drop / full if full < 0 else float("nan"), "n": len(prompts),
        })  # fmt: skip
    agree = []
    for c in (a, b):
        stats = rank_correlation(
            c.importance["attribution"].to_numpy(), c.importance["effect"].to_numpy(), seed=seed
        )
        agree.append({
            "label": c.label,
            "spearman": float(spearmanr(c.importance["attribution"], c.importance["effect"]).statistic),
            **{k: stats[k] for k in ("ci_low", "ci_high", "p", "p_floor")}, "n": int(stats["n"]),
        })  # fmt: skip
    return CircuitComparison(
        a, b, iou, overlap, rho, ci, pl.DataFrame(rows), pl.DataFrame(agree), between["p"],
        {la: [p.prompt_id for p in sel_a], lb: [p.prompt_id for p in sel_b]},
        {la: [p.prompt_id for p in ev_a], lb: [p.prompt_id for p in ev_b]}, pl.DataFrame(held),
    )  # fmt: skip
