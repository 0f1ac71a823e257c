"""Random controls are random *sets* (issue 12, item 5): distinct, never the chosen set, exact when few.

Also the p-value against them: its +1 correction and its stated floor.
"""

from __future__ import annotations

import math
from collections import Counter

import polars as pl
import pytest

from workbench.interventions.controls import (
    ENUMERATE_BELOW,
    format_p,
    format_set,
    n_possible_sets,
    random_sets,
    run_with_controls,
    versus_controls,
)

pytestmark = pytest.mark.unit


def _keys(sets: list[dict[int, list[int]]]) -> list[str]:
    return [format_set(s) for s in sets]


def test_one_expert_of_eight_gives_exactly_the_seven_others() -> None:
    chosen = {3: [5]}
    sets = random_sets(chosen, {3: 8}, 10, seed=0)
    assert _keys(sets) == [f"3:{e}" for e in range(8) if e != 5]  # all 7 others, enumerated, in order
    assert random_sets(chosen, {3: 8}, 10, seed=123) == sets  # exhaustive: the seed does not matter
    table = run_with_controls(lambda s: float(s[3][0]), chosen, {3: 8}, n_controls=10, seed=0)
    randoms = table.filter(pl.col("set") == "random")
    assert randoms.height == 7 and randoms["experts"].n_unique() == 7
    assert "3:5" not in randoms["experts"].to_list()
    summary = versus_controls(table)
    assert summary["n_controls"] == 7 and summary["p_floor"] == pytest.approx(1 / 8)


def test_fewer_requested_than_exist_are_distinct_and_exclude_the_chosen() -> None:
    chosen = {3: [5]}
    for seed in range(40):
        sets = random_sets(chosen, {3: 8}, 5, seed=seed)
        keys = _keys(sets)
        assert len(keys) == 5 and len(set(keys)) == 5 and "3:5" not in keys
    # Uniform over the 7 others: over many seeds each appears in about 5/7 of the draws.
    counts = Counter(k for seed in range(700) for k in _keys(random_sets(chosen, {3: 8}, 5, seed=seed)))
    assert set(counts) == {f"3:{e}" for e in range(8) if e != 5}
    assert all(abs(n / 700 - 5 / 7) < 0.07 for n in counts.values())


@pytest.mark.parametrize(
    ("chosen", "n_experts", "n"),
    [
        ({0: [1, 2], 1: [3]}, {0: 8, 1: 8}, 60),  # 224 possible sets: sampled from the enumeration
        ({0: [0, 1, 2], 2: [4, 5, 6]}, {0: 16, 2: 16}, 300),  # 313,600: rejection of repeats
    ],
)
def test_larger_sets_never_repeat(chosen: dict[int, list[int]], n_experts: dict[int, int], n: int) -> None:
    total = n_possible_sets(chosen, n_experts)
    assert total == math.prod(math.comb(n_experts[k], len(v)) for k, v in chosen.items())
    assert (total <= ENUMERATE_BELOW) == (total == 224)
    sets = random_sets(chosen, n_experts, n, seed=7)
    keys = _keys(sets)
    assert len(keys) == n and len(set(keys)) == n
    assert format_set(chosen) not in keys
    for s in sets:  # the same shape: as many experts on each of the chosen layers
        assert {k: len(set(v)) for k, v in s.items()} == {k: len(v) for k, v in chosen.items()}
    assert random_sets(chosen, n_experts, n, seed=7) == sets  # deterministic for a seed
    assert random_sets(chosen, n_experts, n, seed=8) != sets


def test_exactly_as_many_as_exist_minus_one_is_the_full_enumeration() -> None:
    chosen = {0: [0, 1]}  # C(4, 2) = 6 sets, 5 others
    sets = random_sets(chosen, {0: 4}, 5, seed=3)
    assert sorted(_keys(sets)) == sorted(
        f"0:{a},{b}" for a in range(4) for b in range(a + 1, 4) if (a, b) != (0, 1)
    )
    assert len(random_sets(chosen, {0: 4}, 5, seed=3, exclude_chosen=False)) == 5
    assert len(random_sets(chosen, {0: 4}, 50, seed=3, exclude_chosen=False)) == 6
    with pytest.raises(ValueError, match="only 4"):
        random_sets({0: [0, 1, 2, 3, 4]}, {0: 4}, 5)


def _table(chosen: float, controls: list[float]) -> pl.DataFrame:
    rows = [{"set": "chosen", "value": chosen}] + [{"set": "random", "value": v} for v in controls]
    return pl.DataFrame(rows)


def test_p_against_controls_has_its_plus_one_correction_and_states_its_floor() -> None:
    controls = [float(v) for v in range(10)]  # median 4.5
    beyond = versus_controls(_table(100.0, controls))
    assert beyond["p"] == pytest.approx(1 / 11)  # never 0: the chosen set counts itself
    assert beyond["p_floor"] == pytest.approx(1 / 11) and beyond["p"] >= beyond["p_floor"]
    # |v − 4.5| ≥ |8 − 4.5| = 3.5 for controls 0, 1, 8, 9: p = (1 + 4) / (10 + 1)
    assert versus_controls(_table(8.0, controls))["p"] == pytest.approx(5 / 11)
    assert versus_controls(_table(4.5, controls))["p"] == pytest.approx(1.0)
    assert format_p(beyond) == "p = 0.09 (floor 0.09 with 10 controls)"
    assert format_p({"p": 0.5, "n_controls": 7.0}, 3) == "p = 0.500 (floor 0.125 with 7 controls)"
