"""Set-up and commands without surprises: scratch outputs, `experiment mote --quick`, devices, help texts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from workbench.cli import app
from workbench.interventions.mote import Steps

pytestmark = pytest.mark.unit


def _one_line_error(result: Any, says: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], result.output


@pytest.mark.parametrize(
    "args",
    [
        ["experiment", "mote", "--device", "{device}"],
        [
            "analyse",
            "expert-similarity",
            "--db",
            "x.duckdb",
            "--run",
            "r",
            "--model",
            "tiny-ref",
            "--device",
            "{device}",
        ],
    ],
    ids=["experiment", "analyse"],
)
@pytest.mark.parametrize("device", ["nonsense", "cuda"])
def test_a_device_that_is_not_there_is_one_line(
    args: list[str], device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`capture --device` is in tests/test_bad_inputs.py; these load a model too. No CUDA here, even on a GPU box."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    result = CliRunner().invoke(app, [a.replace("{device}", device) for a in args])
    expected = {
        "nonsense": "error: unknown device 'nonsense'; use cpu, cuda, cuda:N or mps",
        "cuda": "error: device 'cuda': this machine has no CUDA device",
    }[device]
    _one_line_error(result, expected)


def test_zoo_train_writes_to_scratch_unless_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench.zoo.tiny_ref as tiny_ref

    built: list[Path] = []
    monkeypatch.setattr(tiny_ref, "build", lambda out, *a, **k: built.append(Path(out)) or Path(out))
    monkeypatch.setenv("MOE_WORKBENCH_SCRATCH", str(tmp_path / "scratch"))
    default = CliRunner().invoke(app, ["zoo", "train", "tiny-ref", "--no-card"])
    assert default.exit_code == 0, default.output
    (folder,) = (tmp_path / "scratch").glob("tiny-ref-*")
    assert built == [folder]
    said = " ".join(default.stderr.split())
    assert (
        f"training into the scratch folder {folder} (--out datasets/tiny-ref replaces the committed model)"
        in said
    )
    told = CliRunner().invoke(app, ["zoo", "train", "tiny-ref", "--no-card", "--out", str(tmp_path / "mine")])
    assert told.exit_code == 0 and built[-1] == tmp_path / "mine" and "scratch" not in told.stderr


def test_mote_quick_sizes_and_explicit_options_win(monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench.interventions.mote as mote
    import workbench.models.loading as loading
    from workbench.cli.experiment_cmd import QUICK

    class Ran(Exception):
        pass

    def fake_run(loaded: object, config: Any, log: object = None) -> None:
        raise Ran(config)

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: "LOADED")
    monkeypatch.setattr(mote, "run_mote", fake_run)
    result = CliRunner().invoke(app, ["experiment", "mote", "--quick", "--out", "unused.md"])
    config = result.exception.args[0] if isinstance(result.exception, Ran) else None
    assert config is not None, result.output
    assert config.doses == tuple(int(x) for x in QUICK["doses"].split(","))
    assert (config.n_controls, config.n_select, config.n_domain) == (
        QUICK["controls"],
        QUICK["pairs"],
        QUICK["domain_prompts"],
    )
    assert ",".join(config.scorers) == QUICK["scorers"] and "causal-greedy" not in config.scorers
    explicit = CliRunner().invoke(
        app, ["experiment", "mote", "--quick", "--pairs", "40", "--out", "unused.md"]
    )
    assert isinstance(explicit.exception, Ran) and explicit.exception.args[0].n_select == 40


def test_steps_report_time_so_far_and_left() -> None:
    said: list[str] = []
    now = iter([0.0, 30.0, 50.0, 200.0])  # start, then each step's end
    steps = Steps(3, said.append, clock=lambda: next(now))
    steps.step("scoring")
    steps.step("N=1")
    steps.step("N=2")
    assert said == [
        "[1/3] scoring done: 30 s so far, about 1 min 0 s left",  # 30 s per step, 2 to go
        "[2/3] N=1 done: 50 s so far, about 25 s left",
        "[3/3] N=2 done: 3 min 20 s so far",
    ]


def test_serve_help_names_the_lab_and_circuits() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    assert re.search(r"intervention lab \(/lab\)", text) and "circuits (/circuits)" in text


def test_a_capture_into_a_store_this_process_reads_says_so_before_loading(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook with `db = wb.open(...)` open: the capture refuses at once, saying what to close."""
    import workbench as wb
    import workbench.capture.engine as engine
    from workbench.store import Store, StoreError

    Store(db).close()
    monkeypatch.setattr(engine, "prepare_model", lambda *a, **k: pytest.fail("the model was loaded first"))
    reader = wb.open(db)
    assert Store.held_read_only(db)
    with pytest.raises(
        StoreError, match=r"is open read-only in this process .*close it first \(db\.close\(\)"
    ):
        wb.capture_routing("tiny-ref", ["a prompt"], db)
    reader.close()
    assert not Store.held_read_only(db)
