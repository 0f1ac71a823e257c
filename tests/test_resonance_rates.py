"""fTRI is a per-token rate (issue 12, item 4), and both resonance scores survive unbalanced classes.

Planted cases are asymmetric and unbalanced on purpose (different class sizes, different prompt
lengths), so that a score that counts instead of comparing rates, or normalises by the wrong
class, gives a different answer from the one asserted here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from synthetic import save_run, skeleton

from workbench.analysis.resonance import resonance_map
from workbench.store import Store

pytestmark = pytest.mark.unit

E, K = 8, 2
#: A skewed per-token routing distribution shared by both classes (expert 0 popular, 7 rare).
PROBS = np.array([0.26, 0.18, 0.14, 0.12, 0.10, 0.08, 0.07, 0.05])


def _routes(rng: np.random.Generator, logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-K experts per row drawn without replacement from ``exp(logp)`` (Gumbel top-k) and their weights."""
    keys = logp + rng.gumbel(size=logp.shape)
    experts = np.argsort(-keys, axis=1)[:, :K].astype(np.int16)
    weights = np.sort(rng.dirichlet([2.0] * K, size=logp.shape[0]), axis=1)[:, ::-1].astype(np.float32)
    return experts, weights.copy()


def _run(
    path: Path, *, n_target: int, n_control: int, len_target: tuple[int, int], len_control: tuple[int, int],
    plant: tuple[int, float] | None, seed: int,
) -> str:  # fmt: skip
    """An unpaired contrast run on layers (0, 1); ``plant`` = (expert, log-odds boost on target tokens of layer 1)."""
    rng = np.random.default_rng(seed)
    labels = ["harmful"] * n_target + ["benign"] * n_control
    lengths = np.concatenate(
        [rng.integers(*len_target, size=n_target), rng.integers(*len_control, size=n_control)]
    )
    order = rng.permutation(len(labels))  # interleave the classes in prompt-id order
    sk = skeleton([labels[i] for i in order], lengths[order], (0, 1))
    logp = np.tile(np.log(PROBS), (sk.n_rows, 1))
    if plant is not None:
        expert, boost = plant
        target = np.asarray(sk.labels)[sk.pid] == "harmful"
        logp[target & (sk.lay == 1), expert] += boost
    experts, weights = _routes(rng, logp)
    return save_run(path, sk, experts=experts, weights=weights, n_experts=E, top_k=K, run_id=f"r{seed}")


def _per_prompt_rates(store: Store, run: str, layer: int, expert: int) -> pl.DataFrame:
    """Independent recomputation: per prompt, its mean gate weight on ``expert`` and its selection share."""
    df = store.routing(run).filter(pl.col("layer") == layer).join(store.prompts(run), on="prompt_id")
    gate = [
        dict(zip(e, w, strict=True)).get(expert, 0.0)
        for e, w in zip(df["experts"], df["weights"], strict=True)
    ]
    sel = [float(expert in e) for e in df["experts"]]
    return (
        df.select("prompt_id", "label")
        .with_columns(pl.Series("g", gate), pl.Series("s", sel))
        .group_by("prompt_id", "label")
        .agg(pl.col("g").mean(), pl.col("s").sum(), pl.len().alias("n"))
    )


def test_length_only_difference_gives_no_resonance(tmp_path: Path) -> None:
    """Target prompts 3× longer than control, same per-token routing: no cell resonates, Σ_e fTRI = 0.

    The old fTRI (summed gate weight per prompt) would give every expert a positive score, summing to
    the mean length difference (~19 tokens here), and most cells would be significant.
    """
    path = tmp_path / "len.duckdb"
    run = _run(path, n_target=30, n_control=18, len_target=(24, 36), len_control=(6, 12), plant=None, seed=4)
    with Store(path, read_only=True) as st:
        ftri = resonance_map(
            st, run, target="harmful", control="benign", method="ftri", n_perm=999, n_boot=200
        )
        rd = resonance_map(st, run, target="harmful", control="benign", method="rd", n_perm=999, n_boot=200)
    for layer in (0, 1):  # every token's gate weights sum to 1, so the rates' differences cancel
        assert ftri.filter(pl.col("layer") == layer)["ftri"].sum() == pytest.approx(0.0, abs=1e-6)
    assert ftri["ftri"].abs().max() < 0.06  # sampling noise; the summed-mass fTRI was > 0.5 per expert
    assert ftri["q"].min() > 0.05 and rd["q"].min() > 0.05
    assert (ftri["p"] < 0.01).sum() <= 1  # 16 tests: at most a stray small p
    # The CI of each cell covers 0 for nearly every cell (no systematic shift from length).
    covers = (ftri["ci_low"] <= 0) & (ftri["ci_high"] >= 0)
    assert covers.mean() >= 0.85


def test_planted_per_token_expert_is_found_despite_shorter_targets(tmp_path: Path) -> None:
    """Expert 6 is used more per token by target prompts, which are shorter and fewer than control.

    fTRI must rank it first and significant; a counting score (summed gate mass per prompt) would
    rank it below the control because control prompts are 3× longer.
    """
    path = tmp_path / "plant.duckdb"
    run = _run(
        path, n_target=36, n_control=20, len_target=(5, 9), len_control=(18, 27), plant=(6, 1.5), seed=7
    )
    with Store(path, read_only=True) as st:
        res = resonance_map(
            st, run, target="harmful", control="benign", method="ftri", n_perm=1999, n_boot=400
        )
        rates = _per_prompt_rates(st, run, 1, 6)
        n_tok = st.prompts(run).group_by("label").agg(pl.col("n_tokens").mean())
    top = res.sort("ftri", descending=True).row(0, named=True)
    assert (top["layer"], top["expert"]) == (1, 6)
    assert top["q"] < 0.01 and top["ci_low"] > 0
    assert res.filter(pl.col("layer") == 0)["q"].min() > 0.05
    assert (top["n_target"], top["n_control"]) == (36, 20)
    # The old counting definition points the other way on this run (shorter targets).
    summed = {lab: float((rates.filter(pl.col("label") == lab)["g"] * rates.filter(pl.col("label") == lab)["n"]).mean())
              for lab in ("harmful", "benign")}  # fmt: skip
    assert summed["harmful"] < summed["benign"]
    assert n_tok.filter(pl.col("label") == "harmful")["n_tokens"].item() < 10


def test_unbalanced_classes_use_each_class_own_normalisation(tmp_path: Path) -> None:
    """36 target vs 20 control prompts of different lengths: both scores match a by-hand formula.

    ``ftri`` = mean over target prompts of the per-token gate weight − the same over control;
    ``rd`` = pooled selection share of target tokens − that of control tokens. Normalising by all
    prompts, by the other class, or averaging rates where rd pools (or pooling where fTRI averages)
    gives a different number on this unbalanced run.
    """
    path = tmp_path / "unbal.duckdb"
    run = _run(
        path, n_target=36, n_control=20, len_target=(5, 9), len_control=(18, 27), plant=(6, 1.5), seed=7
    )
    with Store(path, read_only=True) as st:
        res = resonance_map(st, run, target="harmful", control="benign", n_perm=0, n_boot=0)
        rates = _per_prompt_rates(st, run, 1, 6)
    t, c = rates.filter(pl.col("label") == "harmful"), rates.filter(pl.col("label") == "benign")
    want_ftri = t["g"].mean() - c["g"].mean()  # type: ignore[operator]
    want_rd = t["s"].sum() / t["n"].sum() - c["s"].sum() / c["n"].sum()
    row = res.filter((pl.col("layer") == 1) & (pl.col("expert") == 6)).row(0, named=True)
    assert row["ftri"] == pytest.approx(want_ftri, rel=1e-6)
    assert row["rd"] == pytest.approx(want_rd, abs=1e-12)
    assert row["rate_target"] == pytest.approx(t["s"].sum() / t["n"].sum(), abs=1e-12)
    # The wrong normalisations really differ here (otherwise this test could not catch them).
    pooled_gate = float((t["g"] * t["n"]).sum() / t["n"].sum() - (c["g"] * c["n"]).sum() / c["n"].sum())
    everyone = float(rates["g"].sum() / rates.height)
    for wrong in (pooled_gate, t["g"].sum() / rates.height - c["g"].sum() / rates.height, everyone):
        assert abs(row["ftri"] - wrong) > 1e-3
    mean_of_rates = float((t["s"] / t["n"]).mean() - (c["s"] / c["n"]).mean())  # type: ignore[operator]
    assert abs(row["rd"] - mean_of_rates) > 1e-4


def test_a_prompt_repeated_three_times_resonates_exactly_zero(tmp_path: Path) -> None:
    """Each target prompt is its control twin's routing repeated 3×: same rates, 3× the tokens.

    Per-token rates are identical, so fTRI and rd are 0 to rounding in every cell and no cell is
    significant; a counting fTRI would be 2× the control's gate mass per prompt.
    """
    rng = np.random.default_rng(2)
    n_pairs, layers = 12, (0, 1)
    base_len = rng.integers(4, 9, size=n_pairs)
    labels = [lab for _ in range(n_pairs) for lab in ("harmful", "benign")]
    lengths = np.array([n for b in base_len for n in (3 * b, b)])
    sk = skeleton(labels, lengths, layers)
    experts = np.zeros((sk.n_rows, K), np.int16)
    weights = np.zeros((sk.n_rows, K), np.float32)
    for i in range(n_pairs):
        rows_c = np.flatnonzero(sk.pid == 2 * i + 1)
        rows_t = np.flatnonzero(sk.pid == 2 * i)
        e, w = _routes(rng, np.tile(np.log(PROBS), (rows_c.size, 1)))
        experts[rows_c], weights[rows_c] = e, w
        experts[rows_t], weights[rows_t] = np.tile(e, (3, 1)), np.tile(w, (3, 1))  # rows are (pos, layer)
    path = tmp_path / "rep.duckdb"
    run = save_run(path, sk, experts=experts, weights=weights, n_experts=E, top_k=K, run_id="rep")
    with Store(path, read_only=True) as st:
        res = resonance_map(
            st, run, target="harmful", control="benign", method="ftri", n_perm=199, n_boot=100
        )
    assert np.abs(res["ftri"].to_numpy()).max() < 1e-6
    assert np.abs(res["rd"].to_numpy()).max() < 1e-12
    assert res["q"].min() > 0.5


def test_report_sentence_for_ftri_speaks_of_tokens_not_prompts() -> None:
    """The report's fTRI sentence matches the rate definition (per token, not per prompt)."""
    from workbench.catalog import findings_for
    from workbench.wording import Context

    df = pl.DataFrame({
        "layer": [1, 0], "expert": [6, 2], "rd": [0.05, 0.0], "ftri": [0.031, -0.001], "method": ["ftri"] * 2,
        "ci_low": [0.012, -0.01], "ci_high": [0.05, 0.008], "p": [0.0005, 0.8], "q": [0.001, 0.8],
        "rate_target": [0.3, 0.25], "rate_control": [0.25, 0.25], "n_target": [36, 36], "n_control": [20, 20],
    })  # fmt: skip
    ctx = Context(n_experts=E, top_k=K, extra={"contrast": ("harmful", "benign")})
    text = " ".join(findings_for("resonance", df, ctx))
    assert "+0.031 more gate weight per token on harmful prompts than on benign prompts" in text
    assert "per harmful prompt" not in text and "expert 2 gets" not in text
