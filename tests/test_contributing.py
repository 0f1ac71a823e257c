"""CONTRIBUTING.md's "How to add an analysis", followed word for word on a copy of the repository.

The walk-through's code blocks carry ``path=`` and ``action=`` in their fence info string. This
test copies ``workbench/``, ``docs/methods.md`` and the test helpers to a temp folder, applies
every block exactly as the text says (new files; the imports and the entry in the catalog; the
methods section under its chapter) and nothing else, then checks in a fresh interpreter that the
new analysis shows up everywhere the catalog feeds: ``analyse --list`` and ``analyse NAME``, the
notebook API, ``run_analysis``, the report and the dashboard's prewarm. It also runs the methods
doc checks and the walk-through's own test in the copy. If the recipe and the code drift apart,
this fails.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "CONTRIBUTING.md"
FENCE = re.compile(r"^```(\w+) path=(\S+) action=(\S+)\n(.*?)^```$", re.M | re.S)
NAME = "top1-share"


def _blocks() -> list[tuple[str, str, str]]:
    """(path, action, code) of every tagged block of the analysis walk-through, in order."""
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("## How to add an analysis", 1)[1].split("\n## ", 1)[0]
    return [(m.group(2), m.group(3), m.group(4)) for m in FENCE.finditer(section)]


def _insert_imports(path: Path, code: str) -> None:
    """After the module's last top-level import, as the walk-through says ("import the functions")."""
    text = path.read_text(encoding="utf-8")
    last = max(n.end_lineno or 0 for n in ast.parse(text).body if isinstance(n, ast.Import | ast.ImportFrom))
    lines = text.splitlines(keepends=True)
    path.write_text("".join(lines[:last]) + code + "".join(lines[last:]), encoding="utf-8")


def _insert_entry(path: Path, code: str) -> None:
    """Into the ``ENTRIES`` tuple, last (before its closing parenthesis)."""
    text = path.read_text(encoding="utf-8")
    node = next(
        n
        for n in ast.parse(text).body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id == "ENTRIES"
    )
    assert node.value is not None
    close = (node.value.end_lineno or 0) - 1  # the line holding the tuple's ")"
    lines = text.splitlines(keepends=True)
    path.write_text("".join(lines[:close]) + code + "".join(lines[close:]), encoding="utf-8")


def _insert_section(path: Path, code: str, chapter: str) -> None:
    """At the end of chapter ``§N`` of docs/methods.md (before the next ``## `` heading)."""
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n## {chapter} ")
    nxt = text.find("\n## ", start + 1)
    cut = len(text) if nxt < 0 else nxt + 1
    path.write_text(text[:cut].rstrip("\n") + "\n\n" + code + "\n" + text[cut:], encoding="utf-8")


def _follow(copy: Path) -> set[str]:
    """Apply the walk-through to ``copy``; the set of files it touched."""
    touched: set[str] = set()
    for rel, action, code in _blocks():
        target = copy / rel
        if action == "new":
            assert not target.exists(), f"{rel} already exists: pick another example name"
            target.write_text(code, encoding="utf-8")
        elif action == "imports":
            _insert_imports(target, code)
        elif action == "entry":
            _insert_entry(target, code)
        elif action.startswith("section:"):
            _insert_section(target, code, action.split(":", 1)[1])
        else:
            raise AssertionError(f"CONTRIBUTING.md: unknown action {action!r} for {rel}")
        touched.add(rel)
    return touched


CHECK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    copy, name = Path(sys.argv[1]), sys.argv[2]
    sys.path.insert(0, str(copy / "tests"))
    import workbench
    assert Path(workbench.__file__).resolve().is_relative_to(copy.resolve()), workbench.__file__
    from typer.testing import CliRunner
    from store_support import make_batch, new_run
    import workbench as wb
    from workbench.catalog import ANALYSES, run_analysis
    from workbench.cli import app
    from workbench.reports import write_report
    from workbench.store import Store

    assert list(ANALYSES)[-1] == name, list(ANALYSES)
    listed = CliRunner().invoke(app, ["analyse", "--list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and name in listed.stdout, listed.output
    db = copy / "runs.duckdb"
    with Store(db) as st:
        run = new_run(st, "r1")
        st.write_batch(run, **make_batch([0, 1, 2, 3]))
        st.set_status(run, "complete")
        table = run_analysis(name, st, run)
    assert table.height == 8 and set(table.columns) >= {"layer", "expert", "n", "share"}
    cli = CliRunner().invoke(app, ["analyse", name, "--db", str(db), "--run", run], env={"COLUMNS": "250"})
    assert cli.exit_code == 0, cli.output
    with wb.open(db) as session:
        frame = session.run(run).top1_share()
        assert frame.equals(table) and len(frame.plot().data) == 1
    page = write_report(db, run, copy / "report.html").read_text(encoding="utf-8")
    assert f'data-analysis="{name}" data-status="ok"' in page
    assert "is the first choice of 25% of tokens" in page
    from dashboards import data
    assert name in data.PAGE_ANALYSES
    data.prewarm(str(db), run)
    deadline = time.monotonic() + 120
    while True:  # computed in the background without anyone asking for it
        with data.nonblocking() as pending:
            try:
                warmed = data.analysis(str(db), run, name)
            except data.Pending:
                warmed = None
        if warmed is not None:
            break
        assert time.monotonic() < deadline, "the prewarm never computed the new analysis"
        time.sleep(0.1)
    assert warmed.equals(table)
    data.shutdown()
    print("followed")
    """
)


def test_the_analysis_walkthrough_works_as_written(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "workbench", copy / "workbench", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "methods.md", copy / "docs" / "methods.md")
    (copy / "tests").mkdir()
    for helper in ("store_support.py", "test_methods_doc.py"):
        shutil.copy(ROOT / "tests" / helper, copy / "tests" / helper)
    touched = _follow(copy)
    # the walk-through needs these files and no other: three source files, the doc and a test
    assert touched == {
        "workbench/analysis/top1.py",
        "workbench/plots/top1.py",
        "workbench/catalog/entries.py",
        "docs/methods.md",
        "tests/test_top1.py",
    }
    sources = {t for t in touched if t.startswith("workbench/")}
    assert len(sources) <= 3
    env = {**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{ROOT}", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(copy), NAME],
        cwd=copy, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0 and "followed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    ini = copy / "pytest.ini"
    ini.write_text("[pytest]\nmarkers =\n    unit: u\n    integration: i\n", encoding="utf-8")
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ini), "--rootdir", str(copy),
         "tests/test_top1.py", "tests/test_methods_doc.py", "-k",
         "top1 or catalogued_analysis_has_a_section or catalog_chapter or names_a_test"],
        cwd=copy, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    from workbench.catalog import ANALYSES

    passed = re.search(r"(\d+) passed", tests.stdout)
    # the new test, one section check per analysis (the new one too), the chapter and test-name checks
    assert passed is not None and int(passed.group(1)) == 1 + (len(ANALYSES) + 1) + 2, tests.stdout[-2000:]


def test_every_catalog_entry_is_in_the_methods_doc_chapter_it_cites() -> None:
    """The guide's step 4 in force for the real catalog: a section per entry, under its ``§N``."""
    from workbench.catalog.entries import ENTRIES

    text = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    chapter, found = "", {}
    for line in text.splitlines():
        if m := re.match(r"## (§\d+) ", line):
            chapter = m.group(1)
        elif line.startswith("### "):
            found.update({s.name: chapter for s in ENTRIES if f"`{s.name}`" in line})
    assert {s.name: s.section for s in ENTRIES} == found
