"""Resume never mixes data: a changed probe file or other weights are refused, a moved file is accepted.

Each test interrupts a capture after two committed batches (a simulated write failure), changes
something, resumes, and checks both the verdict and that the store then holds exactly what a clean
capture of the original prompts holds (or, when refused, exactly what it held before).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from workbench.capture.engine import capture, resume
from workbench.capture.integrity import ResumeMismatchError, UnverifiedResumeWarning
from workbench.cli import app
from workbench.models.loading import load_model
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt, read_probe_file
from workbench.store import Store

pytestmark = pytest.mark.integration

N = 24  # prompts; batches of 4, interrupted after 2 batches (8 prompts captured)


def _rows(kind: str, n: int = N) -> list[dict[str, object]]:
    return [{"text": f"{kind} prompt number {i} " + "word " * (i % 5), "label": kind} for i in range(n)]


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _interrupt(model: object, probe: object, db: Path, run: str = "r") -> None:
    """Capture until the third store write fails (simulated disk full): 8 prompts committed, run failed."""
    original = Store.write_batch
    calls = {"n": 0}

    def flaky(self: Store, run_id: str, **tables: object) -> None:
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError("disk full (simulated)")
        original(self, run_id, **tables)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "write_batch", flaky)
        with pytest.raises(OSError, match="disk full"):
            capture(model, probe, db, run_id=run, batch_size=4, write_rows=1, progress=False)  # type: ignore[arg-type]
    with Store(db, read_only=True) as store:
        assert store.run(run)["status"] == "failed"
        assert len(store.done_prompt_ids(run)) == 8


def _state(db: Path, run: str = "r") -> tuple[str, pl.DataFrame, pl.DataFrame]:
    with Store(db, read_only=True) as store:
        return (
            store.run(run)["status"],
            store.prompts(run).select("prompt_id", "text", "label").sort("prompt_id"),
            store.routing(run, logits=False).sort("prompt_id", "position", "layer"),
        )


def _clean(model: object, rows: list[dict[str, object]], tmp: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    probe = _write(tmp / "clean" / "p.jsonl", rows)
    db = tmp / "clean" / "c.duckdb"
    capture(model, probe, db, run_id="r", batch_size=4, progress=False)  # type: ignore[arg-type]
    _, prompts, routing = _state(db)
    return prompts, routing


def _assert_equal_to_clean(db: Path, clean: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    status, prompts, routing = _state(db)
    assert status == "complete"
    assert prompts.equals(clean[0])  # every prompt once, each from the original file
    assert routing.equals(clean[1])


def test_resume_from_another_directory_reads_the_recorded_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model("tiny:qwen2_moe")
    prose = _rows("prose")
    _write(tmp_path / "a" / "probe.jsonl", prose)
    _write(tmp_path / "b" / "probe.jsonl", _rows("refusal"))  # the same relative name, other prompts
    db = tmp_path / "s.duckdb"
    monkeypatch.chdir(tmp_path / "a")
    _interrupt(loaded, "probe.jsonl", db)  # typed as a relative path
    with Store(db, read_only=True) as store:
        info = store.run("r")
    assert info["probe"] == str(tmp_path / "a" / "probe.jsonl")  # stored resolved
    assert info["config"]["integrity"]["probe"]["n_prompts"] == N
    monkeypatch.chdir(tmp_path / "b")
    resume(db, "r", model=loaded, progress=False)
    _assert_equal_to_clean(db, _clean(loaded, prose, tmp_path))


def test_resume_refuses_a_file_edited_in_place_and_writes_nothing(tmp_path: Path) -> None:
    loaded = load_model("tiny:qwen2_moe")
    rows = _rows("prose")
    probe = _write(tmp_path / "probe.jsonl", rows)
    db = tmp_path / "s.duckdb"
    _interrupt(loaded, probe, db)
    before = _state(db)
    edited = [*rows[:20], {"text": "an edited prompt", "label": "prose"}, *rows[21:]]  # not captured yet
    _write(probe, edited)
    with pytest.raises(ResumeMismatchError) as err:
        resume(db, "r", model=loaded, progress=False)
    message = str(err.value)
    assert str(probe) in message and "24 prompts at capture, 24 now" in message and "--probe" in message
    assert "captured prompts differ" not in message  # the captured ones did not change
    after = _state(db)
    assert after[0] == "failed" and after[1].equals(before[1]) and after[2].equals(before[2])

    # a captured prompt edited too: the message says which
    _write(probe, [{"text": "edited first prompt", "label": "prose"}, *edited[1:]])
    with pytest.raises(
        ResumeMismatchError, match=r"1 of the 8 captured prompts differ \(first: prompt_id 0\)"
    ):
        resume(db, "r", model=loaded, progress=False)

    # the original content back (even written differently: other key order, a BOM): accepted
    probe.write_bytes(
        b"\xef\xbb\xbf"
        + "".join(json.dumps({"label": r["label"], "text": r["text"]}) + "\n" for r in rows).encode()
    )
    resume(db, "r", model=loaded, progress=False)
    _assert_equal_to_clean(db, _clean(loaded, rows, tmp_path))


def test_moved_file_is_accepted_with_probe_and_another_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    tiny_model("qwen2_moe").save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    rows = _rows("prose")
    probe = _write(tmp_path / "probe.jsonl", rows)
    db = tmp_path / "s.duckdb"
    _interrupt(str(model_dir), probe, db)
    moved = tmp_path / "elsewhere" / "renamed.csv"  # moved, renamed and converted: the same prompts
    moved.parent.mkdir()
    with moved.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    probe.unlink()
    runner = CliRunner()
    gone = runner.invoke(app, ["resume", "--db", str(db), "--run", "r", "-q"])
    assert gone.exit_code == 2 and "Traceback" not in gone.output
    assert f"probe file {probe} of run 'r' is not there" in gone.output and "--probe FILE" in gone.output

    other = _write(tmp_path / "other.jsonl", _rows("refusal"))
    refused = runner.invoke(app, ["resume", "--db", str(db), "--run", "r", "--probe", str(other), "-q"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert f"{other} is not the probe file run 'r' was captured from (the run read {probe})" in refused.output
    assert "8 of the 8 captured prompts differ" in refused.output
    assert _state(db)[0] == "failed" and len(_state(db)[1]) == 8

    accepted = runner.invoke(app, ["resume", "--db", str(db), "--run", "r", "--probe", str(moved), "-q"])
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stdout.strip() == "r" and "warning" not in accepted.output
    _assert_equal_to_clean(db, _clean(load_model(str(model_dir)), rows, tmp_path))


def test_changed_model_is_refused_and_a_moved_one_accepted(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    original = tiny_model("qwen2_moe")
    original.save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    rows = _rows("prose")
    probe = _write(tmp_path / "probe.jsonl", rows)
    db = tmp_path / "s.duckdb"
    _interrupt(str(model_dir), probe, db)
    with Store(db, read_only=True) as store:
        recorded = store.run("r")["config"]
    assert recorded["model_source"] == str(model_dir)  # absolute
    assert recorded["integrity"]["model"]["unsampled"] == 0

    # the same architecture and shapes, other weights (another seed), saved over the original
    shutil.move(model_dir, tmp_path / "moved-model")
    tiny_model("qwen2_moe", seed=1).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    runner = CliRunner()
    refused = runner.invoke(app, ["resume", "--db", str(db), "--run", "r", "-q"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert f"model {model_dir} does not have the weights run 'r' was captured with" in refused.output
    assert _state(db)[0] == "failed" and len(_state(db)[1]) == 8

    # one router's weights scaled in place: the same files' sizes and headers, other values
    changed = load_model(str(tmp_path / "moved-model"))
    router = changed.layers[0].router
    router.weight.data.mul_(2.0)  # type: ignore[union-attr, operator]
    with pytest.raises(ResumeMismatchError, match="does not have the weights"):
        resume(db, "r", model=changed, progress=False)

    accepted = runner.invoke(
        app, ["resume", "--db", str(db), "--run", "r", "--model", str(tmp_path / "moved-model"), "-q"]
    )
    assert accepted.exit_code == 0, accepted.output
    _assert_equal_to_clean(db, _clean(load_model(str(tmp_path / "moved-model")), rows, tmp_path))


def test_prompts_from_python_are_checked_where_they_can_be(tmp_path: Path) -> None:
    loaded = load_model("tiny:qwen2_moe")
    prompts = [Prompt(i, str(r["text"]), str(r["label"])) for i, r in enumerate(_rows("prose"))]
    db = tmp_path / "s.duckdb"
    _interrupt(loaded, prompts, db)
    with pytest.raises(ValueError, match="captured prompts from Python; pass them again"):
        resume(db, "r", model=loaded, progress=False)
    swapped = [Prompt(0, "another text", "prose"), *prompts[1:]]
    with pytest.raises(
        ResumeMismatchError, match=r"1 of the 8 captured prompts differ \(first: prompt_id 0\)"
    ):
        resume(db, "r", model=loaded, probes=swapped, progress=False)
    with pytest.warns(
        UnverifiedResumeWarning, match="its 8 captured prompts match .* the rest could not be checked"
    ):
        resume(db, "r", model=loaded, probes=prompts, progress=False)
    assert _state(db)[0] == "complete" and len(_state(db)[1]) == N


def test_a_file_edited_during_capture_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.capture import engine

    rows = _rows("prose")
    probe = _write(tmp_path / "probe.jsonl", rows)
    original = engine.iter_probe_file

    def edited_after_the_scan(path: str | Path) -> Iterator[Prompt]:
        _write(probe, [*rows[:-1], {"text": "changed", "label": "prose"}])
        return original(path)

    monkeypatch.setattr(engine, "iter_probe_file", edited_after_the_scan)
    db = tmp_path / "s.duckdb"
    with pytest.raises(ValueError, match="changed while it was being captured"):
        capture("tiny:qwen2_moe", probe, db, run_id="r", batch_size=4, progress=False)
    assert _state(db)[0] == "failed"
    monkeypatch.setattr(engine, "iter_probe_file", original)
    with pytest.raises(ResumeMismatchError, match="24 prompts at capture, 24 now"):
        resume(db, "r", progress=False)


def test_probe_records_hash_the_same_whatever_the_format(tmp_path: Path) -> None:
    from workbench.probefile import digest_of, scan_probe_file

    rows = [
        {"text": 'a, "quoted"\nline', "label": "x", "pair_id": "1", "meta": {"b": 2, "a": [1.5, "é"]}},
        {"text": "second", "label": "y", "split": "test"},
    ]
    jsonl = _write(tmp_path / "p.jsonl", rows)
    with (tmp_path / "p.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label", "pair_id", "split", "meta"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "meta": json.dumps(r["meta"]) if "meta" in r else ""})
    pl.DataFrame(
        {
            "text": [r["text"] for r in rows],
            "label": [r["label"] for r in rows],
            "pair_id": ["1", None],
            "split": [None, "test"],
            "meta": [json.dumps(rows[0]["meta"]), None],
        }
    ).write_parquet(tmp_path / "p.parquet")
    digests = {scan_probe_file(tmp_path / f"p.{ext}").digest for ext in ("jsonl", "csv", "parquet")}
    assert len(digests) == 1
    assert digest_of(read_probe_file(jsonl)).digest in digests
    swapped = list(reversed(read_probe_file(jsonl)))
    assert (
        digest_of(
            [Prompt(i, p.text, p.label, p.pair_id, p.split, p.meta) for i, p in enumerate(swapped)]
        ).digest
        not in digests
    )
    os.utime(jsonl)  # a touched file is read again, and hashes the same
    assert scan_probe_file(jsonl).digest in digests
