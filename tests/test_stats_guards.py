"""Tests that fail on real statistics bugs (issue 12, item 8), each on a planted case.

* BH loses its step-up monotonicity (q must be the running minimum of ``p·m/rank`` from the top);
* a permutation p-value loses its +1 correction (it must be ``(hits + 1)/(n + 1)``, never 0);
* a normalisation is wrong under unbalanced labels (asymmetric class sizes and prompt lengths);
* selection and evaluation prompts leak into each other (MoTE's split by pair).
"""

from __future__ import annotations

import numpy as np
import pytest

from workbench.analysis.contrast import contrast_test
from workbench.analysis.stats import benjamini_hochberg, cluster_permutation_pvalue
from workbench.interventions.causal import _signflip_p
from workbench.interventions.mote import split_pairs
from workbench.probefile import Prompt

pytestmark = pytest.mark.unit


def _bh_by_hand(p: np.ndarray) -> np.ndarray:
    m, order = p.size, np.argsort(p, kind="stable")
    q = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):  # step-up: from the largest p down, keep the running minimum
        running = min(running, p[order[rank - 1]] * m / rank)
        q[order[rank - 1]] = running
    return q


def test_bh_is_the_running_minimum_from_the_top_not_the_per_rank_value() -> None:
    p = np.array([0.041, 0.010, 0.5, 0.012, 0.040, 0.011])  # unsorted on purpose
    naive = np.sort(p) * p.size / np.arange(1, p.size + 1)
    assert np.any(np.diff(naive) < 0)  # per-rank p·m/rank is not monotone here ...
    q = benjamini_hochberg(p)
    assert q == pytest.approx(_bh_by_hand(p))
    order = np.argsort(p)
    assert np.all(np.diff(q[order]) >= 0)  # ... but q is, in the order of p
    assert q[1] == pytest.approx(0.012 * 6 / 3)  # smallest p borrows the 3rd rank's value
    assert q[2] == pytest.approx(0.5) and q.max() <= 1.0
    with_nan = benjamini_hochberg(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx([0.02, 0.04])  # m = 2, not 3


def test_bh_random_inputs_match_the_definition() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = np.concatenate([rng.uniform(size=30), rng.uniform(0, 0.01, size=5)])
        assert benjamini_hochberg(p) == pytest.approx(_bh_by_hand(p))


def test_permutation_p_values_keep_the_plus_one() -> None:
    """A perfectly separated effect: no shuffle reaches it, so p is exactly 1/(n_perm + 1), never 0."""
    n_perm = 99
    groups = np.array([0] * 12 + [1] * 30)  # unbalanced groups
    num = np.where(groups == 0, 9.0, 1.0)[:, None] * np.array([1.0, 0.0])[None, :] + 1.0
    den = np.full(groups.size, 10.0)
    _, p = cluster_permutation_pvalue(num, den, groups, n_perm=n_perm, seed=0)
    assert p[0, 0] == pytest.approx(1 / (n_perm + 1))
    assert p[0, 1] == pytest.approx(1.0)  # a column with no difference: every shuffle ties
    is_t = groups == 0
    res = contrast_test(num, den, is_t, n_boot=0, n_perm=n_perm, seed=0)
    assert res.p[0] == pytest.approx(1 / (n_perm + 1)) and res.p[1] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    assert _signflip_p(np.full(40, 0.3) + rng.normal(0, 0.01, 40), n_perm, rng) == pytest.approx(
        1 / (n_perm + 1)
    )


def test_unbalanced_group_normalisation_is_each_groups_own_ratio_of_sums() -> None:
    """3 groups of 4, 9 and 20 prompts with different lengths: d_g = ratio in g − ratio outside g."""
    rng = np.random.default_rng(1)
    groups = np.repeat([0, 1, 2], [4, 9, 20])
    den = np.where(groups == 0, 40.0, np.where(groups == 1, 5.0, 12.0)) + rng.integers(0, 4, groups.size)
    rate = np.where(groups == 0, 0.6, np.where(groups == 1, 0.1, 0.25))
    num = np.round(den * rate)[:, None]
    observed, _ = cluster_permutation_pvalue(num, den, groups, n_perm=0)
    for g in range(3):
        inside, outside = groups == g, groups != g
        want = num[inside, 0].sum() / den[inside].sum() - num[outside, 0].sum() / den[outside].sum()
        assert observed[g, 0] == pytest.approx(want, abs=1e-12)
        wrong = (num[inside, 0] / den[inside]).mean() - (num[outside, 0] / den[outside]).mean()
        assert abs(observed[g, 0] - wrong) > 1e-3  # a mean of rates would differ on this case
    res = contrast_test(num, den, groups == 0, n_boot=0, n_perm=0)
    t, c = groups == 0, groups != 0
    assert res.rate_target[0] == pytest.approx(num[t, 0].sum() / den[t].sum())
    assert res.rate_control[0] == pytest.approx(num[c, 0].sum() / den[c].sum())


def test_contrast_p_stays_valid_with_unbalanced_classes_of_unequal_length() -> None:
    """Length-only null, 30 long vs 12 short prompts: at most ~5% of tests reject at α = 0.05.

    The raw-difference permutation test rejected ~14% here (its null has the wrong spread when the
    short class is noisier); the studentized statistic keeps the size.
    """
    rng = np.random.default_rng(3)
    rates = np.array([0.3, 0.2, 0.1, 0.05])
    reject, tests = 0, 0
    for rep in range(80):
        n_tok = np.concatenate([rng.integers(30, 45, size=30), rng.integers(3, 8, size=12)])
        is_t = np.arange(n_tok.size) < 30
        hits = rng.binomial(n_tok[:, None], rates[None, :]).astype(float)
        res = contrast_test(hits, n_tok.astype(float), is_t, n_boot=0, n_perm=199, seed=rep)
        reject += int((res.p < 0.05).sum())
        tests += rates.size
    assert reject / tests <= 0.075


def _prompt(i: int, label: str, pair: str | None, text: str | None = None) -> Prompt:
    return Prompt(prompt_id=i, text=text or f"{label} {pair} {i}", label=label, pair_id=pair)


def test_selection_and_evaluation_halves_share_nothing() -> None:
    prompts = []
    for k in range(12):  # pairs listed out of order, benign first in some
        first, second = ("benign", "harmful") if k % 3 == 0 else ("harmful", "benign")
        prompts += [
            _prompt(2 * k, first, f"p{(7 * k) % 12:02d}"),
            _prompt(2 * k + 1, second, f"p{(7 * k) % 12:02d}"),
        ]
    prompts += [_prompt(90, "harmful", "lonely"), _prompt(91, "benign", None)]  # incomplete: never used
    # the same request under a second pair id must not reach both halves
    prompts += [_prompt(92, "harmful", "zz-dup", prompts[0].text), _prompt(93, "benign", "zz-dup", "fresh")]
    select, evaluate = split_pairs(prompts, 100, 100)
    for key in ("prompt_id", "pair_id", "text"):
        assert not {getattr(p, key) for p in select} & {getattr(p, key) for p in evaluate}, key
    for half in (select, evaluate):
        assert {p.pair_id for p in half if p.label == "harmful"} == {
            p.pair_id for p in half if p.label == "benign"
        }
        assert [p.label for p in half[:2]] == ["harmful", "benign"]
    used = {p.prompt_id for p in select + evaluate}
    assert not {90, 91, 92, 93} & used and len(used) == 24


def test_refusal_suite_split_is_disjoint() -> None:
    from workbench.data.suites import suite_path
    from workbench.probefile import read_probe_file

    select, evaluate = split_pairs(read_probe_file(suite_path("refusal")), 64, 96)
    assert len(select) == 128 and len(evaluate) == 192
    for key in ("prompt_id", "pair_id", "text"):
        assert not {getattr(p, key) for p in select} & {getattr(p, key) for p in evaluate}, key
