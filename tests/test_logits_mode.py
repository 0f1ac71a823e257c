"""``LogitsMode`` is declared once (workbench/capture/modes.py); the capture options and the CLI derive from it."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from typer.testing import CliRunner

from workbench.capture.engine import CaptureOptions
from workbench.capture.modes import DEFAULT_LOGITS_MODE, LOGITS_MODES, LogitsMode, logits_mode
from workbench.cli import app

pytestmark = pytest.mark.unit


def test_modes_come_from_the_type() -> None:
    assert LOGITS_MODES == get_args(LogitsMode) == ("fp32", "fp16", "none")
    assert DEFAULT_LOGITS_MODE in LOGITS_MODES and CaptureOptions().logits == DEFAULT_LOGITS_MODE
    assert [logits_mode(m) for m in LOGITS_MODES] == list(LOGITS_MODES)


@pytest.mark.parametrize("bad", ["bf16", "FP16", ""])
def test_capture_options_refuse_an_unknown_mode(bad: str) -> None:
    with pytest.raises(ValueError, match=r"logits must be fp32, fp16 or none, got"):
        CaptureOptions(logits=bad)  # type: ignore[arg-type]


def test_cli_choices_are_the_modes(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["capture", "--help"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "|".join(LOGITS_MODES) in shown.output
    refused = runner.invoke(
        app,
        [
            "capture",
            "-m",
            "x",
            "-p",
            str(tmp_path / "p.jsonl"),
            "--db",
            str(tmp_path / "d"),
            "--logits",
            "bf16",
        ],
    )
    assert refused.exit_code == 2 and "bf16" in refused.output
