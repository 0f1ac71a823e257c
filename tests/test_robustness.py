"""Bad input gets a clear error and loses nothing; a killed capture resumes without duplicates."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from workbench.capture.engine import capture, resume
from workbench.cli import app
from workbench.models.discovery import NoMoELayersError
from workbench.models.loading import ModelLoadError, load_model
from workbench.models.registry import UnknownArchitectureError
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import ProbeFileError, read_probe_file
from workbench.store import Store, StoreLockedError

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


def _many_prompts(path: Path, n: int = 60) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(
                json.dumps({"text": f"prompt {i}: " + "word " * (i % 7), "label": ["a", "b", "c"][i % 3]})
                + "\n"
            )
    return path


def _table(db: Path, run: str, name: str) -> pl.DataFrame:
    with Store(db, read_only=True) as store:
        return getattr(store, name)(run)


KILL_SEED = 15
"""Seed of the kill points (issue 15's kill -9 trials): the same points on every run."""
N_PROMPTS, BATCH = 24, 4
SCHEDULE = [
    (batch, phase) for batch in range(1, N_PROMPTS // BATCH - 1) for phase in ("writing", "committed")
]
"""Where a kill can land: during batch k's write (after its "writing" line) or after its commit."""
KILL_POINTS = random.Random(KILL_SEED).sample(SCHEDULE, 3)


@pytest.fixture(scope="module")
def clean_capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(probe, its uninterrupted capture's Parquet export): what every killed-and-resumed run must equal."""
    tmp = tmp_path_factory.mktemp("clean")
    probe = _many_prompts(tmp / "many.jsonl", N_PROMPTS)
    db = tmp / "clean.duckdb"
    capture("tiny:qwen2_moe", probe, db, run_id="clean", batch_size=BATCH, write_rows=1, progress=False)
    with Store(db, read_only=True) as store:
        store.export_parquet("clean", tmp / "export")
    return probe, tmp / "export"


def _same_tables(exported: Path, reference: Path) -> None:
    """Every table of two exported runs is equal, row for row, the run id and capture times aside."""
    names = sorted(p.name for p in reference.glob("*.parquet"))
    assert names == sorted(p.name for p in exported.glob("*.parquet")) and "routing.parquet" in names
    for name in names:
        a, b = pl.read_parquet(exported / name), pl.read_parquet(reference / name)
        ignored = [c for c in a.columns if c == "run_id" or a.schema[c] in (pl.Datetime, pl.Date)]
        a, b = a.drop(ignored), b.drop(ignored)
        if name.startswith("runs"):  # the run's own record: the config holds its name and start time
            continue
        key = [c for c in ("prompt_id", "position", "layer", "expert") if c in a.columns]
        assert a.sort(key).equals(b.sort(key)), name


@pytest.mark.parametrize(("batch", "phase"), KILL_POINTS, ids=[f"{p}-{b}" for b, p in KILL_POINTS])
def test_killed_capture_resumes_exactly(
    tmp_path: Path, clean_capture: tuple[Path, Path], batch: int, phase: str
) -> None:
    """kill -9 at a point of the write schedule; resume; every table equals the uninterrupted capture's."""
    probe, reference = clean_capture
    db = tmp_path / "killed.duckdb"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    child = subprocess.Popen(
        [sys.executable, str(HERE / "kill_child.py"), str(probe), str(db), "victim"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    seen = 0
    for line in child.stdout:
        seen += line.startswith(phase)
        if seen == batch + 1:  # batch is 0-based: batches before it are committed
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "the child must be killed mid-run"

    with Store(db, read_only=True) as store:
        info = store.run("victim")
        done = store.done_prompt_ids("victim")
        prompts = store.prompts("victim")
        tokens = store.tokens("victim")
        routing = store.routing("victim", logits=False)
    # clearly unfinished, never looks whole: its process is gone, so it reads as interrupted, with the fix
    assert info["status"] == "interrupted" and info["pid"] == child.pid
    listed = CliRunner().invoke(app, ["runs", "--db", str(db)])
    assert listed.exit_code == 0 and "interrupted" in listed.stdout
    assert f"moe-workbench resume --db {db} --run victim" in " ".join(listed.stderr.split())
    committed = batch + 1 if phase == "committed" else batch  # a write cut short commits nothing
    assert committed * BATCH <= len(done) <= (batch + 1) * BATCH < N_PROMPTS
    # every committed prompt is whole: all its tokens and all its routing rows
    assert tokens.height == prompts["n_tokens"].sum()
    assert routing.height == tokens.height * 2

    assert resume(db, "victim", progress=False) == "victim"
    with Store(db, read_only=True) as store:
        assert store.run("victim")["status"] == "complete"
        store.export_parquet("victim", tmp_path / "export")
    _same_tables(tmp_path / "export", reference)


def test_failed_capture_is_marked_and_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = _many_prompts(tmp_path / "p.jsonl", 20)
    db = tmp_path / "f.duckdb"
    loaded = load_model("tiny:qwen2_moe")
    calls = {"n": 0}
    original = Store.write_batch

    def flaky(self: Store, run_id: str, **tables: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        original(self, run_id, **tables)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "write_batch", flaky)
    with pytest.raises(OSError, match="disk full"):
        capture(loaded, probe, db, run_id="r", batch_size=4, write_rows=1, progress=False)
    monkeypatch.setattr(Store, "write_batch", original)
    info = _table(db, "r", "run")
    assert info["status"] == "failed" and "disk full" in info["error"]
    resume(db, "r", model=loaded, progress=False)
    assert _table(db, "r", "prompts").height == 20
    assert _table(db, "r", "run")["status"] == "complete"


def test_non_moe_model_is_refused() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    dense = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=300,
        )
    )
    with pytest.raises(NoMoELayersError, match="no mixture-of-experts layers"):
        load_model(dense, byte_tokenizer())


def test_unknown_architecture_lists_what_is_supported() -> None:
    class OddRouter(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    class OddBlock(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
            self.switch = OddRouter()

    class OddModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([OddBlock()])

    with pytest.raises(UnknownArchitectureError) as err:
        load_model(OddModel(), byte_tokenizer())
    message = str(err.value)
    assert "OddBlock" in message and "register_adapter" in message and "Supported block classes" in message


def test_missing_tokenizer_and_missing_model_dir(tmp_path: Path) -> None:
    model = tiny_model("qwen2_moe")
    model.save_pretrained(tmp_path / "no-tok")
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_model(str(tmp_path / "no-tok"))
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_model(str(tmp_path / "nowhere" / "x"))
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_model(model)


def test_local_directory_round_trip(tmp_path: Path) -> None:
    model = tiny_model("qwen2_moe")
    model.save_pretrained(tmp_path / "m")
    byte_tokenizer().save_pretrained(tmp_path / "m")
    assert any((tmp_path / "m").glob("*.safetensors"))
    loaded = load_model(str(tmp_path / "m"))
    assert [layer.layer for layer in loaded.layers] == [0, 1]
    ids = torch.tensor([[1, 50, 60]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize(
    ("content", "suffix", "expected"),
    [
        ('{"text": "ok", "label": "a"}\n{"text": "broken", "label": \n', ".jsonl", r":2: not valid JSON"),
        (
            '{"text": "ok", "label": "a"}\n{"text": "no label"}\n',
            ".jsonl",
            r":2: missing required field\(s\) label",
        ),
        ("", ".jsonl", "has no prompts"),
        ("text,label\nhello,a\n,b\n", ".csv", r":3: missing required field\(s\) text"),
        ("prompt,label\nhello,a\n", ".csv", "header lacks column"),
        ('{"text": "x", "label": "a", "meta": [1]}\n', ".jsonl", "meta` must be a JSON object"),
        ("text\tlabel\n", ".tsv", "unknown probe format"),
    ],
)
def test_malformed_probe_files_name_the_line(
    tmp_path: Path, content: str, suffix: str, expected: str
) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(ProbeFileError, match=expected):
        read_probe_file(path)


def test_bad_probe_creates_no_run(tmp_path: Path) -> None:
    bad = tmp_path / "empty.jsonl"
    bad.write_text("\n")
    db = tmp_path / "x.duckdb"
    with pytest.raises(ProbeFileError):
        capture("tiny:qwen2_moe", bad, db, progress=False)
    if db.exists():
        with Store(db, read_only=True) as store:
            assert store.runs().height == 0


def test_empty_prompt_iterable_creates_no_run(tmp_path: Path) -> None:
    db = tmp_path / "e.duckdb"
    with pytest.raises(ProbeFileError, match="empty"):
        capture("tiny:qwen2_moe", iter([]), db, progress=False)
    assert not db.exists()


def test_parquet_probe_file(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pl.DataFrame({"text": ["a b", "c"], "label": ["x", "y"], "pair_id": ["1", None]}).write_parquet(path)
    prompts = read_probe_file(path)
    assert [(p.prompt_id, p.label, p.pair_id) for p in prompts] == [(0, "x", "1"), (1, "y", None)]


def test_locked_db_gives_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "locked.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys, time; c = duckdb.connect({str(db)!r}); print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match="another process"):
            capture("tiny:qwen2_moe", [one_prompt()], db, progress=False)
        result = CliRunner().invoke(app, ["runs", "--db", str(db)])
        assert (
            result.exit_code == 2 and "another process" in result.output and "Traceback" not in result.output
        )
    finally:
        holder.kill()
        holder.wait()


def one_prompt():  # a single prompt, built without a file
    from workbench.probefile import Prompt

    return Prompt(0, "hello", "a")


def test_cli_capture_runs_export_and_errors(tmp_path: Path, probe_file: Path) -> None:
    runner = CliRunner()
    db = tmp_path / "cli.duckdb"
    result = runner.invoke(
        app,
        [
            "capture",
            "--model",
            "tiny:qwen2_moe",
            "--probe",
            str(probe_file),
            "--db",
            str(db),
            "--run-id",
            "cli-run",
            "--batch-size",
            "2",
            "--max-length",
            "8",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "cli-run" in result.output and "truncated" in result.output
    listed = runner.invoke(app, ["runs", "--db", str(db)])
    assert listed.exit_code == 0 and "cli-run" in listed.output and "complete" in listed.output
    exported = runner.invoke(
        app, ["export", "--db", str(db), "--run", "cli-run", "--parquet", str(tmp_path / "pq")]
    )
    assert exported.exit_code == 0
    assert pl.read_parquet(tmp_path / "pq" / "routing.parquet").height > 0
    bad = runner.invoke(
        app, ["capture", "--model", "tiny:no_such_arch", "--probe", str(probe_file), "--db", str(db)]
    )
    assert bad.exit_code == 2 and "error" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(
        app, ["export", "--db", str(db), "--run", "nope", "--parquet", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "cli-run" in missing.output  # lists the runs that exist
    helped = runner.invoke(app, ["capture", "--help"])
    assert "--expert-stats" in helped.output and "--backend" in helped.output


def test_expert_stats_on_an_unsliceable_family_fails_before_any_run(tmp_path: Path) -> None:
    from workbench.models.expert_math import ExpertStatsUnsupported

    db = tmp_path / "s.duckdb"
    with pytest.raises(ExpertStatsUnsupported, match="expert-stats is not available"):
        capture("tiny:gpt_oss", [one_prompt()], db, expert_stats=True, progress=False)
    assert not db.exists()
