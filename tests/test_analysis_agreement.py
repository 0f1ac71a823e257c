"""Tests for agreement between expert-relevance scorers (docs/methods.md §2, last bullet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from synthetic import save_run, skeleton

from workbench.analysis.agreement import AGREEMENT_COLUMNS, scorer_agreement
from workbench.analysis.rank import fisher_interval
from workbench.store import Store

pytestmark = pytest.mark.unit

E, K = 8, 2
LABELS = ("code", "math", "prose")
LAYERS = (0, 1)
PLANT = {"code": 5, "math": 2, "prose": 7}


def _write_run(path: Path, *, with_logits: bool, seed: int = 3) -> str:
    rng = np.random.default_rng(seed)
    labels = [lab for lab in LABELS for _ in range(12)]
    sk = skeleton(labels, rng.integers(8, 16, size=len(labels)), LAYERS)
    lab = np.asarray(labels)[sk.pid]
    experts = np.argsort(rng.random((sk.n_rows, E)), axis=1)[:, :K].astype(np.int16)
    for name, e in PLANT.items():
        hit = (lab == name) & (rng.random(sk.n_rows) < 0.8)
        top1 = np.full(int(hit.sum()), e)
        experts[hit, 0] = top1
        experts[hit, 1] = (top1 + 1 + rng.integers(0, E - 1, size=top1.size)) % E
    weights = np.tile(np.array([0.7, 0.3], np.float32), (sk.n_rows, 1))
    logits = rng.normal(0, 1.0, size=(sk.n_rows, E)).astype(np.float32)
    logits[np.arange(sk.n_rows), experts[:, 0]] += 3.0
    return save_run(
        path, sk, experts=experts, weights=weights, n_experts=E, top_k=K,
        run_id=f"run-{int(with_logits)}", logits=logits if with_logits else None,
    )  # fmt: skip


def test_agreement_with_logits(tmp_path: Path) -> None:
    path = tmp_path / "run.duckdb"
    run = _write_run(path, with_logits=True)
    with Store(path, read_only=True) as st:
        df = scorer_agreement(st, run)
    assert df.columns == list(AGREEMENT_COLUMNS)
    assert df.columns[:6] == ["label", "scorer_a", "scorer_b", "spearman", "n", "note"]
    # every ρ carries its Fisher CI and a permutation p with the +1 (issue 12 item 7)
    for row in df.iter_rows(named=True):
        assert row["ci_low"] <= row["spearman"] <= row["ci_high"]
        assert row["p_floor"] == pytest.approx(1 / 1000) and row["p_floor"] <= row["p"] <= 1.0
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(fisher_interval(row["spearman"], row["n"]))
    assert sorted(set(df["label"].to_list())) == list(LABELS)
    assert df.height == len(LABELS) * 6  # 4 scorers -> 6 pairs
    assert (df["n"] == len(LAYERS) * E).all()
    assert df["note"].null_count() == df.height
    lt = df.filter((pl.col("scorer_a") == "lift") & (pl.col("scorer_b") == "tsr"))
    assert lt.height == len(LABELS)
    assert (lt["spearman"] >= 0.9).all()
    # TCESS follows the planted top-1 expert, so it agrees positively with selection.
    tc = df.filter((pl.col("scorer_a") == "tsr") & (pl.col("scorer_b") == "tcess"))
    assert (tc["spearman"] > 0.3).all()


def test_agreement_without_logits_skips_tcess(tmp_path: Path) -> None:
    path = tmp_path / "nologits.duckdb"
    run = _write_run(path, with_logits=False)
    with Store(path, read_only=True) as st:
        df = scorer_agreement(st, run, layers=[1], n_boot=2, n_perm=2)
    assert df.height == len(LABELS) * 3  # lift, gs, tsr -> 3 pairs
    assert "tcess" not in set(df["scorer_a"].to_list()) | set(df["scorer_b"].to_list())
    assert (df["n"] == E).all()
    assert df["note"].str.contains("tcess skipped").all()
    lt = df.filter((pl.col("scorer_a") == "lift") & (pl.col("scorer_b") == "tsr"))
    assert (lt["spearman"] >= 0.9).all()


def test_agreement_finding_quotes_the_interval_and_p(tmp_path: Path) -> None:
    """The report's agreement sentence carries the least-agreeing pair's CI and permutation p (issue 12 item 7)."""
    from workbench.catalog.findings_structure import agreement
    from workbench.wording import Context

    path = tmp_path / "run.duckdb"
    run = _write_run(path, with_logits=True)
    with Store(path, read_only=True) as st:
        df = scorer_agreement(st, run)
    ctx = Context(n_experts=E, top_k=K, labels=tuple(LABELS))
    sentences = agreement(df, ctx)
    label = sorted(LABELS)[0]
    low = df.filter(pl.col("label") == label).sort("spearman").row(0, named=True)
    said = next(s for s in sentences if f"ρ = {low['spearman']:.2f}" in s)
    assert f"95% CI {low['ci_low']:.2f} to {low['ci_high']:.2f}, permutation p = {low['p']:.3g}" in said
    bare = agreement(df.select("label", "scorer_a", "scorer_b", "spearman", "n", "note"), ctx)
    assert not any("95% CI" in s for s in bare)  # an older frame without the columns: no invented interval
