"""CLI tables fit an 80-column terminal with whole run ids; `analyse` without --out prints findings first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from tests.store_support import make_batch, new_run
from workbench.cli import app
from workbench.cli.app import out
from workbench.cli.tables import fitting_columns, significant_first
from workbench.store import Store

pytestmark = pytest.mark.unit


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """An 80-column terminal (the tests otherwise run 250 wide: tests/conftest.py)."""
    monkeypatch.setattr(out, "_width", 80)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def test_runs_fits_80_columns_and_names_the_interrupted_run(db: Path, narrow: None) -> None:
    with Store(db) as st:
        ids = [new_run(st, f"run-20261207-21580{i}-a72f") for i in range(3)]
        for rid in ids[:2]:
            st.write_batch(rid, **make_batch([0, 1, 2, 3]))
            st.set_status(rid, "complete")
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        st.con.execute(
            "UPDATE runs SET pid = ?, model = ?, config = ? WHERE run_id = ?",
            [dead.pid, "/a/long/" * 6, '{"options": {"batch_size": 4}}', ids[2]],  # a capture's config
        )
        imported = new_run(st, "imported")  # written by another tool (no capture options): not resumable
        st.con.execute("UPDATE runs SET pid = ? WHERE run_id = ?", [dead.pid, imported])
    result = CliRunner().invoke(app, ["runs", "--db", str(db)])
    assert result.exit_code == 0, result.output
    table = _lines(result.stdout)
    assert max(len(line) for line in table) <= 80, result.stdout
    for rid in ids:  # whole, on one line
        assert any(line.startswith(rid) for line in table)
    assert [line.split()[1] for line in table if line.startswith(("run-", "imported"))] == [
        "complete",
        "complete",
        "interrupted",
        "interrupted",
    ]
    assert "not shown:" in result.stdout  # the columns that did not fit are named
    note = " ".join(result.stderr.split())
    assert (
        f"run {ids[2]} was interrupted (the process writing it is gone): finish it with "
        f"moe-workbench resume --db {db} --run {ids[2]}" in note
    )
    assert f"run {ids[0]} was interrupted" not in note
    assert (
        "run imported was interrupted (the process writing it is gone): it is not a capture, so resume "
        f"cannot finish it; moe-workbench runs --db {db} --prune removes it if it holds no rows"
    ) in note


def test_fitting_columns_keeps_the_key_and_skips_what_does_not_fit() -> None:
    frame = pl.DataFrame({"id": ["x" * 30], "wide": ["w" * 60], "narrow": ["n"], "more": ["m" * 10]})
    assert fitting_columns(frame, 80) == ["id", "narrow", "more"]
    assert fitting_columns(frame, 200) == ["id", "wide", "narrow", "more"]
    assert fitting_columns(frame, 80, first=["more", "id"]) == ["more", "id", "narrow"]
    huge = pl.DataFrame({"id": ["x" * 5000], "model": ["m"]})  # a huge key folds: the rest still shows
    assert fitting_columns(huge, 80) == ["id", "model"]


def test_significant_rows_come_first() -> None:
    frame = pl.DataFrame(
        {
            "expert": [0, 1, 2, 3, 4],
            "q": [0.5, None, 0.01, 0.04, 0.2],
            "specialised": [False, False, False, True, None],
        }
    )
    assert significant_first(frame)["expert"].to_list() == [3, 2, 4, 0, 1]
    assert significant_first(frame.drop("specialised"))["expert"].to_list() == [2, 3, 4, 0, 1]
    plain = pl.DataFrame({"expert": [2, 0, 1]})
    assert significant_first(plain)["expert"].to_list() == [2, 0, 1]


def test_analyse_without_out_prints_findings_then_significant_rows(db: Path, narrow: None) -> None:
    with Store(db) as st:
        run = new_run(st, "r")
        st.write_batch(run, **make_batch(list(range(12))))
        st.set_status(run, "complete")
    result = CliRunner().invoke(app, ["analyse", "specialisation", "--db", str(db), "--run", run])
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert lines[0].startswith("- ") and "cells are specialised at q < 0.05" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["layer", "expert", "label"])
    table = [line for line in lines[header + 1 :] if line and line[0].isdigit()]
    assert all(len(line) <= 80 for line in lines[header : header + 2 + len(table)])
    q_col = lines[header].split().index("q")
    shown_q = [float(line.split()[q_col]) for line in table]
    assert shown_q == sorted(shown_q) and len(table) == 15  # significant (smallest q) first, 15 of them
    assert (
        f"(15 of {32:,} rows; not shown:" in result.stdout
        and "--out FILE writes the whole table" in result.stdout
    )
