"""What the fuzz tests (tests/test_fuzz_*.py) share: their example budgets and the CLI's outcome check.

Each fuzz test asks :func:`budget` for its settings: a number of examples sized for CI (the whole
fuzz suite runs in about a minute on two cores) and a deadline per example, past which an input
counts as a hang. ``MOE_FUZZ_SCALE=20`` multiplies every budget for a longer local run; with
``HYPOTHESIS_PROFILE=dev`` the inputs are drawn afresh on each run instead of CI's fixed set
(tests/conftest.py registers both profiles).
"""

from __future__ import annotations

import os
from datetime import timedelta

from click.testing import Result
from hypothesis import settings

SCALE = float(os.environ.get("MOE_FUZZ_SCALE", "1"))
"""Multiplier of every fuzz test's example count (``MOE_FUZZ_SCALE``; 1 in CI)."""

USAGE_ERRORS = (
    "Invalid value",
    "No such option",
    "Missing option",
    "Missing argument",
    "Got unexpected",
    "No such command",
)
"""Click's own refusals of a malformed command line (a boxed ``Usage:`` message, exit code 2)."""


def budget(examples: int, seconds: float) -> settings:
    """Hypothesis settings: ``examples`` (times :data:`SCALE`) inputs, each allowed ``seconds``."""
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=timedelta(seconds=seconds))


def clear_outcome(result: Result) -> str:
    """Check a CLI result is a success or a clear refusal; returns ``"ok"``, ``"error"`` or ``"usage"``.

    A clear refusal is exit code 2 with exactly one ``error: ...`` line, the last one printed, or
    click's usage message for a malformed command line. Never a traceback, never another exit code.
    """
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{output}"
    )
    assert "Traceback" not in output, output
    if result.exit_code == 0:
        return "ok"
    assert result.exit_code == 2, f"exit code {result.exit_code}:\n{output}"
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    if errors:
        assert len(errors) == 1, output
        assert errors[0] == output.strip().splitlines()[-1], output  # the message is one line, the last
        assert len(errors[0]) > len("error: ") + 10, output  # it says something
        return "error"
    assert "Usage:" in output and any(u in output for u in USAGE_ERRORS), output
    return "usage"
