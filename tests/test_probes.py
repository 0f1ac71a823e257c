"""The probe-suite manifest validates, and broken suites fail with errors naming suite and line."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from workbench.data.common import HELDOUT, probes_dir
from workbench.data.suites import SuiteError, list_suites, load_suite, suite_path, validate_all
from workbench.probefile import read_probe_file

pytestmark = pytest.mark.unit

REQUIRED = {"domains", "refusal", "tasks", "vocab"}


def test_manifest_validates_and_lists_suites() -> None:
    infos = {s.name: s for s in validate_all()}
    assert set(infos) >= REQUIRED
    for s in infos.values():
        assert s.path.exists() and s.n_prompts == len(read_probe_file(s.path))
        assert s.description
    domains = infos["domains"]
    assert len(domains.labels) >= 5 and {"prose", "code", "math"} <= set(domains.labels)
    assert all(n >= 100 for n in domains.counts.values())
    assert infos["refusal"].counts == {
        "harmful": infos["refusal"].counts["benign"],
        "benign": infos["refusal"].counts["harmful"],
    }
    assert isinstance(infos["tasks"].metric, dict) and set(infos["tasks"].metric) == {
        "brackets",
        "arithmetic",
    }
    assert infos["vocab"].n_prompts >= 200
    assert [s.name for s in list_suites()] == list(infos)


def test_suite_contents() -> None:
    domains = load_suite("domains")
    assert all(p.split == HELDOUT and 20 <= len(p.text) <= 200 for p in domains)
    refusal = load_suite("refusal")
    assert len(refusal) >= 200 and all(p.pair_id for p in refusal)
    vocab = load_suite("vocab")
    assert all(len(p.text) <= 12 and not any(c.isspace() for c in p.text) for p in vocab)
    for p in load_suite("tasks"):
        assert p.meta is not None
        gold = p.meta["gold"]
        if p.label == "arithmetic":
            a, op, b, _ = p.text.split()
            assert gold == f" {eval(f'{a}{op}{b}')}"  # the prompts are plain 'a op b ='
        else:
            assert gold == p.meta["completion"][0]
            ast.parse(p.text + p.meta["completion"])  # the completed line is valid Python


def test_suite_path_points_into_probes() -> None:
    assert suite_path("refusal") == (probes_dir() / "refusal.jsonl").resolve()
    with pytest.raises(SuiteError, match=r"unknown probe suite 'nope'.*domains"):
        suite_path("nope")


@pytest.fixture
def probes_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "probes"
    shutil.copytree(probes_dir(), dst)
    return dst


def _edit_line(path: Path, lineno: int, edit: dict | str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    if isinstance(edit, str):
        lines[lineno - 1] = edit
    else:
        row = json.loads(lines[lineno - 1])
        row.update(edit)
        lines[lineno - 1] = json.dumps({k: v for k, v in row.items() if v is not None})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_broken_json_names_suite_and_line(probes_copy: Path) -> None:
    _edit_line(probes_copy / "refusal.jsonl", 5, '{"text": "oops", ')
    with pytest.raises(SuiteError, match=r"suite 'refusal'.*refusal\.jsonl:5: not valid JSON"):
        validate_all(probes_copy)


def test_wrong_label_names_line(probes_copy: Path) -> None:
    _edit_line(probes_copy / "domains.jsonl", 7, {"label": "klingon"})
    with pytest.raises(SuiteError, match=r"suite 'domains'.*domains\.jsonl:7: label 'klingon'"):
        load_suite("domains", probes_copy)


def test_missing_gold_and_broken_pair_and_split(probes_copy: Path) -> None:
    _edit_line(probes_copy / "tasks.jsonl", 3, {"meta": {"task": "brackets"}})
    with pytest.raises(SuiteError, match=r"tasks\.jsonl:3: no gold answer"):
        load_suite("tasks", probes_copy)
    _edit_line(probes_copy / "refusal.jsonl", 4, {"pair_id": "lonely"})
    with pytest.raises(SuiteError, match=r"suite 'refusal'.*refusal\.jsonl:\d+: pair '"):
        load_suite("refusal", probes_copy)
    _edit_line(probes_copy / "domains.jsonl", 2, {"split": "train"})
    with pytest.raises(SuiteError, match=r"domains\.jsonl:2: split is 'train'"):
        load_suite("domains", probes_copy)


def test_too_few_prompts_and_missing_file(probes_copy: Path) -> None:
    path = probes_copy / "domains.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    code = [ln for ln in lines if '"label":"code"' in ln]
    path.write_text("\n".join([ln for ln in lines if ln not in code] + code[:50]) + "\n", encoding="utf-8")
    with pytest.raises(SuiteError, match=r"suite 'domains'.*fewer than 100 prompts for \{'code': 50\}"):
        load_suite("domains", probes_copy)
    (probes_copy / "vocab.jsonl").unlink()
    with pytest.raises(SuiteError, match=r"suite 'vocab'.*no such probe file"):
        load_suite("vocab", probes_copy)


def test_bad_manifest(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="no probe-suite manifest"):
        list_suites(tmp_path)
    (tmp_path / "suites.yaml").write_text("suites:\n  - name: a\n    file: a.jsonl\n    labels: x\n")
    with pytest.raises(SuiteError, match="suite 'a': `labels` must be"):
        list_suites(tmp_path)
    (tmp_path / "suites.yaml").write_text(
        "suites:\n  - name: a\n    file: a.jsonl\n    labels: [x]\n    colour: red\n"
    )
    with pytest.raises(SuiteError, match="unknown key"):
        list_suites(tmp_path)


def test_cli_probes_list_shows_every_suite() -> None:
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.data.suites import list_suites

    result = CliRunner().invoke(app, ["probes", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for suite in list_suites():
        assert suite.name in result.output and suite.file in result.output
