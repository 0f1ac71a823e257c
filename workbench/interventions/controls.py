"""Random-expert controls and dose–response curves for intervention effects (docs/methods.md §8).

An effect means little alone: switching off *any* few experts may move a metric. So every
chosen expert set is compared with random sets of the **same size on the same layers**
(:func:`random_sets`), ≥ 5 of them, and summarised by :func:`versus_controls`: the control mean
and spread, the effect size ``z = (chosen − mean) / sd`` and an empirical two-sided p-value
``(1 + #{controls at least as far from the control median}) / (n + 1)``, whose floor
``p_floor = 1/(n + 1)`` is reported with it (:func:`format_p`). :func:`dose_response` does the
same at several set sizes, taking the top-N of a ranking.

The controls are a random *sample of distinct sets*, never the chosen set itself: drawing each
control independently (as :func:`random_like` does) repeats sets and redraws the chosen one when
few sets exist — with one expert of 8 on one layer there are only 7 other sets, and 10
independent draws contained the chosen set 3 times. When the number of possible other sets is
at most the number asked for, all of them are used (an exact enumeration: the p-value is then
the chosen set's exact rank among every set of its shape, floor ``1/(n_sets)``); when it is
small (≤ :data:`ENUMERATE_BELOW`) the sample is drawn from the enumeration without replacement;
otherwise by rejection of repeats.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "ENUMERATE_BELOW", "ExpertSet", "dose_response", "format_p", "format_set", "n_possible_sets", "parse_set",
    "random_like", "random_sets", "run_with_controls", "top_n", "versus_controls",
]  # fmt: skip

ExpertSet = dict[int, list[int]]
Measure = Callable[[ExpertSet], float]


def random_like(chosen: Mapping[int, Sequence[int]], n_experts: Mapping[int, int], seed: int) -> ExpertSet:
    """One random expert set with as many experts as ``chosen`` on each of its layers.

    Independent draws may repeat each other and ``chosen``: for a set of controls use :func:`random_sets`.
    """
    rng = np.random.default_rng(seed)
    out: ExpertSet = {}
    for layer, experts in sorted(chosen.items()):
        count = len(set(experts))
        if count > n_experts[layer]:
            raise ValueError(f"layer {layer}: {count} experts chosen but it has only {n_experts[layer]}")
        out[int(layer)] = sorted(int(e) for e in rng.choice(n_experts[layer], size=count, replace=False))
    return out


#: Enumerate every possible control set (then sample from the list) when there are at most this many.
ENUMERATE_BELOW = 20_000


def _sizes(chosen: Mapping[int, Sequence[int]], n_experts: Mapping[int, int]) -> dict[int, int]:
    sizes = {int(layer): len(set(experts)) for layer, experts in sorted(chosen.items())}
    for layer, count in sizes.items():
        if count > n_experts[layer]:
            raise ValueError(f"layer {layer}: {count} experts chosen but it has only {n_experts[layer]}")
    return sizes


def n_possible_sets(chosen: Mapping[int, Sequence[int]], n_experts: Mapping[int, int]) -> int:
    """How many expert sets have the shape of ``chosen`` (its count on each of its layers): ``Π C(E_l, k_l)``."""
    return math.prod(math.comb(n_experts[layer], k) for layer, k in _sizes(chosen, n_experts).items())


def _key(experts: Mapping[int, Sequence[int]]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    return tuple((int(layer), tuple(sorted({int(e) for e in ex}))) for layer, ex in sorted(experts.items()))


def random_sets(
    chosen: Mapping[int, Sequence[int]],
    n_experts: Mapping[int, int],
    n: int,
    *,
    seed: int = 0,
    exclude_chosen: bool = True,
) -> list[ExpertSet]:
    """Up to ``n`` **distinct** random sets shaped like ``chosen``, none equal to it (see the module doc).

    When at most ``n`` such sets exist, all of them are returned, in lexicographic order (fewer
    than ``n``: that is every set there is). Otherwise ``n`` sets drawn without replacement,
    uniformly among all sets of the shape (less ``chosen``). Deterministic for a given ``seed``.
    ``exclude_chosen=False`` keeps ``chosen`` eligible (for controls shared by several chosen sets).
    """
    sizes = _sizes(chosen, n_experts)
    skip = {_key(chosen)} if exclude_chosen else set()
    total = n_possible_sets(chosen, n_experts)
    rng = np.random.default_rng(seed)
    if total - len(skip) <= n or total <= ENUMERATE_BELOW:
        per_layer = [
            [(layer, combo) for combo in itertools.combinations(range(n_experts[layer]), k)]
            for layer, k in sizes.items()
        ]
        every = [s for s in (tuple(x) for x in itertools.product(*per_layer)) if s not in skip]
        if len(every) > n:
            every = [every[i] for i in rng.choice(len(every), size=n, replace=False)]
        return [{layer: list(combo) for layer, combo in s} for s in every]
    out: list[ExpertSet] = []
    seen = set(skip)
    for _ in range(1000 * max(n, 1)):  # total > ENUMERATE_BELOW ≥ … so repeats are rare
        if len(out) == n:
            break
        draw = {layer: sorted(int(e) for e in rng.choice(n_experts[layer], size=k, replace=False))
                for layer, k in sizes.items()}  # fmt: skip
        if (key := _key(draw)) not in seen:
            seen.add(key)
            out.append(draw)
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
    """``measure`` on the chosen set and on ``n_controls`` distinct random sets like it (:func:`random_sets`).

    Rows (set, seed, experts, value): the chosen set first, then the controls, whose ``seed`` is
    the seed of the draw that produced them all. Fewer than ``n_controls`` controls come back only
    when fewer other sets exist; then they are all of them (an exact enumeration).
    """
    if n_controls < 5:
        raise ValueError(f"use at least 5 random controls (got {n_controls}); fewer give no usable spread")
    rows: list[dict[str, Any]] = [
        {"set": "chosen", "seed": None, "experts": format_set(chosen), "value": float(measure(dict(chosen)))}  # type: ignore[arg-type]
    ]
    for control in random_sets(chosen, n_experts, n_controls, seed=seed):
        rows.append(
            {"set": "random", "seed": seed, "experts": format_set(control), "value": float(measure(control))}
        )
    return pl.DataFrame(
        rows, schema={"set": pl.Utf8, "seed": pl.Int64, "experts": pl.Utf8, "value": pl.Float64}
    )


def versus_controls(table: pl.DataFrame) -> dict[str, float]:
    """Chosen value vs the random controls of :func:`run_with_controls`: mean, sd, z, p, its floor, the range.

    ``p = (1 + #{controls at least as far from the control median as the chosen value}) / (n + 1)``:
    the +1 counts the chosen set itself, so p is never 0 and ``p_floor = 1/(n + 1)`` is the
    smallest it can be with ``n`` controls (say it with the p: :func:`format_p`).
    """
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
        "p_floor": 1.0 / (1 + ctrl.size),
    }  # fmt: skip


def format_p(row: Mapping[str, Any], digits: int = 2) -> str:
    """``"p = 0.09 (floor 0.09 with 10 controls)"`` from a :func:`versus_controls` row."""
    n = int(row["n_controls"])
    floor = row.get("p_floor")
    floor = (
        1.0 / (n + 1) if floor is None or (isinstance(floor, float) and math.isnan(floor)) else float(floor)
    )
    return f"p = {float(row['p']):.{digits}f} (floor {floor:.{digits}f} with {n} controls)"


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
