"""Tests for agreement between expert-relevance scorers (docs/methods.md §2, last bullet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from synthetic import save_run, skeleton

from workbench.analysis.agreement import scorer_agreement
from workbench.store import Store

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
    assert df.columns == ["label", "scorer_a", "scorer_b", "spearman", "n", "note"]
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
