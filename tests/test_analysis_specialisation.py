"""Known-answer tests for domain specialisation (docs/methods.md §2) and its statistics helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from synthetic import save_run, skeleton

from workbench.analysis import (
    benjamini_hochberg,
    cluster_bootstrap,
    cluster_permutation_pvalue,
    domain_share_polars,
    domain_specialisation,
)
from workbench.analysis.specialisation import SPECIALISATION_COLUMNS
from workbench.store import Store

pytestmark = pytest.mark.unit

E, K = 8, 2
LABELS = ("code", "math", "prose")
PLANT_LAYER, PLANT_EXPERT, PLANT_PROB = 1, 5, 0.9
#: share of code tokens selecting expert 5: planted 90%, else uniform top-2 picks it with prob k/E.
TRUE_SHARE = PLANT_PROB + (1 - PLANT_PROB) * K / E


def _write_run(
    path: Path,
    *,
    planted: bool,
    seed: int,
    n_per_label: int = 20,
    n_pos: int = 20,
    layers: tuple[int, ...] = (0, 1),
) -> str:
    """A synthetic run: uniform random top-2 routing, plus (if ``planted``) code → expert 5 at layer 1."""
    rng = np.random.default_rng(seed)
    labels = [lab for lab in LABELS for _ in range(n_per_label)]
    # Varying prompt lengths, so that the ratio-of-sums estimators are exercised.
    sk = skeleton(labels, rng.integers(n_pos // 2, n_pos + 1, size=len(labels)), layers)
    n_rows, pid, lay = sk.n_rows, sk.pid, sk.lay
    experts = np.argsort(rng.random((n_rows, E)), axis=1)[:, :K].astype(np.int16)
    if planted:
        is_code = np.asarray(labels)[pid] == "code"
        hit = is_code & (lay == PLANT_LAYER) & (rng.random(n_rows) < PLANT_PROB)
        others = np.array([e for e in range(E) if e != PLANT_EXPERT], np.int16)
        experts[hit, 0] = PLANT_EXPERT
        experts[hit, 1] = others[rng.integers(0, E - 1, size=int(hit.sum()))]
    weights = np.tile(np.array([0.7, 0.3], np.float32), (n_rows, 1))
    return save_run(path, sk, experts=experts, weights=weights, n_experts=E, top_k=K, run_id=f"run-{seed}")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, pl.DataFrame]:
    path = tmp_path_factory.mktemp("spec") / "planted.duckdb"
    run = _write_run(path, planted=True, seed=1)
    with Store(path, read_only=True) as st:
        # The Monte Carlo floor is 1/(n_perm+1): with 48 rows and ~2 of them at the floor, BH gives
        # q = 24/(n_perm+1), so q < 0.01 needs more than the default 1000 permutations.
        return path, run, domain_specialisation(st, run, n_perm=4999)


def test_planted_expert_is_recovered(planted: tuple[Path, str, pl.DataFrame]) -> None:
    _, _, df = planted
    assert df.columns == list(SPECIALISATION_COLUMNS)
    assert df.height == 2 * E * len(LABELS)
    top = df.sort("lift", descending=True).row(0, named=True)
    assert (top["layer"], top["expert"], top["label"]) == (PLANT_LAYER, PLANT_EXPERT, "code")
    assert top["lift"] > 3
    assert top["q"] < 0.01
    assert top["ci_low"] <= TRUE_SHARE <= top["ci_high"]
    assert top["n_prompts"] == 20
    # Layer 0 has no plant: nothing there is a discovery.
    assert df.filter(pl.col("layer") == 0)["q"].min() > 0.05  # type: ignore[operator]


def test_shares_sum_to_k(planted: tuple[Path, str, pl.DataFrame]) -> None:
    _, _, df = planted
    sums = df.group_by("layer", "label").agg(pl.col("share").sum())
    np.testing.assert_allclose(sums["share"].to_numpy(), K, rtol=0, atol=1e-12)
    assert ((df["ci_low"] <= df["share"]) & (df["share"] <= df["ci_high"])).all()


def test_sql_and_polars_shares_agree(planted: tuple[Path, str, pl.DataFrame]) -> None:
    path, run, df = planted
    with Store(path, read_only=True) as st:
        ref = domain_share_polars(st.routing(run, logits=False), st.prompts(run))
    joined = df.select("layer", "expert", "label", "share").join(
        ref, on=["layer", "expert", "label"], how="left", suffix="_pl"
    )
    assert joined.height == df.height
    # Experts never selected are absent from the polars result and 0 in the SQL one.
    pl_share = joined["share_pl"].fill_null(0.0).to_numpy()
    assert np.array_equal(joined["share"].to_numpy(), pl_share)
    assert ref.height <= df.height


def test_null_routing_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "null.duckdb"
    run = _write_run(path, planted=False, seed=2)
    with Store(path, read_only=True) as st:
        df = domain_specialisation(st, run, n_boot=200, n_perm=500, seed=3)
    assert float(np.mean(df["q"].to_numpy() > 0.05)) >= 0.95
    assert df["lift"].is_between(0.5, 1.5).all()


def test_layer_filter_and_single_label(tmp_path: Path) -> None:
    path = tmp_path / "one.duckdb"
    run = _write_run(path, planted=True, seed=4, n_per_label=5)
    with Store(path, read_only=True) as st:
        df = domain_specialisation(st, run, layers=[1], n_boot=50, n_perm=50)
    assert df["layer"].unique().to_list() == [1]
    # One label only: nothing to compare with, so no p-value.
    num = np.ones((4, 3))
    _, p = cluster_permutation_pvalue(num, np.full(4, 2.0), np.zeros(4, np.int64), n_perm=20)
    assert np.isnan(p).all()


def test_benjamini_hochberg_known_values() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan, 0.9])
    q = benjamini_hochberg(p)
    # m = 5 non-NaN; sorted 0.005, 0.01, 0.03, 0.04, 0.9 → 0.025, 0.025, 0.05, 0.05, 0.9
    np.testing.assert_allclose(q[[3, 0, 2, 1, 5]], [0.025, 0.025, 0.05, 0.05, 0.9])
    assert np.isnan(q[4])
    assert benjamini_hochberg(np.array([0.5, 0.9]))[1] == 0.9
    assert (benjamini_hochberg(np.array([0.6, 0.7, 0.8])) <= 1).all()


def test_permutation_pvalue_has_plus_one_floor() -> None:
    num = np.r_[np.full(10, 9.0), np.full(10, 1.0)][:, None]
    den = np.full(20, 10.0)
    codes = np.r_[np.zeros(10), np.ones(10)].astype(np.int64)
    obs, p = cluster_permutation_pvalue(num, den, codes, n_perm=99, seed=0)
    assert obs[0, 0] == pytest.approx(0.8)
    assert p[0, 0] == pytest.approx(1 / 100)
    assert p[1, 0] > 0.9  # one-sided: the low group is not "greater"
    _, p2 = cluster_permutation_pvalue(num, den, codes, n_perm=99, seed=0, alternative="two-sided")
    assert p2[1, 0] <= 0.03  # |d| as extreme only for the observed split and its mirror image


def test_cluster_bootstrap_coverage() -> None:
    """Prompt-level random effects: CIs from resampling prompts cover the true share ≥ 90% of the time."""
    rng = np.random.default_rng(0)
    true, n_prompts, n_sims, covered = 0.3, 40, 200, 0
    for sim in range(n_sims):
        lengths = rng.integers(5, 30, size=n_prompts)
        rate = rng.beta(true * 4, (1 - true) * 4, size=n_prompts)  # prompt-level correlation, mean 0.3
        hits = rng.binomial(lengths, rate)
        _, low, high = cluster_bootstrap(hits, lengths, n_boot=300, seed=sim)
        covered += int(low[0] <= true <= high[0])
    assert covered / n_sims >= 0.90


def test_permutation_floor_is_refined_only_where_no_shuffle_reached() -> None:
    """One planted specialist among 400 tests: at the 1/100 floor BH cannot find it; 10,000 shuffles can."""
    rng = np.random.default_rng(3)
    n, m = 120, 200
    groups = np.repeat([0, 1], n // 2)
    den = np.full(n, 50.0)
    num = rng.binomial(50, 0.1, size=(n, m)).astype(np.float64)  # null columns
    num[:, 0] = np.where(groups == 0, 15.0, 5.0)  # column 0: group 0 uses it 3x as much
    _, p_plain = cluster_permutation_pvalue(num, den, groups, n_perm=99, seed=1)
    _, p_fine = cluster_permutation_pvalue(num, den, groups, n_perm=99, n_perm_max=9_999, seed=1)
    assert p_plain[0, 0] == pytest.approx(1 / 100) and p_fine[0, 0] == pytest.approx(1 / 10_000)
    assert benjamini_hochberg(p_plain.ravel())[0] > 0.05  # the floor hides it among 400 tests
    assert benjamini_hochberg(p_fine.ravel())[0] < 0.05
    at_floor = np.isclose(p_plain, 1 / 100)
    assert np.array_equal(p_fine[~at_floor], p_plain[~at_floor])  # the same shuffles: bit-identical
    assert (p_fine[at_floor] < 1 / 100).sum() >= 1
    with pytest.raises(ValueError, match="n_perm_max"):
        cluster_permutation_pvalue(num, den, groups, n_perm=99, n_perm_max=50)


def test_refined_permutation_p_stays_valid_under_the_null() -> None:
    """No planted effect: the two-stage p rejects at 5% no more often than 5% (up to sampling noise)."""
    rng = np.random.default_rng(4)
    n, m = 80, 400
    groups = rng.permutation(np.repeat([0, 1], n // 2))
    num = rng.binomial(40, 0.1, size=(n, m)).astype(np.float64)
    _, p = cluster_permutation_pvalue(num, np.full(n, 40.0), groups, n_perm=19, n_perm_max=399, seed=2)
    assert np.isfinite(p).all() and p.min() >= 1 / 400
    assert (p <= 0.05).mean() <= 0.08  # 800 tests: expect ~5% (sd ~0.8%)
