"""Degenerate numbers are not findings (issue 12 item 6; docs/methods.md failure modes).

Each sentence or view that could state a degenerate number is built on the degenerate case (it
must not say it, and must say why) and on a case where the finding is real (it still does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from synthetic import save_run, skeleton

from dashboards.views.lab_result import effects_figure
from workbench.analysis.specialisation import domain_specialisation
from workbench.analysis.stats import MIN_CI_PROMPTS, cluster_bootstrap
from workbench.catalog.findings_structure import dynamic_k, expert_similarity
from workbench.catalog.findings_usage import underfitting
from workbench.interventions.expert_similarity import MERGE_MIN_ANGULAR, SIMILARITY_COLUMNS
from workbench.interventions.expert_weights import MERGE_MIN_COSINE, merge_candidates
from workbench.store import Store
from workbench.wording import Context, correlation_words

pytestmark = pytest.mark.unit

CTX = Context(n_experts=8, top_k=2, labels=("a", "b", "c"))


# -- intervals need at least two prompts --------------------------------------------------------


def test_one_prompt_gives_no_interval() -> None:
    assert MIN_CI_PROMPTS == 2
    est, lo, hi = cluster_bootstrap(np.array([[3.0, 1.0]]), np.array([10.0]), n_boot=200)
    assert est.tolist() == [0.3, 0.1] and np.isnan(lo).all() and np.isnan(hi).all()
    est, lo, hi = cluster_bootstrap(np.array([3.0, 5.0]), np.array([10.0, 10.0]), n_boot=200)
    assert lo[0] < est[0] < hi[0]  # two prompts: an interval again


def test_a_one_prompt_label_gets_no_share_interval(tmp_path: Path) -> None:
    labels = ["a"] * 6 + ["b"]  # b has one prompt
    sk = skeleton(labels, np.full(len(labels), 12), (0,))
    rng = np.random.default_rng(0)
    experts = np.stack([rng.permutation(4)[:2] for _ in range(sk.n_rows)]).astype(np.int16)
    weights = np.tile(np.array([0.6, 0.4], np.float32), (sk.n_rows, 1))
    run = save_run(
        tmp_path / "one.duckdb", sk, experts=experts, weights=weights, n_experts=4, top_k=2, run_id="one"
    )
    with Store(tmp_path / "one.duckdb", read_only=True) as st:
        df = domain_specialisation(st, run, n_boot=100, n_perm=99)
    b, a = df.filter(pl.col("label") == "b"), df.filter(pl.col("label") == "a")
    assert b["ci_low"].is_nan().all() and b["ci_high"].is_nan().all() and b["lo_low"].is_nan().all()
    assert a["ci_low"].is_not_nan().all() and (a["ci_low"] <= a["share"]).all()


def test_lab_figure_draws_no_bar_for_one_prompt() -> None:
    summary = pl.DataFrame({
        "label": ["one", "many"], "metric": ["nll_delta"] * 2, "value": [0.5, 0.2],
        "ci_low": [0.5, 0.1], "ci_high": [0.5, 0.3], "n": [1, 12],
    })  # fmt: skip
    bar = effects_figure(summary).data[0]
    one, many = bar.x.index("one"), bar.x.index("many")
    assert np.isnan(bar.error_y.array[one]) and np.isnan(bar.error_y.arrayminus[one])
    assert bar.error_y.array[many] == pytest.approx(0.1)


# -- merge candidates must be similar -------------------------------------------------------------


def _similarity(angular: dict[tuple[int, int], float], ci: float = 0.02) -> pl.DataFrame:
    rows = []
    for (a, b), ang in angular.items():
        rows.append({
            "layer": 0, "expert_a": a, "expert_b": b, "shared": False, "weight_cos": 0.01,
            "output_cos": float(np.cos(np.pi * (1 - ang))), "output_angular": ang,
            "ci_low": ang - ci, "ci_high": ang + ci, "n_tokens": 400, "n_prompts": 20,
        })  # fmt: skip
    df = pl.DataFrame(rows).with_columns(
        pl.col("output_angular").rank("ordinal", descending=True).cast(pl.Int32).alias("merge_rank"),
        (pl.col("ci_low") >= MERGE_MIN_ANGULAR).alias("merge_candidate"),
    )
    return df.select(list(SIMILARITY_COLUMNS))


def test_near_orthogonal_experts_are_not_merge_candidates() -> None:
    df = _similarity({(0, 1): 0.53, (0, 2): 0.50, (1, 2): 0.48})
    text = " ".join(expert_similarity(df, CTX))
    assert "Merge candidate at" not in text
    assert "No merge candidate" in text and f"above {MERGE_MIN_ANGULAR:g}" in text and "0.530" in text


def test_similar_experts_are_merge_candidates() -> None:
    df = _similarity({(0, 1): 0.93, (0, 2): 0.50, (1, 2): 0.52})
    out = expert_similarity(df, CTX)
    assert out[0].startswith("1 routed pair qualifies as merge candidate (the whole 95% CI")
    assert any(s.startswith("Merge candidate at layer 0: experts 0 and 1") for s in out)
    assert not any("experts 1 and 2" in s for s in out)


def test_merge_candidates_without_a_ci_say_not_enough_data() -> None:
    df = _similarity({(0, 1): 0.93, (0, 2): 0.50}).with_columns(
        pl.lit(float("nan")).alias("ci_low"),
        pl.lit(float("nan")).alias("ci_high"),
        pl.lit(False).alias("merge_candidate"),
    )
    text = " ".join(expert_similarity(df, CTX))
    assert "not enough data to tell" in text and "Merge candidate at" not in text


def test_weight_merge_candidates_need_the_threshold() -> None:
    cos = {(0, 1): 0.05, (0, 2): -0.02, (1, 2): 0.08, (2, 3): 0.97}
    sim = pl.DataFrame(
        [{"a": a, "b": b, "cosine": c} for (a, b), c in cos.items()],
        schema={"a": pl.Int32, "b": pl.Int32, "cosine": pl.Float64},
    )
    assert merge_candidates(sim, top=3).rows() == [(2, 3, 0.97)]
    assert merge_candidates(sim.filter(pl.col("cosine") < MERGE_MIN_COSINE)).height == 0


# -- dynamic-k: words follow sign, size and CI ---------------------------------------------------


def _dynamic(rho: float, **extra: float) -> pl.DataFrame:
    row = {"layer": 1, "label": "code", "p": 0.5, "mean_k": 2.0, "k_counts": [0, 4, 0], "n_tokens": 400,
           "spearman_nll": rho, "n_nll": 400, **extra}  # fmt: skip
    return pl.DataFrame([row])


def test_modest_negative_rho_is_not_tracking() -> None:
    text = " ".join(dynamic_k(_dynamic(-0.37), CTX))
    assert "tracks" not in text and "weakly anti-correlated" in text
    assert "fewer experts" in text and "ρ(k, NLL) = -0.37" in text and "no CI" in text


def test_rho_whose_ci_includes_zero_makes_no_claim() -> None:
    text = " ".join(dynamic_k(_dynamic(0.45, spearman_ci_low=-0.05, spearman_ci_high=0.8), CTX))
    assert "no detectable correlation" in text and "no claim" in text and "more experts" not in text


def test_strong_positive_rho_with_its_ci_is_stated() -> None:
    row = _dynamic(0.82, spearman_ci_low=0.7, spearman_ci_high=0.9, spearman_p=0.0004, n_prompts_nll=30)
    text = " ".join(dynamic_k(row, CTX))
    assert "strongly correlated" in text and "harder tokens use more experts" in text
    assert (
        "95% CI +0.70 to +0.90, p = 0.0004; 30 prompts, 400 tokens" in text and "descriptive only" not in text
    )


def test_correlation_words() -> None:
    assert correlation_words(0.05) == "essentially uncorrelated"
    assert correlation_words(-0.37) == "weakly anti-correlated"
    assert correlation_words(0.55) == "moderately correlated"
    assert correlation_words(-0.9, -0.95, -0.8) == "strongly anti-correlated"
    assert correlation_words(float("nan")) == "not measurable"


# -- underfitting: the sentence says what the flag requires --------------------------------------


def _underfit(mass: list[float], lo: list[float], hi: list[float], flags: list[bool]) -> pl.DataFrame:
    return pl.DataFrame({
        "label": ["a", "b", "c", "d"][: len(mass)], "shared_norm_share": [float("nan")] * len(mass),
        "specialist_gate_mass": mass, "ci_low": lo, "ci_high": hi, "generalist_gate_mass": [1 - m for m in mass],
        "n_tokens": [100] * len(mass), "underfit": flags,
    })  # fmt: skip


def test_underfit_sentence_states_the_interval_rule() -> None:
    df = _underfit([0.6, 0.55, 0.5, 0.1], [0.5, 0.45, 0.4, 0.05], [0.7, 0.65, 0.6, 0.2], [False] * 3 + [True])
    out = underfitting(df, CTX)
    assert out[0].startswith("Label d may be underfit") and "95% CI 5–20%" in out[0]
    assert "whole interval below the median" in out[0]
    assert not any("may be underfit" in s for s in out[1:])  # below the median alone is not flagged


def test_no_underfit_label_on_overlapping_intervals() -> None:
    df = _underfit([0.6, 0.55, 0.5, 0.45], [0.3, 0.3, 0.3, 0.3], [0.8, 0.8, 0.8, 0.8], [False] * 4)
    out = underfitting(df, CTX)
    assert out[0].startswith("No label is flagged as underfit") and "may be underfit" not in " ".join(out)


def test_underfit_without_intervals_says_not_enough_data() -> None:
    nan = [float("nan")] * 4
    out = underfitting(_underfit([0.6, 0.55, 0.5, 0.1], nan, nan, [False] * 4), CTX)
    assert out[0].startswith("Not enough data to flag underfit labels")


def test_contrast_with_one_target_prompt_gives_no_interval() -> None:
    from workbench.analysis.contrast import contrast_test

    num, den = np.array([5.0, 1.0, 2.0, 1.5, 1.0]), np.full(5, 10.0)
    one = contrast_test(num, den, np.array([True, False, False, False, False]), n_boot=200, n_perm=99)
    assert np.isfinite(one.diff).all() and np.isnan(one.low).all() and np.isnan(one.high).all()
    two = contrast_test(num, den, np.array([True, True, False, False, False]), n_boot=200, n_perm=99)
    assert (two.low <= two.diff).all() and (two.diff <= two.high).all()
