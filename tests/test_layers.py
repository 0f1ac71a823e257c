"""The import contracts of pyproject.toml hold on the tree, and they bite.

The house is one-way (docs/architecture.md): a room imports only rooms on lower floors, lazy imports
included. ``lint-imports`` (run by ``make lint``) checks three contracts: the layers, "analysis reads
records only" and "the dashboard never reaches into capture". This module checks that

* they hold on the real tree;
* every top-level room of ``workbench/`` sits on a floor, so a new module cannot slip past unlisted;
* each wrong-way import issue 13 found (all of them hidden inside functions), planted again inside a
  function in a copy of the tree, where the modules now live, makes ``lint-imports`` fail with a report
  that names it; so does one behind ``if TYPE_CHECKING:``; and right-way imports planted the same way
  are not reported;
* the Dash pages, which grimp cannot see (``dashboards/pages`` is a folder of files that Dash loads,
  not a package), keep the dashboard's rules too.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("workbench", "dashboards")
MARK = "planted by tests/test_layers.py"


@dataclass(frozen=True)
class Plant:
    """One import planted at the end of ``file``: inside a function, or under ``if TYPE_CHECKING:``."""

    case: str
    file: str
    statement: str
    imported: str
    type_checking: bool = False

    @property
    def importer(self) -> str:
        return self.file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


# Issue 13's eight wrong-way imports, each planted where the modules now live. Where the importing code
# moved to a floor from which its old import is legal (the sweep to conformance, expert similarity to
# interventions, routing_shift to interventions, demo to the CLI), the same import is planted from the
# floor it left, and the moved module gets a wrong-way import of its own below.
ISSUE_13 = [
    # 1. models/supported.py imported capture (make_batch, HooksBackend): models may not import capture.
    Plant("supported-make-batch", "workbench/models/routing_check.py",
          "from workbench.capture.batching import make_batch", "workbench.capture.batching"),
    Plant("supported-hooks-backend", "workbench/models/registry.py",
          "from workbench.capture.backends.hooks import HooksBackend", "workbench.capture.backends.hooks"),
    # 2. models/loading.py imported the zoo (the loader now asks the source registry the zoo fills).
    Plant("loading-zoo", "workbench/models/loading.py",
          "from workbench.zoo import tiny_ref", "workbench.zoo.tiny_ref"),
    # 3. The cycle capture -> models -> zoo -> card -> evaluate -> capture. Its one wrong-way edge is
    #    models -> zoo (zoo.evaluate -> capture.engine goes down: see RIGHT_WAY); planted from the source
    #    registry, importing the zoo's card instead of letting the zoo register through its entry point.
    Plant("cycle-models-zoo-card", "workbench/models/sources.py",
          "from workbench.zoo.card import write_card", "workbench.zoo.card"),
    # 4. analysis/expert_similarity.py imported models and capture: analysis reads records only.
    Plant("expert-similarity-models", "workbench/analysis/compare.py",
          "from workbench.models.loading import load_model", "workbench.models.loading"),
    Plant("expert-similarity-capture", "workbench/analysis/compare.py",
          "from workbench.capture.batching import make_batch", "workbench.capture.batching"),
    # 5. interventions imported the zoo's refusal scorer and chat helpers.
    Plant("interventions-zoo-refusal", "workbench/interventions/metrics.py",
          "from workbench.zoo.evaluate import refusal_eval", "workbench.zoo.evaluate"),
    Plant("interventions-zoo-chat", "workbench/interventions/effects.py",
          "from workbench.zoo.train import build_windows", "workbench.zoo.train"),
    # 6. dashboards/views/lab.py imported capture backends for routing_shift.
    Plant("lab-capture-backends", "dashboards/views/lab.py",
          "from workbench.capture.backends.hooks import HooksBackend", "workbench.capture.backends.hooks"),
    # 7. workbench/demo.py imported dashboards.app: the library (session, its top floor) may not.
    Plant("library-imports-app", "workbench/session.py",
          "from dashboards.app import create_app", "dashboards.app"),
]  # fmt: skip

# The moved modules, importing the wrong way from their new homes; and two more ways in.
MOVED = [
    Plant("conformance-zoo", "workbench/conformance/supported.py",
          "from workbench.zoo.tiny_ref import load", "workbench.zoo.tiny_ref"),
    Plant("expert-similarity-catalog", "workbench/interventions/expert_similarity.py",
          "from workbench.catalog import get_analysis", "workbench.catalog"),
    Plant("behaviour-interventions", "workbench/behaviour/judges.py",
          "from workbench.interventions.effects import evaluate", "workbench.interventions.effects"),
    Plant("behaviour-zoo", "workbench/behaviour/chat.py",
          "from workbench.zoo.train import build_windows", "workbench.zoo.train"),
    Plant("routing-shift-view", "workbench/interventions/routing_shift.py",
          "from dashboards.views.lab import run_lab", "dashboards.views.lab"),
    Plant("app-imports-cli", "dashboards/app.py",
          "from workbench.cli.demo import finish", "workbench.cli.demo"),
    # The package root (``import workbench as wb``) is a facade over several floors: a room importing
    # it reaches them all, so the contract reports the chain through it.
    Plant("room-imports-facade", "workbench/store/backend.py", "import workbench", "workbench"),
    # A type-only import is still a dependency of the design (exclude_type_checking_imports = false).
    Plant("type-checking-only", "workbench/models/family.py",
          "from workbench.capture.records import BatchCapture", "workbench.capture.records",
          type_checking=True),
]  # fmt: skip

# Downhill imports: planted the same way, they must not be reported.
RIGHT_WAY = [
    Plant("zoo-evaluate-captures", "workbench/zoo/evaluate.py",
          "from workbench.capture.engine import capture", "workbench.capture.engine"),
    Plant("cli-demo-serves-app", "workbench/cli/demo.py",
          "from dashboards.app import create_app", "dashboards.app"),
    Plant("lab-calls-routing-shift", "dashboards/views/lab.py",
          "from workbench.interventions.routing_shift import routing_shift",
          "workbench.interventions.routing_shift"),
    Plant("expert-similarity-loads-model", "workbench/interventions/expert_similarity.py",
          "from workbench.models.loading import load_model", "workbench.models.loading"),
]  # fmt: skip


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """The ``lint-imports`` command on ``tree`` (its packages, its pyproject.toml's contracts).

    A wide terminal keeps each reported import on one line; no cache, so no earlier run is read.
    """
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(tree / "pyproject.toml")],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_tree(dest: Path) -> Path:
    """The ``.py`` files of both packages and pyproject.toml, copied under ``dest``."""
    for package in PACKAGES:
        for src in (ROOT / package).rglob("*.py"):
            if "__pycache__" in src.parts:
                continue
            target = dest / src.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    shutil.copyfile(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def module_path(tree: Path, module: str) -> Path | None:
    """The file of ``module`` under ``tree`` (a module or a package), or None."""
    base = tree.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def planted(tree: Path, p: Plant) -> tuple[str, int]:
    """``p``'s file under ``tree`` with its import appended, and the line number of that import."""
    path = tree / p.file
    assert path.is_file(), f"{p.file} is gone: move case {p.case!r} to where that code lives now"
    assert module_path(tree, p.imported), f"{p.imported} is gone: update case {p.case!r}"
    if p.type_checking:
        tail = f"from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    {p.statement}  # {MARK}\n"
    else:
        tail = f"def _planted_import() -> None:\n    {p.statement}  # {MARK}\n"
    text = path.read_text(encoding="utf-8").rstrip("\n") + "\n\n\n" + tail
    return text, next(i for i, line in enumerate(text.splitlines(), 1) if MARK in line)


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    report: str
    line: int


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Each plant's lint-imports run, alone in a copy of the tree: ``{case: Outcome}``.

    One child process runs import-linter's ``lint_imports`` (what the ``lint-imports`` command calls)
    once per plant, restoring the file after each, so every run sees exactly one planted import; a
    process per plant would cost a second each on a loaded machine for the same answer.
    """
    tree = copy_tree(tmp_path_factory.mktemp("tree"))
    plants = ISSUE_13 + MOVED + RIGHT_WAY
    texts = [planted(tree, p) for p in plants]
    jobs = [(p.file, text) for p, (text, _) in zip(plants, texts, strict=True)]
    proc = subprocess.run(
        [sys.executable, __file__, str(tree)],
        input=json.dumps(jobs),
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    results = json.loads(proc.stdout)
    return {
        p.case: Outcome(code, report, line)
        for p, (_, line), (code, report) in zip(plants, texts, results, strict=True)
    }


def lint_each(tree: Path, jobs: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """In the child: for each ``(file, text)``, write it, lint, restore; ``[(exit code, report)]``."""
    from importlinter.cli import lint_imports as run_import_linter

    results = []
    for file, text in jobs:
        path = tree / file
        original = path.read_text(encoding="utf-8")
        path.write_text(text, encoding="utf-8")
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                code = run_import_linter(str(tree / "pyproject.toml"), no_cache=True, no_logo=True)
        finally:
            path.write_text(original, encoding="utf-8")
        results.append((code, out.getvalue()))
    return results


def reported_lines(report: str, importer: str, imported: str) -> set[int]:
    """Line numbers of ``importer -> imported`` in a lint-imports report (``a -> b (l.3, l.9)``)."""
    pattern = rf"{re.escape(importer)} -> {re.escape(imported)} \(([^)]*)\)"
    return {int(n) for m in re.finditer(pattern, report) for n in re.findall(r"l\.(\d+)", m.group(1))}


def layers() -> list[list[str]]:
    """The layers contract's floors, top first, as lists of module names (parentheses dropped)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [[m.strip().strip("()") for m in re.split(r"[|:]", floor)] for floor in contract["layers"]]


def test_contracts_hold_on_the_tree() -> None:
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", proc.stdout), proc.stdout


def test_lazy_and_type_checking_imports_are_seen() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    assert config["root_packages"] == list(PACKAGES)
    assert config.get("exclude_type_checking_imports", False) is False


def test_every_room_of_workbench_is_on_a_floor() -> None:
    listed = {m for floor in layers() for m in floor}
    rooms = {
        f"workbench.{p.stem}"
        for p in (ROOT / "workbench").iterdir()
        if (p.suffix == ".py" and p.stem not in {"__init__", "__main__"}) or (p / "__init__.py").is_file()
    }
    assert rooms - listed == set(), "add these to a floor of the layers contract in pyproject.toml"
    assert "dashboards" in listed


@pytest.mark.parametrize("p", ISSUE_13 + MOVED, ids=lambda p: p.case)
def test_a_wrong_way_import_fails_the_contracts(p: Plant, outcomes: dict[str, Outcome]) -> None:
    got = outcomes[p.case]
    assert got.exit_code != 0, got.report
    assert got.line in reported_lines(got.report, p.importer, p.imported), (
        f"the report does not name {p.importer} -> {p.imported} (l.{got.line}):\n{got.report}"
    )


@pytest.mark.parametrize("p", RIGHT_WAY, ids=lambda p: p.case)
def test_a_right_way_import_is_not_reported(p: Plant, outcomes: dict[str, Outcome]) -> None:
    got = outcomes[p.case]
    assert re.search(r"Contracts: \d+ kept, \d+ broken", got.report), got.report
    assert got.line not in reported_lines(got.report, p.importer, p.imported), got.report


# The pages: Dash loads each file of dashboards/pages by path, so it is no package and grimp never sees
# it. They get the dashboard's rules here: no capture internals, no CLI, lazy imports included.
PAGE_FORBIDDEN = ("workbench.capture", "workbench.cli")


def forbidden_imports(source: str) -> list[str]:
    """Every import in ``source`` (at any depth) of a module under PAGE_FORBIDDEN."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        found += [n for n in names if any(n == f or n.startswith(f + ".") for f in PAGE_FORBIDDEN)]
    return found


def test_the_page_check_sees_lazy_imports() -> None:
    source = (
        "def cb():\n    from workbench.capture.batching import make_batch\n    import workbench.cli.app\n"
    )
    assert forbidden_imports(source) == ["workbench.capture.batching", "workbench.cli.app"]
    assert forbidden_imports("from workbench.captured import x\nimport workbench.store\n") == []


def test_pages_keep_the_dashboard_rules() -> None:
    pages = sorted((ROOT / "dashboards" / "pages").glob("*.py"))
    assert pages
    bad = {p.name: forbidden_imports(p.read_text(encoding="utf-8")) for p in pages}
    assert {name: found for name, found in bad.items() if found} == {}


if __name__ == "__main__":  # the child of the ``outcomes`` fixture: jobs as JSON on stdin
    print(json.dumps(lint_each(Path(sys.argv[1]), json.load(sys.stdin))))
