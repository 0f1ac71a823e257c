"""What a transformers release changed: the conformance sweep now against docs/supported-models.md.

``make test-latest`` runs ``python -m workbench.conformance.sweep_diff`` in a venv holding the newest
releases. Each architecture's status is printed next to the status the docs record (generated
against the locked transformers); one that passed there and does not pass now is NEWLY BROKEN, and
the exit status is 1 when any is. The docs are not rewritten: refreshing them is a decision taken
together with ``make lock``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from workbench.conformance.supported import Result, sweep

DOCS = Path("docs/supported-models.md")
_ROW = re.compile(r"^\| `([^`]+)` \|")
_STATUS = re.compile(r"\| (?:\*\*)?(pass|fail|unsupported)(?:\*\*)? \|")


def documented_status(markdown: str) -> dict[str, str]:
    """``{model_type: status}`` from the architectures table of supported-models.md."""
    found: dict[str, str] = {}
    for line in markdown.splitlines():
        row, status = _ROW.match(line), _STATUS.search(line)
        if row and status:
            found[row.group(1)] = status.group(1)
    return found


@dataclass
class Change:
    """One architecture now, and what the docs say it was ("new" when they do not list it)."""

    result: Result
    was: str

    @property
    def newly_broken(self) -> bool:
        return self.was == "pass" and self.result.status != "pass"

    @property
    def new_not_passing(self) -> bool:
        return self.was == "new" and self.result.status != "pass"

    def line(self) -> str:
        mark = "NEWLY BROKEN" if self.newly_broken else "NEW, NOT PASSING" if self.new_not_passing else ""
        r = self.result
        return f"  {r.status:<11} {r.model_type:<32} (docs: {self.was:<11}) {mark} {r.reason}".rstrip()


def compare(results: list[Result], documented: dict[str, str]) -> list[Change]:
    return [Change(r, documented.get(r.model_type, "new")) for r in results]


def main(docs: Path = DOCS) -> int:
    """Print every architecture's status against the docs; 1 when one that passed no longer does."""
    import transformers

    changes = compare(sweep(), documented_status(docs.read_text(encoding="utf-8")))
    print(f"conformance sweep against transformers {transformers.__version__} (docs: {docs}):")
    for change in changes:
        print(change.line())
    broken = [c.result.model_type for c in changes if c.newly_broken]
    new = [c.result.model_type for c in changes if c.new_not_passing]
    print(f"sweep: {len(broken)} architectures newly broken: {', '.join(broken) or 'none'}")
    print(f"sweep: {len(new)} new since the docs and not passing: {', '.join(new) or 'none'}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
