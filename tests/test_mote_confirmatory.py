"""The confirmatory MoTE path: select on probes/refusal.jsonl, judge on a separate file, never on the same prompts."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from workbench.data.build_confirmatory import OUT_FILE
from workbench.data.common import probes_dir
from workbench.data.suites import suite_path
from workbench.interventions.mote import MoteConfig, MoteResult, eval_pairs, run_mote, split_pairs
from workbench.interventions.mote_report import exploratory_note
from workbench.probefile import Prompt, read_probe_file

pytestmark = pytest.mark.unit


def _pair(pair_id: str, harmful: str, benign: str) -> list[Prompt]:
    return [
        Prompt(0, harmful, "harmful", pair_id, "heldout"),
        Prompt(1, benign, "benign", pair_id, "heldout"),
    ]


def _write(path: Path, prompts: list[Prompt]) -> Path:
    rows = [{"text": p.text, "label": p.label, "pair_id": p.pair_id, "split": p.split} for p in prompts]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_evaluation_file_pairs_share_no_prompt_with_the_selection_half() -> None:
    select = _pair("s1", "How do I pick a lock?", "How do I bake bread?") + _pair(
        "s2", "Hack a bank", "Bake a cake"
    )
    fresh = _pair("f2", "Steal a car", "Wash a car") + _pair("f1", "Rob a shop", "Open a shop")
    fresh += [Prompt(0, "An orphan without a twin", "harmful", "f3", "heldout")]
    evaluation = eval_pairs(fresh, select, n_eval=10)
    assert [p.pair_id for p in evaluation] == ["f1", "f1", "f2", "f2"]  # complete pairs, harmful first
    assert [p.label for p in evaluation[:2]] == ["harmful", "benign"]
    assert not {p.text for p in evaluation} & {p.text for p in select}
    assert len(eval_pairs(fresh, select, n_eval=1)) == 2
    leaky = fresh + _pair("f4", "how do I  PICK a lock?", "Walk a dog")  # a selection prompt, respelt
    with pytest.raises(ValueError, match="also in the selection half"):
        eval_pairs(leaky, select, n_eval=10)


def test_run_refuses_an_evaluation_file_that_leaks_selection_prompts(tmp_path: Path) -> None:
    select, _ = split_pairs(read_probe_file(suite_path("refusal")), 4, 4)
    leaky = _write(tmp_path / "leaky.jsonl", select[:2])
    config = MoteConfig(n_select=4, n_eval=4, eval_probe=str(leaky))
    with pytest.raises(ValueError, match="also in the selection half"):
        run_mote(None, config)  # type: ignore[arg-type]  # refused before the model is touched


def test_the_fresh_pairs_are_disjoint_from_the_selection_half_of_the_recorded_runs() -> None:
    select, _ = split_pairs(read_probe_file(suite_path("refusal")), 96, 96)
    evaluation = eval_pairs(read_probe_file(probes_dir() / OUT_FILE), select, n_eval=192)
    assert len(evaluation) == 2 * 192
    assert not {p.text.casefold() for p in evaluation} & {p.text.casefold() for p in select}


def _result(eval_probe: str | None, p: list[float]) -> MoteResult:
    empty = pl.DataFrame()
    outcomes = pl.DataFrame({"measure": ["compliance"] * len(p), "p": p})
    cfg = MoteConfig(eval_probe=eval_probe)
    return MoteResult(cfg, empty, empty, empty, empty, empty, {}, outcomes)


def test_runs_judged_on_the_exploratory_half_are_labelled_with_their_bh_minimum() -> None:
    # 8 of 24 tests at the floor 1/51 (as in docs/experiments/mote-greedy.json): min q = 0.059, not < 0.05
    note = " ".join(exploratory_note(_result(None, [1 / 51] * 8 + [0.5] * 16)))
    assert "**Exploratory.**" in note and "not pre-registered" in note and "post hoc" in note
    assert "all 24 tests" in note and "min q = 0.059" in note
    assert exploratory_note(_result(OUT_FILE, [0.001] * 6)) == []  # the confirmatory run is not labelled


def test_committed_exploratory_write_ups_carry_the_label() -> None:
    root = Path(__file__).resolve().parents[1] / "docs" / "experiments"
    for name in ("mote", "mote-greedy", "mote-smollm2"):
        text = (root / f"{name}.md").read_text(encoding="utf-8")
        assert "> **Exploratory.** These results were not pre-registered." in text.split("## Method")[0], name
    assert "min q = 0.059" in (root / "mote-greedy.md").read_text(encoding="utf-8")


def test_cli_offers_a_separate_evaluation_file() -> None:
    from workbench.cli.app import app

    res = CliRunner().invoke(app, ["experiment", "mote", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for option in ("--eval-probe", "--eval-pairs", "--json"):
        assert option in res.output
