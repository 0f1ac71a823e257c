"""Random-expert controls and dose–response curves for intervention effects (METHODS.md §8).

An effect means little alone: switching off *any* few experts may move a metric. So every
chosen expert set is compared with random sets of the **same size on the same layers**
(:func:`random_like`), ≥ 5 seeds, and summarised by :func:`versus_controls`: the control mean
and spread, the effect size ``z = (chosen − mean) / sd`` and an empirical two-sided p-value
``(1 + #{controls at least as far from the control median}) / (n + 1)``. :func:`dose_response`
does the same at several set sizes, taking the top-N of a ranking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "ExpertSet", "dose_response", "format_set", "parse_set", "random_like", "run_with_controls", "top_n",
    "versus_controls",
]  # fmt: skip

ExpertSet = dict[int, list[int]]
Measure = Callable[[ExpertSet], float]


def random_like(chosen: Mapping[int, Sequence[int]], n_experts: Mapping[int, int], seed: int) -> ExpertSet:
    """A random expert set with as many experts as ``chosen`` on each of its layers."""
    rng = np.random.default_rng(seed)
    out: ExpertSet = {}
    for layer, experts in sorted(chosen.items()):
        count = len(set(experts))
        if count > n_experts[layer]:
            raise ValueError(f"layer {layer}: {count} experts chosen but it has only {n_experts[layer]}")
        out[int(layer)] = sorted(int(e) for e in rng.choice(n_experts[layer], size=count, replace=False))
    return out


def top_n(ranking: Sequence[tuple[int, int]], n: int) -> ExpertSet:
    """The first ``n`` (layer, expert) pairs of ``ranking`` as a {layer: experts} set."""
    if n > len(ranking):
        raise ValueError(f"asked for the top {n} experts but the ranking has {len(ranking)}")
    out: ExpertSet = {}
    for layer, expert in ranking[:n]:
        out.setdefault(int(layer), []).append(int(expert))
    return {k: sorted(v) for k, v in sorted(out.items())}


def run_with_controls(
    measure: Measure,
    chosen: Mapping[int, Sequence[int]],
    n_experts: Mapping[int, int],
    *,
    n_controls: int = 10,
    seed: int = 0,
) -> pl.DataFrame:
    """``measure`` on the chosen set and on ``n_controls`` random sets like it: rows (set, seed, experts, value)."""
    if n_controls < 5:
        raise ValueError(f"use at least 5 random controls (got {n_controls}); fewer give no usable spread")
    rows: list[dict[str, Any]] = [
        {"set": "chosen", "seed": None, "experts": format_set(chosen), "value": float(measure(dict(chosen)))}  # type: ignore[arg-type]
    ]
    for s in range(n_controls):
        control = random_like(chosen, n_experts, seed=seed + s)
        rows.append(
            {
                "set": "random",
                "seed": seed + s,
                "experts": format_set(control),
                "value": float(measure(control)),
            }
        )
    return pl.DataFrame(
        rows, schema={"set": pl.Utf8, "seed": pl.Int64, "experts": pl.Utf8, "value": pl.Float64}
    )


def versus_controls(table: pl.DataFrame) -> dict[str, float]:
    """Chosen value vs the random controls of :func:`run_with_controls`: mean, sd, z, p, and the range."""
    chosen = float(table.filter(pl.col("set") == "chosen")["value"][0])
    ctrl = table.filter(pl.col("set") == "random")["value"].to_numpy().astype(float)
    if ctrl.size == 0:
        raise ValueError("no random controls in the table")
    mean, sd, med = (
        float(ctrl.mean()),
        float(ctrl.std(ddof=1)) if ctrl.size > 1 else float("nan"),
        float(np.median(ctrl)),
    )
    far = int((np.abs(ctrl - med) >= abs(chosen - med)).sum())
    z = (chosen - mean) / sd if sd > 0 else math.copysign(math.inf, chosen - mean) if chosen != mean else 0.0
    return {
        "chosen": chosen, "control_mean": mean, "control_sd": sd, "control_min": float(ctrl.min()),
        "control_max": float(ctrl.max()), "z": z, "p": (1 + far) / (1 + ctrl.size), "n_controls": float(ctrl.size),
    }  # fmt: skip


def dose_response(
    measure: Measure,
    ranking: Sequence[tuple[int, int]],
    n_experts: Mapping[int, int],
    *,
    doses: Sequence[int] = (1, 2, 4, 8),
    n_controls: int = 10,
    seed: int = 0,
) -> pl.DataFrame:
    """For each dose N: ``measure`` of the top-N of ``ranking`` and of N random experts on the same layers."""
    frames = []
    for n in doses:
        table = run_with_controls(
            measure, top_n(ranking, n), n_experts, n_controls=n_controls, seed=seed + 1000 * n
        )
        frames.append(table.with_columns(pl.lit(n).alias("n")))
    return pl.concat(frames).select("n", "set", "seed", "experts", "value")


def format_set(experts: Mapping[int, Sequence[int]]) -> str:
    """``{0: [3, 1], 2: [5]}`` → ``"0:1,3;2:5"`` (the ``experts`` column of the control tables)."""
    return ";".join(
        f"{layer}:{','.join(str(e) for e in sorted(ex))}" for layer, ex in sorted(experts.items())
    )


def parse_set(text: str) -> ExpertSet:
    """The inverse of :func:`format_set`."""
    out: ExpertSet = {}
    for part in filter(None, text.split(";")):
        layer, experts = part.split(":")
        out[int(layer)] = [int(e) for e in experts.split(",")]
    return out
