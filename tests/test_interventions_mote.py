"""The MoTE experiment at a small scale: structure, controls matched to the chosen sets, write-up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

import workbench as wb
from workbench.data.suites import suite_path
from workbench.interventions.controls import parse_set
from workbench.interventions.mote import SCORERS, MoteConfig, MoteResult, run_mote, split_pairs
from workbench.interventions.mote_report import to_json, to_markdown
from workbench.probefile import read_probe_file

pytestmark = pytest.mark.integration

CONFIG = MoteConfig(doses=(1, 2), semantics=("reroute",), n_controls=5, n_select=16, n_eval=16, n_domain=12)


@pytest.fixture(scope="module")
def result() -> MoteResult:
    return run_mote(wb.load_model("tiny-ref"), CONFIG)


def test_halves_are_disjoint_complete_pairs() -> None:
    select, evaluation = split_pairs(read_probe_file(suite_path("refusal")), 10, 12)
    assert len(select) == 20 and len(evaluation) == 24
    assert not {p.pair_id for p in select} & {p.pair_id for p in evaluation}
    assert [p.label for p in select[:2]] == ["harmful", "benign"]


@pytest.mark.timeout(300)
def test_every_scorer_dose_and_control(result: MoteResult) -> None:
    assert result.summary.height == len(SCORERS) * len(CONFIG.doses)
    assert result.baseline["harmful_refusal"] > result.baseline["benign_refusal"]
    assert set(result.agreement["score"]) == {"rd", "ftri", "attribution"}
    assert result.scores.height == 4 * 8
    for (_scorer, n), group in result.doses.group_by("scorer", "n"):
        chosen = parse_set(group.filter(pl.col("set") == "chosen")["experts"][0])
        assert sum(map(len, chosen.values())) == n
        for text in group.filter(pl.col("set") == "random")["experts"]:
            control = parse_set(text)
            assert {k: len(v) for k, v in control.items()} == {k: len(v) for k, v in chosen.items()}
        assert group.height == 1 + CONFIG.n_controls
    assert result.summary["p"].min() >= 1 / (CONFIG.n_controls + 1)
    assert all(0.0 <= v <= 1.0 for v in result.doses["refusal"].to_list())
    for text in result.forced["experts"]:
        assert all(len(v) <= 2 for v in parse_set(text).values())  # tiny-ref routes top-2


def test_outcomes_tell_removed_refusal_from_a_broken_model(result: MoteResult) -> None:
    """Compliance, margin and cost-matched refusal against the same random sets as the refusal rate."""
    points = len(SCORERS) * len(CONFIG.doses)
    counts = dict(result.outcomes.group_by("measure").len().iter_rows())
    assert counts["refusal"] == counts["compliance"] == counts["margin_delta"] == points
    assert counts.get("refusal_cost_matched", 0) <= points
    assert result.outcomes.filter(pl.col("measure") == "refusal").drop("measure").equals(result.summary)
    assert all(0.0 <= v <= 1.0 for v in result.doses["compliance"].to_list())
    assert result.doses["margin_delta"].is_finite().all()
    # a set is never both refused and answered: the two shares add up to at most 1
    assert (result.doses["refusal"] + result.doses["compliance"]).max() <= 1.0 + 1e-12
    # the base model answers its benign-looking twins, not the harmful requests
    assert result.baseline["harmful_compliance"] < 0.5 and result.baseline["harmful_margin"] > 0
    matched = result.outcomes.filter(pl.col("measure") == "refusal_cost_matched")
    for row in matched.iter_rows(named=True):  # only random sets no costlier than the chosen one
        point = result.doses.filter(
            (pl.col("scorer") == row["scorer"])
            & (pl.col("semantics") == row["semantics"])
            & (pl.col("n") == row["n"])
        )
        chosen_cost = point.filter(pl.col("set") == "chosen")["nll_delta"][0]
        assert (
            row["n_controls"]
            == point.filter((pl.col("set") == "random") & (pl.col("nll_delta") <= chosen_cost)).height
        )


def test_write_up_quotes_the_tables(result: MoteResult, tmp_path: Path) -> None:
    text = to_markdown(result, "tiny-ref", "moe-workbench experiment mote")
    assert "## Does resonance find the experts that matter?" in text
    rho = result.agreement.filter(pl.col("score") == "rd")["spearman"][0]
    assert f"rd {rho:+.2f}" in text
    data = json.loads(to_json(result))
    assert data["baseline"] == result.baseline and len(data["summary"]) == result.summary.height
    assert "## Is it refusal that goes, or the model?" in text
    assert len(data["outcomes"]) == result.outcomes.height


def test_model_card_section_quotes_the_headline(result: MoteResult) -> None:
    from workbench.interventions.mote_report import headline
    from workbench.zoo.card import _mote_section

    head = headline(result)
    text = "\n".join(_mote_section(json.loads(json.dumps(head))))
    assert "## The MoTE experiment" in text
    assert len(head["lowest_refusal_per_scorer"]) == len(SCORERS)
    for row in head["lowest_refusal_per_scorer"]:
        assert f"| {row['scorer']} | {row['semantics']} | {row['n']} |" in text
    assert _mote_section(None) == []


def test_a_scorer_subset_runs_only_what_it_needs() -> None:
    small = MoteConfig(
        doses=(1,), semantics=("reroute",), n_controls=5, n_select=8, n_eval=8, n_domain=6, scorers=("rd",)
    )
    result = run_mote(wb.load_model("tiny-ref"), small)
    assert set(result.summary["scorer"]) == {"rd"}
    assert "greedy_rank" not in result.scores.columns  # no greedy search was run
    with pytest.raises(ValueError, match="available: rd, ftri"):
        run_mote(wb.load_model("tiny-ref"), MoteConfig(scorers=("vibes",)))


def test_cli_passes_every_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also: without --out it writes to a scratch folder and leaves the tiny-ref card alone; it reports progress."""
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.zoo.card import MOTE_FILE
    from workbench.zoo.tiny_ref import model_dir

    monkeypatch.setenv("MOE_WORKBENCH_SCRATCH", str(tmp_path / "scratch"))
    card = model_dir() / MOTE_FILE
    before = card.read_bytes() if card.exists() else None
    args = ["experiment", "mote", "--scorers", "rd", "--doses", "1", "--controls", "5", "--semantics", "reroute",
            "--pairs", "8", "--domain-prompts", "6"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (out,) = (tmp_path / "scratch").glob("mote-*/mote.md")
    said = " ".join(result.stderr.split())
    assert f"writing to the scratch folder {out.parent} (--out FILE to record the run elsewhere)" in said
    assert f"wrote {out} and {out.with_suffix('.json')}" in said
    assert (card.read_bytes() if card.exists() else None) == before  # a scratch run never touches the card
    # 1 scoring step + 1 dose point + 1 forced set; the last says no estimate (nothing is left)
    assert re.search(
        r"\[1/3\] scoring the experts done: \d+ (s|min \d+ s) so far, about \d+ (s|min \d+ s) left", said
    )
    assert "[3/3] rd: forcing its experts on benign prompts done: " in said
    assert not re.search(r"\[3/3\][^\[]* left", said)
    data = json.loads(out.with_suffix(".json").read_text())
    assert (
        data["config"]["scorers"] == ["rd"]
        and data["config"]["n_select"] == 8
        and data["config"]["n_domain"] == 6
    )
    assert {row["scorer"] for row in data["summary"]} == {"rd"}
    assert "--scorers rd" in out.read_text()
    bad = CliRunner().invoke(app, ["experiment", "mote", "--behaviour", "sycophancy"])
    assert bad.exit_code == 2 and "refusal-chatml" in bad.output


def test_card_lists_reruns_with_more_controls() -> None:
    from workbench.interventions.controls import versus_controls
    from workbench.zoo.card import _mote_section

    table = pl.DataFrame({"set": ["chosen", *["random"] * 3], "value": [0.1, 0.5, 0.9, 0.0]})
    stats = versus_controls(table)
    assert stats["control_min"] == 0.0 and stats["chosen"] == 0.1
    constant = versus_controls(
        pl.DataFrame({"set": ["chosen", "random", "random"], "value": [0.1, 0.2, 0.2]})
    )
    assert constant["z"] == float("-inf")  # below a spread-less control: minus infinity, not plus
    row = {"scorer": "causal-greedy", "semantics": "zero", "n": 8, **stats}
    head = {"baseline": {"harmful_refusal": 0.9, "benign_refusal": 0.1}, "agreement": {"rd": 0.1},
            "lowest_refusal_per_scorer": [row],
            "reruns": [{"config": {"scorers": ["causal-greedy"], "n_controls": 30, "doses": [8]}, "summary": [row]}]}  # fmt: skip
    text = "\n".join(_mote_section(head))
    assert "Rerun of causal-greedy with 30 random sets per point (doses 8)" in text
    assert "range 0.0%–90.0%" in text


def test_wilson_interval_matches_scipy() -> None:
    from scipy.stats import binomtest

    from workbench.interventions.mote_report import wilson

    for k, n in [(0, 96), (5, 96), (70, 96), (96, 96), (3, 12)]:
        want = binomtest(k, n).proportion_ci(method="wilson")
        low, high = wilson(k / n, n)
        assert low == pytest.approx(want.low, abs=1e-6) and high == pytest.approx(want.high, abs=1e-6)


def test_write_up_gives_the_chosen_rates_a_confidence_interval(result: MoteResult) -> None:
    text = to_markdown(result, "tiny-ref", "moe-workbench experiment mote")
    assert result.baseline["n_harmful_eval"] == CONFIG.n_eval
    assert "chosen_ci_low" in text and "chosen_ci_high" in text
    data = json.loads(to_json(result))
    assert len(data["doses"]) == result.doses.height
    head = data["headline"]["highest_compliance_per_scorer"]
    assert all(r["chosen_ci_low"] <= r["chosen"] <= r["chosen_ci_high"] for r in head)


def test_forced_activation_is_compared_with_random_forced_sets(result: MoteResult) -> None:
    """Issue 12 item 7: each forced set gets distinct random sets of its own shape, never itself, and a p with floor."""
    assert result.forced.height == len(SCORERS)
    for row in result.forced.iter_rows(named=True):
        chosen = parse_set(row["experts"])
        controls = row["control_sets"].split("|")
        assert len(controls) == int(row["n_controls"]) == CONFIG.n_controls
        assert len(set(controls)) == len(controls) and row["experts"] not in controls
        for text in controls:
            assert {k: len(v) for k, v in parse_set(text).items()} == {k: len(v) for k, v in chosen.items()}
        assert row["p_floor"] == pytest.approx(1 / (CONFIG.n_controls + 1))
        assert row["p_floor"] <= row["p"] <= 1.0
        assert row["control_min"] <= row["control_mean"] <= row["control_max"]
    text = to_markdown(result, "tiny-ref", "moe-workbench experiment mote")
    section = text.split("## Forcing the chosen experts on benign requests")[1]
    assert f"floor {1 / (CONFIG.n_controls + 1):.3f} with {CONFIG.n_controls} controls" in section
    forced = json.loads(to_json(result))["forced"]
    assert {"p", "p_floor", "n_controls", "control_sets"} <= set(forced[0])


def test_rank_agreement_reports_interval_and_p(result: MoteResult) -> None:
    """Every Spearman ρ of a score with the causal effect comes with a CI and a permutation p (item 7)."""
    for row in result.agreement.iter_rows(named=True):
        if row["spearman"] != row["spearman"]:
            continue
        assert row["ci_low"] <= row["spearman"] <= row["ci_high"]
        assert row["p_floor"] <= row["p"] <= 1.0
    text = to_markdown(result, "tiny-ref", "moe-workbench experiment mote")
    row = result.agreement.row(0, named=True)
    assert (
        f"{row['score']} {row['spearman']:+.2f} (95% CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f}" in text
    )
