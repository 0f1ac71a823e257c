"""Task pruning: retention-curve table shape, keep = 1.0 is the baseline, and a planted known answer."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from planted import PLANT_EXPERT, PLANT_LAYER, gold_prompts, planted_model
from typer.testing import CliRunner

import workbench as wb
from workbench.cli import app
from workbench.data.suites import load_suite
from workbench.interventions.controls import parse_set
from workbench.interventions.pruning import (
    METHODS,
    MIN_BASELINE_CORRECT,
    SCHEMA,
    TaskMeasure,
    _row,
    expert_scores,
    keep_count,
    retention_curve,
    split_halves,
    summary_lines,
    top_keep,
)
from workbench.models.loading import LoadedModel

pytestmark = pytest.mark.integration

KEEPS = (0.25, 0.5, 1.0)
N_RANDOM = 2


@pytest.fixture(scope="module")
def tiny_ref() -> LoadedModel:
    return wb.load_model("tiny-ref")


@pytest.fixture(scope="module")
def table(tiny_ref: LoadedModel) -> pl.DataFrame:
    return retention_curve(
        tiny_ref, load_suite("tasks"), label="arithmetic", keep=KEEPS, n_random=N_RANDOM, n_select=6, n_eval=6
    )


def test_keep_count_never_below_top_k() -> None:
    assert keep_count(0.25, 8, 2) == 2 and keep_count(0.1, 8, 2) == 2
    assert keep_count(0.5, 8, 2) == 4 and keep_count(0.75, 60, 4) == 45 and keep_count(1.0, 8, 2) == 8
    with pytest.raises(ValueError):
        keep_count(0.0, 8, 2)


def test_halves_are_disjoint_and_one_label() -> None:
    select, evaluate = split_halves(load_suite("tasks"), "brackets", n_select=5, n_eval=7)
    assert len(select) == 5 and len(evaluate) == 7
    assert {p.label for p in select + evaluate} == {"brackets"}
    assert not {p.prompt_id for p in select} & {p.prompt_id for p in evaluate}
    with pytest.raises(ValueError, match="too few"):
        split_halves(load_suite("tasks"), "nonexistent")


def test_table_rows_columns_and_sizes(table: pl.DataFrame, tiny_ref: LoadedModel) -> None:
    assert table.columns == [
        "method", "keep", "seed", "n_kept_per_layer", "experts", "exact_match", "gold_logprob", "retention",
        "lp_retention", "n_correct", "n_eval",
    ]  # fmt: skip
    n_sets = {k: min(N_RANDOM, int(table.filter((pl.col("keep") == k) & (pl.col("method") == "random")).height))
              for k in KEEPS}  # fmt: skip
    assert n_sets[1.0] == 1  # keeping every expert: one possible set, not N_RANDOM copies of it
    assert all(n_sets[k] == N_RANDOM for k in KEEPS if k < 1.0)
    assert table.height == 1 + len(KEEPS) * len(METHODS) + sum(n_sets.values())
    top_k = {x.layer: x.top_k for x in tiny_ref.layers}
    for _keep, part in table.filter(pl.col("method") != "baseline").group_by("keep"):
        sizes = {tuple(int(n) for n in s.split(",")) for s in part["n_kept_per_layer"]}
        assert len(sizes) == 1  # random sets have the chosen sets' sizes
        for text in part["experts"]:
            chosen = parse_set(text)
            assert sorted(chosen) == sorted(top_k)
            assert all(len(v) >= top_k[layer] for layer, v in chosen.items())
        randoms = part.filter(pl.col("method") == "random")
        assert randoms["seed"].to_list() == list(range(randoms.height))
        assert randoms["experts"].n_unique() == randoms.height  # distinct sets, never repeats
        assert part.filter(pl.col("method") != "random")["seed"].null_count() == len(METHODS)
    assert all(0.0 <= v <= 1.0 for v in table["exact_match"])
    assert table["n_eval"].unique().to_list() == [6]
    method_lines = [line for line in summary_lines(table) if line.split(":")[0] in METHODS]
    assert len(method_lines) == len(METHODS)


def test_keep_all_reproduces_the_baseline_exactly(table: pl.DataFrame) -> None:
    base = table.filter(pl.col("method") == "baseline").row(0, named=True)
    full = table.filter(pl.col("keep") == 1.0, pl.col("method") != "baseline")
    assert full.height == len(METHODS) + 1  # keeping every expert has one possible random set, used once
    for row in full.iter_rows(named=True):
        assert row["exact_match"] == base["exact_match"] and row["gold_logprob"] == base["gold_logprob"]
        assert row["lp_retention"] == 1.0 and row["retention"] in (1.0, None)


def test_planted_expert_is_kept_and_matters() -> None:
    loaded = planted_model()
    early = gold_prompts(n=8, length=12)
    select, evaluate = split_halves(early, "early")
    scores = expert_scores(loaded, select, "early")
    sizes = {x.layer: keep_count(0.25, x.n_experts, x.top_k) for x in loaded.layers}
    chosen = top_keep(scores, "frequency", sizes)
    assert PLANT_EXPERT in chosen[PLANT_LAYER]
    # the same keep set, but with the planted expert swapped for an unchosen one at its layer
    others = [e for e in range(8) if e not in chosen[PLANT_LAYER]]
    without = {
        **chosen,
        PLANT_LAYER: sorted([e for e in chosen[PLANT_LAYER] if e != PLANT_EXPERT] + others[:1]),
    }
    measure = TaskMeasure(loaded, evaluate)
    base = measure(None)[1]
    kept, pruned = measure(chosen)[1], measure(without)[1]
    # the plant's effect on a random model's last-position log-prob is small but clear (≈ 0.07 nats)
    assert abs(pruned - base) > 0.02
    assert abs(kept - base) < abs(pruned - base) / 10


def test_cli_prints_and_writes(tmp_path: Path) -> None:
    out = tmp_path / "prune.csv"
    result = CliRunner().invoke(
        app,
        ["prune", "--task", "brackets", "--keep", "0.25", "--random", "1", "--max-prompts", "3",
         "--methods", "frequency", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "frequency: f=0.25" in result.output
    written = pl.read_csv(out)
    assert written["method"].to_list() == ["baseline", "frequency", "random"]
    bad = CliRunner().invoke(app, ["prune", "--task", "brackets", "--keep", "half"])
    assert bad.exit_code == 2


def _synthetic_table(base_correct: int, n_eval: int = 75) -> pl.DataFrame:
    """A retention table whose baseline answers ``base_correct`` of ``n_eval``; pruned sets lose a third."""
    everything = {0: list(range(8))}
    kept = {0: [0, 1, 2, 3]}
    base = (base_correct / n_eval, -2.0)
    pruned = (round(base_correct * 2 / 3) / n_eval, -2.5)
    rows = [
        {
            **_row("baseline", 1.0, None, everything, base, base, n_eval, MIN_BASELINE_CORRECT),
            "experts": "all",
        },
        _row("tcess", 0.5, None, kept, pruned, base, n_eval, MIN_BASELINE_CORRECT),
        _row("random", 0.5, 0, {0: [4, 5, 6, 7]}, (0.0, -3.0), base, n_eval, MIN_BASELINE_CORRECT),
    ]
    return pl.DataFrame(rows, schema=SCHEMA)


def test_retention_from_a_tiny_baseline_is_not_reported() -> None:
    # 3 correct of 75: one flip moves the ratio by a third; no exact-match retention, and the summary says why
    table = _synthetic_table(3)
    assert table["retention"].null_count() == table.height
    assert table.filter(pl.col("method") == "baseline")["n_correct"].to_list() == [3]
    lines = summary_lines(table)
    assert lines[0].startswith("Exact-match retention not reported: not enough baseline successes")
    assert "3 correct of 75" in lines[0] and f"needs ≥ {MIN_BASELINE_CORRECT}" in lines[0]
    assert not any("EM " in line for line in lines)  # no exact-match ratio anywhere
    assert any(line.startswith("tcess: f=0.5: p(gold)") for line in lines)


def test_retention_from_enough_baseline_successes_is_reported() -> None:
    table = _synthetic_table(30)
    tcess = table.filter(pl.col("method") == "tcess").row(0, named=True)
    assert tcess["retention"] == pytest.approx(20 / 30) and tcess["n_correct"] == 20
    lines = summary_lines(table)
    assert len(lines) == 1 and lines[0].startswith("tcess: f=0.5: EM 0.67 (random 0.00)")
    assert "not enough" not in lines[0]


def test_cli_warns_on_a_tiny_baseline(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["prune", "--task", "brackets", "--keep", "0.25", "--random", "1", "--max-prompts", "3",
         "--methods", "frequency"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not enough baseline successes" in result.output and "of 3 evaluation prompts" in result.output
    assert "EM " not in result.output
