"""No input aborts a capture with a traceback: each bad input gets one clear line (docs/reliability.md).

Every case runs through the CLI (or the API where the CLI cannot reach it) and checks the message
says what was wrong, that it is one line, and what was (not) left in the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner, Result

from workbench.capture.engine import capture
from workbench.capture.finite import NonFiniteRoutingError
from workbench.cli import app
from workbench.models.loading import load_model
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import ProbeFileError, Prompt, read_probe_file
from workbench.store import Store

pytestmark = pytest.mark.integration

runner = CliRunner()


def _capture(*args: str) -> Result:
    return runner.invoke(app, ["capture", "-m", "tiny:qwen2_moe", "-q", *args])


def _one_error_line(result: Result, *expected: str) -> str:
    """The single ``error:`` line of a failed command, checked to hold each of ``expected``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    line = errors[0]
    assert line == result.output.strip().splitlines()[-1]  # nothing after it: the message is one line
    for part in expected:
        assert part in line, line
    return line


def _lines(path: Path, rows: list[object], raw_tail: bytes = b"") -> Path:
    path.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode() + raw_tail)
    return path


GOOD = [{"text": f"prompt {i}", "label": "a"} for i in range(40)]


# -- the probe file is validated whole before the run starts ---------------------------------------


def test_lone_surrogate_names_the_line_and_creates_no_run(tmp_path: Path) -> None:
    probe = _lines(tmp_path / "p.jsonl", GOOD, b'{"text": "broken \\ud800 here", "label": "a"}\n')
    db = tmp_path / "s.duckdb"
    _one_error_line(
        _capture("-p", str(probe), "--db", str(db)),
        f"{probe}:41: `text` holds a lone surrogate U+D800 at character 8, which is not valid Unicode",
    )
    assert not db.exists()  # refused before any run existed (the bad line is the last of 41)
    with pytest.raises(ProbeFileError, match=r"`label` holds a lone surrogate U\+DC00"):
        capture("tiny:qwen2_moe", [Prompt(0, "fine", "a\udc00")], tmp_path / "py.duckdb", progress=False)
    assert not (tmp_path / "py.duckdb").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_invalid_utf8_names_the_line(tmp_path: Path, suffix: str) -> None:
    good = "text,label\nhello,a\n" if suffix == ".csv" else '{"text": "hello", "label": "a"}\n'
    bad = b"caf\xe9,a\n" if suffix == ".csv" else b'{"text": "caf\xe9", "label": "a"}\n'
    probe = tmp_path / f"p{suffix}"
    probe.write_bytes(good.encode() + bad)
    line = 3 if suffix == ".csv" else 2
    column = 4 if suffix == ".csv" else 14
    _one_error_line(
        _capture("-p", str(probe), "--db", str(tmp_path / "s.duckdb")),
        f"{probe}:{line}: not valid UTF-8 (byte 0xe9 at column {column}); save the file as UTF-8",
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_utf8_bom_is_accepted_and_dropped(tmp_path: Path, suffix: str) -> None:
    body = "text,label\nhello,a\n" if suffix == ".csv" else '{"text": "hello", "label": "a"}\n'
    probe = tmp_path / f"p{suffix}"
    probe.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert read_probe_file(probe)[0].text == "hello"
    result = _capture("-p", str(probe), "--db", str(tmp_path / "s.duckdb"))
    assert result.exit_code == 0, result.output


def test_probe_pointing_at_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "probes.jsonl"
    folder.mkdir()
    _one_error_line(
        _capture("-p", str(folder), "--db", str(tmp_path / "s.duckdb")),
        f"error: {folder}: is a directory; give a probe file (.jsonl, .csv or .parquet)",
    )


# -- prompts longer than the model's context ---------------------------------------------------


def test_prompts_longer_than_the_context_are_truncated_with_a_warning_naming_them(tmp_path: Path) -> None:
    rows = [
        {"text": "short", "label": "a"},
        {"text": "x" * 2000, "label": "a"},
        {"text": "y" * 600, "label": "b"},
    ]
    probe = _lines(tmp_path / "p.jsonl", rows)
    db = tmp_path / "s.duckdb"
    assert load_model("tiny:qwen2_moe").model.config.max_position_embeddings == 512
    result = _capture("-p", str(probe), "--db", str(db), "--run-id", "r")
    assert result.exit_code == 0, result.output
    assert (
        "warning: 2 prompt(s) truncated: prompt_id 1, 2 (first: prompt 1 has 2001 tokens; truncated to the "
        "model's context (512 tokens))" in result.output
    )
    with Store(db, read_only=True) as store:
        short = len(byte_tokenizer()("short")["input_ids"])
        assert store.prompts("r")["n_tokens"].to_list() == [short, 512, 512]
    # --max-length below the context: the warning names --max-length, not the context
    capped = _capture("-p", str(probe), "--db", str(db), "--max-length", "100")
    assert "(first: prompt 1 has 2001 tokens; truncated to --max-length (100 tokens))" in capped.output


# -- non-finite router outputs -------------------------------------------------------------------


def _nan_on_hash(loaded: object) -> None:
    """Make every token after a '#' (byte token) produce NaN hidden states, hence NaN routing."""
    model = loaded.model  # type: ignore[attr-defined]
    hash_id = byte_tokenizer()("#")["input_ids"][-1]

    def poison(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        hit = (args[0] == hash_id).unsqueeze(-1)
        return output.masked_fill(hit, float("nan"))

    model.get_input_embeddings().register_forward_hook(poison)


def test_nonfinite_routing_stops_the_capture_and_keeps_the_batches_before(tmp_path: Path) -> None:
    loaded = load_model("tiny:qwen2_moe")
    _nan_on_hash(loaded)
    prompts = [Prompt(i, f"prompt {i}" + (" #" if i == 9 else ""), "a") for i in range(12)]
    db = tmp_path / "s.duckdb"
    with pytest.raises(NonFiniteRoutingError) as err:
        capture(loaded, prompts, db, run_id="r", batch_size=4, progress=False)
    message = str(err.value)
    row = len(byte_tokenizer()(prompts[9].text)["input_ids"])  # NaN reaches the whole row through attention
    assert message.startswith(f"layer 0: {row} of ") and "first at prompt_id 9 position 0" in message
    assert "--allow-nonfinite" in message
    with Store(db, read_only=True) as store:
        info = store.run("r")
        assert info["status"] == "failed" and "NonFiniteRoutingError" in info["error"]
        assert sorted(store.done_prompt_ids("r")) == list(range(8))  # the batches before it are kept
        weights = store.routing("r")["weights"].explode()
        assert weights.is_finite().all()

    flagged = capture(loaded, prompts, db, run_id="f", batch_size=4, allow_nonfinite=True, progress=False)
    with Store(db, read_only=True) as store:
        assert store.run(flagged)["status"] == "complete"
        assert store.run(flagged)["config"]["options"]["allow_nonfinite"] is True
        routing = store.routing(flagged).filter(pl.col("prompt_id") == 9)
        assert routing["weights"].explode().is_nan().any()  # recorded as it came


def test_nan_weights_through_the_cli(tmp_path: Path) -> None:
    model_dir = tmp_path / "nan-model"
    model = tiny_model("qwen2_moe")
    loaded = load_model(model, byte_tokenizer())
    loaded.layers[1].router.weight.data.fill_(float("nan"))  # type: ignore[union-attr, operator]
    model.save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    probe = _lines(tmp_path / "p.jsonl", GOOD[:3])
    db = tmp_path / "s.duckdb"
    args = ["capture", "-m", str(model_dir), "-p", str(probe), "--db", str(db), "-q", "--skip-routing-check"]
    _one_error_line(
        runner.invoke(app, args),
        "error: layer 1: ",
        "non-finite gate weights (NaN or inf), first at prompt_id 0",
    )
    allowed = runner.invoke(app, [*args, "--allow-nonfinite"])
    assert allowed.exit_code == 0, allowed.output


# -- model, device and store paths ---------------------------------------------------------------


def test_corrupted_safetensors(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    tiny_model("qwen2_moe").save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    weights = next(model_dir.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated mid-download
    probe = _lines(tmp_path / "p.jsonl", GOOD[:2])
    result = runner.invoke(
        app, ["capture", "-m", str(model_dir), "-p", str(probe), "--db", str(tmp_path / "s.duckdb"), "-q"]
    )
    _one_error_line(
        result, f"a safetensors file of '{model_dir}' is damaged (", "download or save the checkpoint again"
    )


@pytest.mark.parametrize("device", ["nonsense", "cuda", "cuda:7"])
def test_devices_that_are_not_there(tmp_path: Path, device: str) -> None:
    probe = _lines(tmp_path / "p.jsonl", GOOD[:2])
    result = _capture("-p", str(probe), "--db", str(tmp_path / "s.duckdb"), "--device", device)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "nonsense":
        _one_error_line(result, "error: unknown device 'nonsense'; use cpu, cuda, cuda:N or mps")
    elif count == 0:
        _one_error_line(result, f"error: device '{device}': this machine has no CUDA device")
    elif device == "cuda:7" and count <= 7:
        _one_error_line(result, f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    else:  # the device exists: the capture runs
        assert result.exit_code == 0, result.output


def test_db_whose_directory_cannot_be_created(tmp_path: Path) -> None:
    probe = _lines(tmp_path / "p.jsonl", GOOD[:2])
    a_file = tmp_path / "file"
    a_file.write_text("")
    _one_error_line(
        _capture("-p", str(probe), "--db", str(a_file / "s.duckdb")),
        f"error: --db {a_file / 's.duckdb'}: {a_file} is a file, not a directory",
    )
    _one_error_line(
        _capture("-p", str(probe), "--db", "/proc/no-such/dir/s.duckdb"),
        "error: --db /proc/no-such/dir/s.duckdb: cannot create the directory /proc/no-such/dir (",
    )


@pytest.fixture(scope="module")
def damaged_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one run, then cut short (a copy interrupted, a disk that filled).

    The cut keeps the file headers and part of the first 256 KiB block. Cutting at half the bytes
    was not enough since schema v5: where DuckDB places the blocks varies between captures, and
    the runs table sometimes sat in the first half, so `runs` still read it.
    """
    tmp = tmp_path_factory.mktemp("damaged")
    db = tmp / "s.duckdb"
    capture(
        "tiny:qwen2_moe", [Prompt(i, f"prompt {i}", "a") for i in range(8)], db, run_id="r", progress=False
    )
    raw = db.read_bytes()
    assert len(raw) > 300 << 10
    db.write_bytes(raw[: 300 << 10])
    return db


@pytest.mark.parametrize(
    "args",
    [
        ["runs"],
        ["analyse", "load", "--run", "r"],
        ["report", "--run", "r", "--out", "{tmp}/r.html"],
        ["export", "--run", "r", "--parquet", "{tmp}/pq"],
    ],
)
def test_a_truncated_store(damaged_store: Path, tmp_path: Path, args: list[str]) -> None:
    command = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, [*command, "--db", str(damaged_store)])
    _one_error_line(
        result,
        f"error: store {damaged_store}: IO Error: ",
        "If the store is truncated or corrupted",
        "restore it",
    )


def test_an_output_that_cannot_be_written_is_not_blamed_on_the_store(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    capture("tiny:qwen2_moe", [Prompt(0, "hello", "a")], db, run_id="r", progress=False)
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = runner.invoke(app, ["report", "--db", str(db), "--run", "r", "--out", str(a_file / "r.html")])
    line = _one_error_line(result, f"error: {a_file}")
    assert "store" not in line


def test_runs_prune_removes_failed_runs_without_rows(tmp_path: Path) -> None:
    loaded = load_model("tiny:qwen2_moe")
    _nan_on_hash(loaded)
    db = tmp_path / "s.duckdb"
    capture(loaded, [Prompt(0, "fine", "a")], db, run_id="kept", progress=False)
    with pytest.raises(NonFiniteRoutingError):  # fails at its first batch: nothing to resume
        capture(loaded, [Prompt(0, "# at once", "a")], db, run_id="empty", progress=False)
    with pytest.raises(NonFiniteRoutingError):  # fails after one batch: resumable, kept
        capture(
            loaded,
            [Prompt(0, "ok", "a"), Prompt(1, "#", "a")],
            db,
            run_id="partial",
            batch_size=1,
            progress=False,
        )
    listed = runner.invoke(app, ["runs", "--db", str(db)])
    assert listed.exit_code == 0
    assert (
        f"1 run(s) are not complete and hold no rows (empty): moe-workbench runs --db {db} --prune"
        in listed.output
    )
    pruned = runner.invoke(app, ["runs", "--db", str(db), "--prune"])
    assert pruned.exit_code == 0 and "removed 1 run(s) that held no rows: empty" in pruned.output
    with Store(db, read_only=True) as store:
        assert store.runs()["run_id"].sort().to_list() == ["kept", "partial"]
    again = runner.invoke(app, ["runs", "--db", str(db)])
    assert "hold no rows" not in again.output


def test_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    db = tmp_path / "notes.duckdb"
    db.write_text("not a database\n" * 100)
    _one_error_line(
        runner.invoke(app, ["runs", "--db", str(db)]), f"error: cannot open store {db}: ", "not a valid"
    )
