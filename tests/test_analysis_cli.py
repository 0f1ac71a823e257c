"""`moe-workbench analyse`: the catalog lookups, --list, every output format and the error paths."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from workbench.capture.engine import capture
from workbench.catalog import ANALYSES, UnknownAnalysisError, get_analysis
from workbench.catalog.entries import ENTRIES
from workbench.cli import app
from workbench.probefile import Prompt

pytestmark = pytest.mark.integration

runner = CliRunner()

TEXTS = {
    "code": ["def f(x): return x + 1", "for i in range(3): print(i)", "import os\nos.listdir('.')",
             "class A:\n    pass"],
    "prose": ["The cat sat on the mat.", "It rained all day in the valley.", "She read a long novel.",
              "The river ran quietly to the sea."],
    "math": ["2 + 2 = 4", "The integral of x is x^2 / 2.", "Let n be a prime number.", "3 * 7 = 21"],
}  # fmt: skip


def _prompts() -> list[Prompt]:
    flat = [(label, text) for label, texts in TEXTS.items() for text in texts]
    return [Prompt(i, text, label) for i, (label, text) in enumerate(flat)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    db = tmp_path_factory.mktemp("analyse") / "runs.duckdb"
    first = capture("tiny:qwen2_moe", _prompts(), db, progress=False)
    second = capture("tiny:qwen2_moe", _prompts(), db, progress=False)
    return db, first, second


def test_catalog_names_and_unknown() -> None:
    assert list(ANALYSES) == [spec.name for spec in ENTRIES]  # one entry per name, catalog order
    assert len(ANALYSES) >= 20
    assert get_analysis("drift").is_compare
    assert [get_analysis(spec.name) for spec in ENTRIES] == list(ENTRIES)
    with pytest.raises(UnknownAnalysisError) as err:
        get_analysis("nope")
    assert isinstance(err.value, KeyError)
    assert all(name in str(err.value) for name in ANALYSES)


def test_list_shows_every_analysis() -> None:
    result = runner.invoke(app, ["analyse", "--list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for spec in ENTRIES:
        assert spec.name in result.stdout


def test_specialisation_csv(runs: tuple[Path, str, str], tmp_path: Path) -> None:
    db, run, _ = runs
    target = tmp_path / "spec.csv"
    result = runner.invoke(
        app,
        ["analyse", "specialisation", "--db", str(db), "--run", run, "--by", "label", "--out", str(target)],
    )
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(target)
    assert {"layer", "expert", "label", "share", "lift", "ci_low", "ci_high", "p", "q"} <= set(frame.columns)
    assert set(frame["label"].unique()) == set(TEXTS)


def test_parquet_json_and_list_columns_in_csv(runs: tuple[Path, str, str], tmp_path: Path) -> None:
    db, run, _ = runs
    pq = tmp_path / "load.parquet"
    assert (
        runner.invoke(app, ["analyse", "load", "--db", str(db), "--run", run, "--out", str(pq)]).exit_code
        == 0
    )
    assert pl.read_parquet(pq).height > 0
    js = tmp_path / "balance.json"
    assert (
        runner.invoke(app, ["analyse", "balance", "--db", str(db), "--run", run, "--out", str(js)]).exit_code
        == 0
    )
    assert len(json.loads(js.read_text())) > 0
    # dynamic-k carries a list column (k_counts): CSV must still be written
    csv = tmp_path / "dynk.csv"
    result = runner.invoke(app, ["analyse", "dynamic-k", "--db", str(db), "--run", run, "--out", str(csv)])
    assert result.exit_code == 0, result.output
    assert "k_counts" in pl.read_csv(csv).columns


def test_errors_exit_2(runs: tuple[Path, str, str]) -> None:
    db, run, _ = runs
    result = runner.invoke(app, ["analyse", "nope", "--db", str(db), "--run", run])
    assert result.exit_code == 2
    assert "unknown analysis" in result.output and "specialisation" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    result = runner.invoke(app, ["analyse", "load", "--db", str(db), "--run", "missing-run"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["analyse", "drift", "--db", str(db), "--run", run])
    assert result.exit_code == 2
    assert "--compare" in result.output
    result = runner.invoke(app, ["analyse", "load", "--db", str(db), "--run", run, "--by", "prompt"])
    assert result.exit_code == 2


def test_drift_with_compare(runs: tuple[Path, str, str], tmp_path: Path) -> None:
    db, run, other = runs
    target = tmp_path / "drift.csv"
    result = runner.invoke(
        app, ["analyse", "drift", "--db", str(db), "--run", run, "--compare", other, "--out", str(target)]
    )
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(target)
    assert frame.height > 0


def test_set_options_reach_the_analysis(runs: tuple[Path, str, str], tmp_path: Path) -> None:
    """--set n_perm=9 (and n_perm_max=none: no floor refinement) makes the p floor 1/10; layers=1 keeps one layer."""
    db, first, _ = runs
    out = tmp_path / "spec.parquet"
    args = ["analyse", "specialisation", "--db", str(db), "--run", first, "--out", str(out)]
    no_refine = ["--set", "n_perm_max=none"]
    result = runner.invoke(
        app, [*args, "--set", "n_perm=9", "--set", "n_boot=5", "--set", "layers=1", *no_refine]
    )
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    assert table["p"].min() >= 0.1 - 1e-12 and set(table["layer"].to_list()) == {1}
    # By default the floor is refined for the map's 24 tests: cells no shuffle reached go below 1/10.
    result = runner.invoke(app, [*args, "--set", "n_perm=9", "--set", "n_boot=5", "--set", "layers=1"])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out)["p"].min() < 0.1
    p10 = (table["p"].drop_nans().drop_nulls() * 10).to_list()
    assert p10 and all(abs(x - round(x)) < 1e-9 for x in p10)  # every p is (count + 1) / 10
    bad = runner.invoke(app, [*args, "--set", "n_permutations=5"])
    assert bad.exit_code != 0 and "n_perm=1000" in bad.output and "no option 'n_permutations'" in bad.output
    worse = runner.invoke(app, [*args, "--set", "n_perm=many"])
    assert worse.exit_code != 0 and "n_perm=many" in worse.output


def test_parse_settings_reads_values_as_the_defaults_type() -> None:
    from workbench.catalog import analysis_options, list_options
    from workbench.cli.settings import parse_settings

    options, many = analysis_options("dynamic-k"), list_options("dynamic-k")
    assert parse_settings(["p_levels=0.5, 0.8", "layers=3"], options, "dynamic-k", many) == {
        "p_levels": (0.5, 0.8),
        "layers": [3],
    }
    sim = analysis_options("expert-similarity")
    assert parse_settings(["include_shared=no", "max_prompts=8"], sim, "expert-similarity") == {
        "include_shared": False,
        "max_prompts": 8,
    }
    with pytest.raises(ValueError, match="true or false"):
        parse_settings(["include_shared=maybe"], sim, "expert-similarity")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_settings(["seed"], analysis_options("load"), "load")
