"""The resampling draws of 2026-12-08 (issue 14 item 7): cheaper draws, shared across layers, same answers.

`cluster_bootstrap` now draws prompt indices (``rng.integers`` + ``bincount``) instead of a multinomial,
and `load` / `specialisation` draw one set of bootstrap weights and label shuffles for every layer
that has the same prompts (docs/methods.md, "Prompt-cluster bootstrap CI" and `specialisation`). The
random stream changed, so the intervals and p-values are new Monte Carlo draws of the same
quantities. These tests check that they agree with the previous procedure (a multinomial bootstrap
and separately seeded shuffles per layer, re-implemented here) within Monte Carlo error on planted
data, that float32 products give the same bits as float64 ones, and that layers whose prompts differ
still get their own draws.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from synthetic import Skeleton, plant_first, save_run, skeleton, uniform_topk
from test_analysis_specialisation import LABELS, PLANT_EXPERT, PLANT_LAYER, TRUE_SHARE, _write_run

from workbench.analysis import cluster_bootstrap, cluster_permutation_pvalue, domain_specialisation, stats
from workbench.analysis.health import expert_load
from workbench.store import Store, queries

pytestmark = pytest.mark.unit


def _old_bootstrap(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The previous `cluster_bootstrap`: multinomial draw counts, percentile interval."""
    rng = np.random.default_rng(seed)
    n = num.shape[0]
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    reps = (w @ num) / (w @ den)[:, None]
    low, high = np.quantile(reps, [0.025, 0.975], axis=0)
    return low, high


def test_bootstrap_weights_are_multinomial_draw_counts() -> None:
    n, size = 50, 20_000
    w = stats.bootstrap_weights(np.random.default_rng(0), n, size)
    assert w.shape == (size, n) and w.dtype == np.float64
    assert np.all(w.sum(axis=1) == n)  # every replicate draws n prompts
    assert np.all(w == np.round(w)) and w.min() >= 0
    # multinomial(n, 1/n): mean 1, variance 1 − 1/n, covariance −1/n; 20,000 replicates pin these
    # to about ±0.02.
    assert abs(w.mean() - 1.0) < 1e-12  # rows sum to n exactly
    assert abs(w.var(axis=0).mean() - (1 - 1 / n)) < 0.02
    cov = np.cov(w[:, :2], rowvar=False)[0, 1]
    assert abs(cov + 1 / n) < 0.02
    # Blocks of one stream give the same weights as one draw.
    rng = np.random.default_rng(3)
    blocks = np.vstack([stats.bootstrap_weights(rng, n, 7), stats.bootstrap_weights(rng, n, 5)])
    assert np.array_equal(blocks, stats.bootstrap_weights(np.random.default_rng(3), n, 12))


def test_new_bootstrap_interval_matches_the_multinomial_one_within_monte_carlo_error() -> None:
    rng = np.random.default_rng(11)
    n = 300
    den = rng.integers(20, 80, size=n).astype(np.float64)
    num = np.stack([rng.binomial(den.astype(np.int64), p) for p in (0.05, 0.3, 0.6)], axis=1).astype(
        np.float64
    )
    est, low, high = cluster_bootstrap(num, den, n_boot=4000, seed=5)
    old_low, old_high = _old_bootstrap(num, den, 4000, 5)
    width = old_high - old_low
    # Percentile endpoints from 4000 replicates wander by a few % of the width between streams.
    assert np.all(np.abs(low - old_low) < 0.1 * width)
    assert np.all(np.abs(high - old_high) < 0.1 * width)
    assert np.all((low < est) & (est < high))


def test_float32_products_give_the_float64_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    n = 400
    den = rng.integers(10, 60, size=n).astype(np.float64)
    num = rng.integers(0, 10, size=(n, 12)).astype(np.float64)
    groups = rng.integers(0, 4, size=n)
    assert stats.fits_float32(np.hstack([num, den[:, None]]), n, n)  # the fast path is taken
    fast = (cluster_bootstrap(num, den, n_boot=300, seed=1),
            cluster_permutation_pvalue(num, den, groups, n_perm=300, seed=1, n_perm_max=900))  # fmt: skip
    monkeypatch.setattr(stats, "fits_float32", lambda *a, **k: False)
    slow = (cluster_bootstrap(num, den, n_boot=300, seed=1),
            cluster_permutation_pvalue(num, den, groups, n_perm=300, seed=1, n_perm_max=900))  # fmt: skip
    for a, b in zip(fast, slow, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y, equal_nan=True)


def test_float32_is_refused_where_sums_could_pass_2_to_the_24() -> None:
    x = np.full((100, 2), 200_000.0)  # column total 2e7 > 2**24
    assert not stats.fits_float32(x, 1.0, 100.0)
    assert stats.fits_float32(x[:50], 1.0, 50.0)  # 1e7 < 2**24


def test_shared_shuffles_agree_with_per_layer_shuffles_within_monte_carlo_error(tmp_path: Path) -> None:
    """specialisation's p (one set of shuffles for both layers) against the previous per-layer streams."""
    path = tmp_path / "planted.duckdb"
    run = _write_run(path, planted=True, seed=4, n_per_label=30)
    n_perm = 2000
    with Store(path, read_only=True) as st:
        df = domain_specialisation(st, run, n_perm=n_perm, n_boot=2000, n_perm_max=None)
        by_layer = {layer: domain_specialisation(st, run, layers=[layer], n_perm=n_perm, n_boot=2000, n_perm_max=None)
                    for layer in (0, 1)}  # fmt: skip
    # A layer alone is its own group: its shuffles are those of the previous per-layer code.
    alone = pl.concat([by_layer[0], by_layer[1]]).sort("layer", "expert", "label")
    assert df["share"].equals(alone["share"]) and df["log_odds"].equals(alone["log_odds"])
    p_new, p_old = df["p"].to_numpy(), alone["p"].to_numpy()
    se = np.sqrt(np.maximum(p_old * (1 - p_old), 1.0 / n_perm) / n_perm)
    assert np.all(np.abs(p_new - p_old) <= 5 * np.sqrt(2) * se)
    lo_new, lo_old = df["ci_low"].to_numpy(), alone["ci_low"].to_numpy()
    width = (alone["ci_high"] - alone["ci_low"]).to_numpy()
    assert np.all(np.abs(lo_new - lo_old) <= 0.15 * width + 1e-12)
    # Both still find the plant and cover its true share.
    for table in (df, alone):
        top = table.filter((pl.col("layer") == PLANT_LAYER) & (pl.col("expert") == PLANT_EXPERT)
                           & (pl.col("label") == "code")).row(0, named=True)  # fmt: skip
        assert top["p"] <= 1.0 / (n_perm + 1) + 1e-12 and top["specialised"]
        assert top["ci_low"] <= TRUE_SHARE <= top["ci_high"]


def _ragged_run(path: Path) -> str:
    """Top-2 routing over E=8, uniform except a planted code → expert 5 at layer 1; layer 1 lacks each prompt's last token."""
    rng = np.random.default_rng(9)
    labels = [lab for lab in LABELS for _ in range(15)]
    sk = skeleton(labels, rng.integers(8, 16, size=len(labels)), (0, 1))
    # Rows are token-major, then layer: a prompt's last row is its last token at layer 1.
    keep = np.ones(sk.n_rows, bool)
    keep[np.r_[np.flatnonzero(np.diff(sk.pid)), sk.n_rows - 1]] = False
    ragged = Skeleton(sk.labels, sk.layers, sk.prompts, sk.tokens, sk.pid[keep], sk.pos[keep], sk.lay[keep])
    experts = uniform_topk(rng, ragged.n_rows, 8, 2)
    code_rows = np.flatnonzero((np.asarray(labels)[ragged.pid] == "code") & (ragged.lay == PLANT_LAYER))
    experts = plant_first(rng, experts, code_rows, PLANT_EXPERT, 0.9)
    weights = np.tile(np.array([0.6, 0.4], np.float32), (ragged.n_rows, 1))
    return save_run(path, ragged, experts=experts, weights=weights, n_experts=8, top_k=2, run_id="ragged")


def test_layers_with_other_prompts_get_their_own_draws_and_the_floor_refinement(tmp_path: Path) -> None:
    path = tmp_path / "ragged.duckdb"
    run = _ragged_run(path)
    n_perm = 300
    with Store(path, read_only=True) as st:
        df = domain_specialisation(st, run, n_perm=n_perm, n_boot=300)
        load = expert_load(st, run, n_boot=300)
        tokens = queries.tokens_per_layer(st, run, [0, 1]).sort("layer")["n"].to_list()
    assert tokens[0] - tokens[1] == 45  # layer 1 has one token fewer per prompt: two draw groups
    for layer in (0, 1):  # each layer's p and CIs exist and hold their estimate
        part = df.filter(pl.col("layer") == layer)
        assert part["p"].is_between(0.0, 1.0, closed="right").all()
        assert (part["ci_low"] <= part["share"]).all() and (part["share"] <= part["ci_high"]).all()
        lpart = load.filter(pl.col("layer") == layer)
        assert (lpart["ci_low"] <= lpart["f"]).all() and (lpart["f"] <= lpart["ci_high"]).all()
    # The plant sits in its own group; the refinement (sized over the whole map) still takes its p
    # below the first stage's floor 1/(n_perm + 1), and it is the one specialised cell.
    found = df.filter(pl.col("specialised")).select("layer", "expert", "label").rows()
    assert found == [(PLANT_LAYER, PLANT_EXPERT, "code")]
    plant = df.filter(pl.col("specialised")).row(0, named=True)
    assert plant["p"] < 1.0 / (n_perm + 1)
    assert df.filter(~pl.col("specialised"))["p"].min() >= 1.0 / (n_perm + 1)  # type: ignore[operator]
