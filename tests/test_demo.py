"""`make demo`: the port is checked before the capture, and a complete, current demo.duckdb is reused."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from workbench.capture.engine import capture
from workbench.cli import demo
from workbench.models.loading import load_model
from workbench.store import Store, copy_store

pytestmark = pytest.mark.integration


def test_a_taken_port_is_replaced_by_a_free_one() -> None:
    with socket.socket() as holder:
        holder.bind((demo.HOST, 0))
        holder.listen()
        taken = holder.getsockname()[1]
        other = demo.free_port(demo.HOST, taken)
        assert other != taken and other > 0
    assert demo.free_port(demo.HOST, taken) == taken  # free again once released


def test_port_comes_from_make_or_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT", raising=False)
    assert demo.parse_args([]).port == demo.PORT
    monkeypatch.setenv("PORT", "9000")  # make demo PORT=9000 passes --port too; the variable alone works
    assert demo.parse_args([]).port == 9000 and demo.parse_args(["--port", "81"]).port == 81


def test_the_port_is_settled_before_the_capture(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A taken port is said at once: the capture (minutes) has not started when the message is printed."""

    class Started(Exception):
        pass

    def no_capture(*args: object, **kwargs: object) -> str:
        raise Started(capsys.readouterr().out)

    monkeypatch.setattr(demo, "capture", no_capture)
    with socket.socket() as holder:
        holder.bind((demo.HOST, 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(Started) as started:
            demo.main(
                [
                    "--db",
                    str(tmp_path / "d.duckdb"),
                    "--port",
                    str(taken),
                    "--serve",
                    "--model",
                    "tiny:qwen2_moe",
                ]
            )
    printed = str(started.value)
    assert f"port {taken} is taken on {demo.HOST}; the dashboard will use port " in printed


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    tmp = tmp_path_factory.mktemp("demo")
    probe = tmp / "mini.jsonl"
    probe.write_text(
        "".join(json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) + "\n" for i in range(4))
    )
    loaded = load_model("tiny:qwen2_moe")
    db = tmp / "demo.duckdb"
    capture(loaded, probe, db, run_id="tiny:qwen2_moe-mini", expert_stats=True, progress=False)
    return db, probe, loaded


def test_complete_current_runs_are_reused(demo_store: tuple[Path, Path, object]) -> None:
    db, probe, loaded = demo_store
    runs, why = demo.reusable_runs(db, loaded, "tiny:qwen2_moe", {"mini": probe})  # type: ignore[arg-type]
    assert runs == {"mini": "tiny:qwen2_moe-mini"}
    assert (
        why
        == "its runs tiny:qwen2_moe-mini are complete and current (same weights, prompts and store schema)"
    )


def test_runs_that_are_not_current_are_captured_again(
    demo_store: tuple[Path, Path, object], tmp_path: Path
) -> None:
    db, probe, loaded = demo_store
    model = "tiny:qwen2_moe"

    def why(path: Path = db, probes: dict[str, Path] | None = None) -> str:
        runs, reason = demo.reusable_runs(path, loaded, model, probes or {"mini": probe})  # type: ignore[arg-type]
        assert runs is None
        return reason

    assert why(tmp_path / "none.duckdb") == f"{tmp_path / 'none.duckdb'} does not exist yet"
    edited = tmp_path / "edited.jsonl"
    edited.write_text(probe.read_text().replace("text 3", "text 33"))
    assert (
        why(probes={"mini": edited})
        == f"run {model}-mini was captured from other prompts than {edited} holds now"
    )
    assert why(probes={"other": probe}).startswith(f"no run '{model}-other' in the store")
    param = next(loaded.model.parameters())  # type: ignore[attr-defined]
    with torch.no_grad():
        param.add_(1.0)
        try:
            assert why() == f"run {model}-mini was captured from other weights of {model}"
        finally:
            param.sub_(1.0)
    copy = copy_store(db, tmp_path / "copy.duckdb")
    with Store(copy) as st:  # the same run, failed
        st.con.execute("UPDATE runs SET status = 'failed'")
    assert why(copy) == f"run {model}-mini is failed, not complete"


def test_makefile_passes_port_and_fresh() -> None:
    import subprocess

    repo = Path(__file__).resolve().parent.parent

    def dry(*args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("PORT", "FRESH", "SERVE", "MAKEFLAGS")}
        done = subprocess.run(
            ["make", "-n", "-C", str(repo), "demo", *args], capture_output=True, text=True, env=env
        )
        return done.stdout

    told = dry("PORT=8123", "FRESH=1")
    assert "--port 8123" in told and "--fresh" in told
    plain = dry()
    assert "workbench.cli.demo" in plain and "--port" not in plain and "--fresh" not in plain
