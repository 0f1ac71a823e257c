"""docs/methods.md is the project's methods reference: it covers every analysis and intervention.

A new catalog entry (workbench/catalog/entries.py) without a section here, or a new intervention spec that the document
never names, fails these tests. The document must also stand on its own: it may not send readers
to files outside the repository (the design note it replaced lived outside it).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from workbench.catalog import ANALYSES
from workbench.interventions.specs import SPEC_CLASSES, Ablate

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "methods.md"


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _headings() -> list[str]:
    return [line for line in _text().splitlines() if re.match(r"#{2,4} ", line)]


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_every_catalogued_analysis_has_a_section(name: str) -> None:
    matching = [h for h in _headings() if f"`{name}`" in h]
    assert matching, f"docs/methods.md has no heading naming analysis `{name}` in backticks"
    assert len(matching) == 1, f"analysis `{name}` has several sections: {matching}"


def test_sections_carry_the_catalog_chapter() -> None:
    """Each analysis' section sits under the chapter its catalog entry cites (``§N``)."""
    chapter = ""
    found: dict[str, str] = {}
    for line in _text().splitlines():
        if m := re.match(r"## (§\d+) ", line):
            chapter = m.group(1)
        elif line.startswith("### "):
            for name in ANALYSES:
                if f"`{name}`" in line:
                    found[name] = chapter
    wrong = {n: (found.get(n), s.section) for n, s in ANALYSES.items() if found.get(n) != s.section}
    assert not wrong, f"analysis sections under the wrong chapter (found, catalog): {wrong}"


@pytest.mark.parametrize("cls", sorted({*SPEC_CLASSES.values(), Ablate}, key=lambda c: c.__name__))
def test_every_intervention_spec_is_described(cls: type) -> None:
    assert f"`{cls.__name__}`" in _text(), (
        f"docs/methods.md never names the intervention spec `{cls.__name__}`"
    )


def test_every_section_names_a_test() -> None:
    """Each analysis section points at the tests that check it (``tests/...::test_...``)."""
    text = _text()
    for name in ANALYSES:
        heading = next(h for h in _headings() if f"`{name}`" in h)
        body = text.split(heading, 1)[1]
        body = re.split(r"\n#{2,3} ", body, maxsplit=1)[0]
        assert "test_" in body, f"the section on `{name}` names no test"


def test_no_references_users_cannot_open() -> None:
    text = _text()
    assert "METHODS.md" not in text
    assert "../shared" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):  # relative Markdown links must resolve
        if "://" not in target:
            assert (DOC.parent / target).exists(), f"broken link in docs/methods.md: {target}"


def _user_facing(path: Path) -> str:
    """The file's text; for Python, without its module docstring (developer notes, never shown to users)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return text
    body = ast.parse(text).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        lines = text.splitlines(keepends=True)
        return "".join(lines[body[0].end_lineno or 0 :])
    return text


def test_user_facing_references_point_to_the_methods_doc() -> None:
    """README, docs, CLI help, report footers and the notebook cite docs/methods.md, not METHODS.md."""
    paths = [ROOT / "README.md", *(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "docs").rglob("*.md")]
    paths += [*(ROOT / "workbench" / "cli").glob("*.py"), *(ROOT / "workbench" / "reports").glob("*.py")]
    offenders = [str(p.relative_to(ROOT)) for p in paths if re.search(r"METHODS(\.md| §)", _user_facing(p))]
    assert not offenders, f"still citing METHODS.md: {offenders}"


def test_tcess_has_one_expansion() -> None:
    """TCESS is spelled out one way only (PreMoe's "task-conditioned expected selection score")."""
    expansion = "task-conditioned expected selection score"
    assert expansion in ANALYSES["tcess"].summary.lower()
    assert expansion in _text().lower()
    other = re.compile(r"token[- ]condition\w*|conditional expert selection", re.I)
    spelled = re.compile(r"((?:[\w-]+\s+){2,4}[\w-]+)\s*\(TCESS\)")  # "three to five words (TCESS)"
    found = []
    for folder in ("workbench", "dashboards", "docs", "notebooks", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md", ".ipynb"} and path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")
                found += [f"{path.relative_to(ROOT)}: {m.group(0)!r}" for m in other.finditer(text)]
                found += [
                    f"{path.relative_to(ROOT)}: {m.group(0)!r}"
                    for m in spelled.finditer(text)
                    if not m.group(1).lower().endswith(expansion)
                ]
    assert not found, f"another expansion of TCESS: {found}"
