"""The README's Python runs as written: every ```python block, in order, in one namespace.

A user types the README's examples top to bottom; this does the same, in a temporary working directory
that sees the repository's ``probes/`` (the examples name files relative to the repository root), with
the committed reference model tiny-ref. A block that raises fails here with its README line, so the
README cannot drift from the API again. No block is skipped: none needs a GPU or the hub.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Every ```python block of ``text`` as (1-based line of its first code line, code), in order."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def test_blocks_are_found_with_their_lines() -> None:
    text = "intro\n```python\na = 1\n```\n\n```bash\nls\n```\n```python\nb = 2\nc = 3\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (10, "b = 2\nc = 3\n")]


def test_readme_python_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3, "README.md lost its Python examples (or the fence pattern no longer finds them)"
    (tmp_path / "probes").symlink_to(ROOT / "probes", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for line, code in blocks:
        # padded to its README line, so a traceback points at the line a reader sees
        exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)
    # what the examples say they produce is there
    assert (tmp_path / "runs.duckdb").is_file()
    for report in ("report.html", "refusal.html"):
        assert "<html" in (tmp_path / report).read_text(encoding="utf-8")[:2000].lower()
    import workbench as wb

    with wb.open(tmp_path / "runs.duckdb") as db:
        runs = db.runs()
        assert runs.height == 4 and set(runs["status"]) == {"complete"}
        labels = db.prompts(runs["run_id"][-1])  # the run captured from a string and a dict
        assert labels["label"].to_list() == ["unlabelled", "math"]
