"""Correlational resonance maps (docs/methods.md §5): planted behaviour expert, null run, drill-down, spans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from synthetic import save_run, skeleton

from workbench.analysis.contrast import contrast_test
from workbench.analysis.resonance import TokenSpan, resonance_map, resonance_tokens
from workbench.store import Store

pytestmark = pytest.mark.unit

E, K = 8, 2
PLANT = (1, 3)  # (layer, expert) that fires on target prompts at the first 3 positions
N_PAIRS = 30


def _contrast_run(path: Path, *, planted: bool, seed: int) -> str:
    rng = np.random.default_rng(seed)
    labels = [lab for _ in range(N_PAIRS) for lab in ("harmful", "benign")]
    sk = skeleton(labels, rng.integers(6, 12, size=len(labels)), (0, 1))
    # pair the prompts: 0-1, 2-3, ...
    pair_ids = [f"pair-{i // 2}" for i in range(len(labels))]
    sk.prompts = sk.prompts.set_column(3, "pair_id", pa.array(pair_ids))
    experts = np.argsort(rng.random((sk.n_rows, E)), axis=1)[:, :K].astype(np.int16)
    if planted:
        target = np.asarray(labels)[sk.pid] == "harmful"
        hit = target & (sk.lay == PLANT[0]) & (sk.pos < 3)
        experts[hit, 0] = PLANT[1]
        experts[hit & (experts[:, 1] == PLANT[1]), 1] = (PLANT[1] + 1) % E
    weights = rng.dirichlet([2.0, 2.0], size=sk.n_rows).astype(np.float32)
    weights.sort(axis=1)
    weights = weights[:, ::-1].copy()
    return save_run(path, sk, experts=experts, weights=weights, n_experts=E, top_k=K, run_id=f"c{seed}")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("res") / "planted.duckdb"
    return path, _contrast_run(path, planted=True, seed=3)


def test_planted_behaviour_expert_ranks_first(planted: tuple[Path, str]) -> None:
    path, run = planted
    with Store(path, read_only=True) as st:
        rd = resonance_map(st, run, target="harmful", control="benign", n_perm=1999)
        ftri = resonance_map(st, run, target="harmful", control="benign", method="ftri", n_perm=999)
    assert rd.height == 2 * E
    top = rd.sort("rd", descending=True).row(0, named=True)
    assert (top["layer"], top["expert"]) == PLANT
    assert top["q"] < 0.01 and top["ci_low"] > 0.1
    assert top["n_target"] == N_PAIRS and top["n_control"] == N_PAIRS
    assert ftri.sort("ftri", descending=True).select("layer", "expert").row(0) == PLANT
    assert ftri["method"].unique().to_list() == ["ftri"]
    # Everything else stays quiet.
    others = rd.filter(~((pl.col("layer") == PLANT[0]) & (pl.col("expert") == PLANT[1])))
    # the plant displaces other experts at layer 1 (they lose slots), so only check layer 0
    assert others.filter(pl.col("layer") == 0)["q"].min() > 0.05


def test_scores_match_an_independent_computation(planted: tuple[Path, str]) -> None:
    path, run = planted
    with Store(path, read_only=True) as st:
        res = resonance_map(st, run, target="harmful", control="benign", n_boot=0, n_perm=0)
        routing = st.routing(run)
        prompts = st.prompts(run)
    df = routing.join(prompts.select("prompt_id", "label"), on="prompt_id")
    for layer, expert in ((1, 3), (0, 5), (1, 0)):
        sub = df.filter(pl.col("layer") == layer)
        sel = sub["experts"].to_list()
        hit = np.array([expert in s for s in sel])
        lab = sub["label"].to_numpy()
        rd = hit[lab == "harmful"].mean() - hit[lab == "benign"].mean()
        gate = np.array(
            [
                dict(zip(e, w, strict=True)).get(expert, 0.0)
                for e, w in zip(sel, sub["weights"].to_list(), strict=True)
            ]
        )
        per_prompt = (  # fTRI is a per-token rate: each prompt's mean gate weight, then class means
            pl.DataFrame({"pid": sub["prompt_id"], "g": gate, "label": lab})
            .group_by("pid", "label")
            .agg(pl.col("g").mean())
        )
        ftri = (
            per_prompt.filter(pl.col("label") == "harmful")["g"].mean()
            - per_prompt.filter(pl.col("label") == "benign")["g"].mean()
        )
        row = res.filter((pl.col("layer") == layer) & (pl.col("expert") == expert)).row(0, named=True)
        assert row["rd"] == pytest.approx(rd, abs=1e-12)
        assert row["ftri"] == pytest.approx(ftri, rel=1e-5)


def test_null_run_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "null.duckdb"
    run = _contrast_run(path, planted=False, seed=11)
    with Store(path, read_only=True) as st:
        res = resonance_map(st, run, target="harmful", control="benign", n_perm=499)
    assert (res["q"] > 0.05).mean() >= 0.95


def test_drill_down_names_the_driving_tokens(planted: tuple[Path, str]) -> None:
    path, run = planted
    with Store(path, read_only=True) as st:
        tokens = resonance_tokens(st, run, layer=1, expert=3, target="harmful", control="benign", top=5)
    assert set(tokens["token"].head(3).to_list()) == {"t0", "t1", "t2"}
    assert tokens["rate_target"].head(3).min() == 1.0


def test_span_restricts_the_tokens(planted: tuple[Path, str]) -> None:
    path, run = planted
    with Store(path, read_only=True) as st:
        first = resonance_map(st, run, target="harmful", control="benign", span="first:3", n_perm=199)
        late = resonance_map(st, run, target="harmful", control="benign", span="positions:4-20", n_perm=199)
        last = resonance_map(st, run, target="harmful", control="benign", span="last:2", n_perm=0, n_boot=0)
    plant = (pl.col("layer") == PLANT[0]) & (pl.col("expert") == PLANT[1])
    assert first.filter(plant)["rate_target"].item() == 1.0
    assert late.filter(plant)["q"].item() > 0.05  # the plant lives in positions 0-2 only
    assert last.height == 2 * E
    with pytest.raises(ValueError, match="last:N"):
        TokenSpan.parse("tail")


def test_bad_contrast_sets_name_the_labels(planted: tuple[Path, str]) -> None:
    path, run = planted
    with Store(path, read_only=True) as st:
        with pytest.raises(ValueError, match=r"\['refusal'\].*benign"):
            resonance_map(st, run, target="refusal", control="benign")
        with pytest.raises(ValueError, match="same label"):
            resonance_map(st, run, target="benign", control="benign")
        with pytest.raises(ValueError, match="causal"):
            resonance_map(st, run, target="harmful", control="benign", method="causal")


def test_contrast_test_ci_covers_the_truth() -> None:
    """Simulation: per-prompt Binomial counts with prompt-level noise; the 95% CI covers the true RD."""
    rng = np.random.default_rng(0)
    true_t, true_c, covered, reps = 0.4, 0.3, 0, 200
    for _ in range(reps):
        n = rng.integers(5, 30, size=60)
        is_t = np.arange(60) < 30
        p = np.clip(np.where(is_t, true_t, true_c) + rng.normal(0, 0.05, 60), 0, 1)
        hits = rng.binomial(n, p).astype(float)
        res = contrast_test(
            hits[:, None], n.astype(float), is_t, n_boot=400, n_perm=0, seed=int(rng.integers(1 << 30))
        )
        covered += res.low[0] <= true_t - true_c <= res.high[0]
    assert covered / reps >= 0.90


def test_paired_permutation_keeps_pairs() -> None:
    """A paired design where pairs differ in baseline: the paired test finds the within-pair shift."""
    rng = np.random.default_rng(1)
    base = rng.uniform(0.1, 0.8, size=20)
    rates = np.stack([base + 0.08, base], axis=1).ravel()  # target, control alternating
    n = np.full(40, 200.0)
    hits = rng.binomial(200, rates).astype(float)
    is_t = np.arange(40) % 2 == 0
    pairs = np.arange(40).reshape(20, 2)
    paired = contrast_test(hits[:, None], n, is_t, pairs=pairs, n_boot=200, n_perm=999, seed=0)
    unpaired = contrast_test(hits[:, None], n, is_t, n_boot=200, n_perm=999, seed=0)
    assert paired.diff[0] == pytest.approx(unpaired.diff[0])
    assert paired.p[0] < 0.01 < unpaired.p[0]


def test_resonate_cli_writes_and_stores_the_map(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app

    path = tmp_path / "cli.duckdb"
    run = _contrast_run(path, planted=True, seed=5)
    out = tmp_path / "map.csv"
    args = ["resonate", "--db", str(path), "--run", run, "--target", "harmful", "--control", "benign"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--drill", "1:3"])
    assert result.exit_code == 0, result.output
    written = pl.read_csv(out)
    assert written.columns[:8] == ["layer", "expert", "rd", "ftri", "method", "ci_low", "ci_high", "p"]
    assert written.sort("rd", descending=True).select("layer", "expert").row(0) == PLANT
    assert "t0" in result.output  # the drill-down table
    with Store(path, read_only=True) as st:
        stored = st.resonance(run_id=run)
    assert stored.height == 2 * E and set(stored["target"]) == {"harmful"}
    bad = CliRunner().invoke(app, [*args[:-1], "refusal"])
    assert bad.exit_code == 2 and "labels are" in bad.output


def test_registered_analysis_finds_the_contrast_set(planted: tuple[Path, str]) -> None:
    from workbench.analysis.resonance import default_contrast
    from workbench.catalog import run_analysis

    path, run = planted
    with Store(path, read_only=True) as st:
        assert default_contrast(st, run) == ("harmful", "benign")  # the first member of each pair
        res = run_analysis("resonance", st, run, n_perm=99, n_boot=99)
        flipped = run_analysis("resonance", st, run, target="benign", n_perm=0, n_boot=0)
    assert res.sort("rd", descending=True).select("layer", "expert").row(0) == PLANT
    assert np.allclose(flipped["rd"].to_numpy(), -res["rd"].to_numpy())


def test_unpaired_run_needs_explicit_labels(tmp_path: Path) -> None:
    from workbench.analysis.resonance import resonance

    rng = np.random.default_rng(0)
    sk = skeleton(["a", "b", "c"] * 4, rng.integers(4, 8, size=12), (0,))
    experts = np.argsort(rng.random((sk.n_rows, E)), axis=1)[:, :K].astype(np.int16)
    weights = np.full((sk.n_rows, K), 0.5, np.float32)
    run = save_run(
        tmp_path / "u.duckdb", sk, experts=experts, weights=weights, n_experts=E, top_k=K, run_id="u"
    )
    with Store(tmp_path / "u.duckdb", read_only=True) as st:
        with pytest.raises(ValueError, match=r"give target= and control=.*\['a', 'b', 'c'\]"):
            resonance(st, run)
        assert resonance(st, run, target="a", control="c", n_perm=0, n_boot=0).height == E
