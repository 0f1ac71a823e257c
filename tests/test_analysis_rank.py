"""Rank correlations with a CI and a p-value (workbench/analysis/rank.py; docs/methods.md §0)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from workbench.analysis.rank import fisher_interval, fisher_p, rank_correlation

pytestmark = pytest.mark.unit


def test_rho_matches_scipy_with_ties_and_unequal_spacing() -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(0, 5, 41).astype(float)  # many ties, like k_p
    y = np.exp(x) + rng.normal(0, 3, 41)
    out = rank_correlation(x, y, n_perm=199)
    assert out["rho"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert out["n"] == 41
    tau = rank_correlation(x, y, method="kendall", n_perm=99)
    assert tau["rho"] == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)


def test_fisher_interval_known_case() -> None:
    """ρ = 0.5 over n = 28: z = atanh 0.5, SE = sqrt((1 + 0.125)/25) (Bonett–Wright)."""
    lo, hi = fisher_interval(0.5, 28)
    se = math.sqrt(1.125 / 25)
    assert lo == pytest.approx(math.tanh(math.atanh(0.5) - 1.959964 * se), abs=1e-6)
    assert hi == pytest.approx(math.tanh(math.atanh(0.5) + 1.959964 * se), abs=1e-6)
    assert (lo, hi) == pytest.approx((0.1327, 0.7464), abs=5e-4)
    assert hi - 0.5 < 0.5 - lo  # asymmetric on the ρ scale, as a Fisher interval must be
    assert math.isnan(fisher_interval(0.5, 3)[0])
    assert fisher_p(0.0, 50) == pytest.approx(1.0)
    assert fisher_p(0.5, 28) == pytest.approx(2 * (1 - 0.9966), abs=2e-3)  # z = 0.549·5 = 2.75


def test_permutation_p_keeps_the_plus_one_and_tracks_scipy() -> None:
    x = np.arange(12.0)
    perfect = rank_correlation(x, x**3, n_perm=499)
    assert perfect["rho"] == pytest.approx(1.0)
    assert perfect["p"] == perfect["p_floor"] == pytest.approx(1 / 500)  # never 0
    assert rank_correlation(x, -x, n_perm=499)["p"] == pytest.approx(1 / 500)  # two-sided
    rng = np.random.default_rng(3)
    a = rng.normal(size=60)
    b = 0.3 * a + rng.normal(size=60)
    out = rank_correlation(a, b, n_perm=4999, seed=1)
    assert out["p"] == pytest.approx(spearmanr(a, b).pvalue, abs=0.02)
    assert out["ci_low"] < out["rho"] < out["ci_high"]


def test_null_p_is_uniform_enough() -> None:
    """Independent x, y: p ≤ 0.05 in about 5% of 200 draws (not 0%, not 30%)."""
    rng = np.random.default_rng(11)
    ps = [
        rank_correlation(rng.normal(size=25), rng.normal(size=25), n_perm=199, seed=i)["p"]
        for i in range(200)
    ]
    assert 0.01 <= np.mean(np.asarray(ps) <= 0.05) <= 0.10


def test_pairs_with_a_nan_are_dropped_together_and_degenerate_cases_are_nan() -> None:
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0])
    y = np.array([7.0, 1.0, 3.0, np.nan, 2.0, 9.0, 8.0])
    out = rank_correlation(x, y, n_perm=99)
    keep = np.isfinite(x) & np.isfinite(y)
    assert out["n"] == 5 and out["rho"] == pytest.approx(spearmanr(x[keep], y[keep]).statistic)
    constant = rank_correlation(np.ones(10), np.arange(10.0))
    assert math.isnan(constant["rho"]) and math.isnan(constant["p"]) and constant["n"] == 10
    with pytest.raises(ValueError, match="pair up"):
        rank_correlation(np.arange(3.0), np.arange(4.0))


def test_bootstrap_interval_covers_and_is_deterministic() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=80)
    y = x + rng.normal(size=80)
    one = rank_correlation(x, y, ci="bootstrap", n_boot=300, n_perm=99, seed=2)
    assert one == rank_correlation(x, y, ci="bootstrap", n_boot=300, n_perm=99, seed=2)
    assert one["ci_low"] < one["rho"] < one["ci_high"]
    fisher = rank_correlation(x, y, n_perm=0)
    assert fisher["ci_low"] == pytest.approx(one["ci_low"], abs=0.1) and math.isnan(fisher["p"])


def test_chunked_permutations_for_many_items_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the cache size the permutations are drawn in chunks: still deterministic, same null."""
    from workbench.analysis import rank

    rng = np.random.default_rng(9)
    a = rng.normal(size=200)
    b = 0.2 * a + rng.normal(size=200)
    monkeypatch.setattr(rank, "_CACHE_ENTRIES", 1000)  # 5 permutations per chunk
    out = rank_correlation(a, b, n_perm=1999, seed=4)
    assert out == rank_correlation(a, b, n_perm=1999, seed=4)
    assert out["p"] == pytest.approx(spearmanr(a, b).pvalue, abs=0.02)
