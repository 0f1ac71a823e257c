"""Data-parallel capture under torchrun (gloo on CPU): one run, the same rows as one process.

Each test starts real torchrun jobs (2 ranks, ``--standalone``), so they are slow-ish (~10 s each).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from distributed_support import (
    TEXTS,
    all_rows,
    assert_rows_match_within_rounding,
    torchrun,
    tp_checkpoint,
    write_probe,
)

from workbench.capture.engine import capture, resume
from workbench.capture.rank_stores import rank_store_dir
from workbench.probefile import iter_probe_file
from workbench.store import Store, summaries

pytestmark = pytest.mark.integration


def _assert_same_rows(db_a: Path, run_a: str, db_b: Path, run_b: str) -> None:
    a, b = all_rows(db_a, run_a), all_rows(db_b, run_b)
    for table in a:
        x, y = (f.drop([c for c in ("run_id",) if c in f.columns]) for f in (a[table], b[table]))
        assert x.height == y.height, table
        assert x.columns == y.columns, table
        for col in x.columns:
            if x[col].dtype == pl.List(pl.Float32) or x[col].dtype == pl.List(pl.Float64):
                np.testing.assert_array_equal(
                    np.asarray(x[col].to_list(), dtype=np.float64),
                    np.asarray(y[col].to_list(), dtype=np.float64),
                )
            else:
                assert x[col].equals(y[col], null_equal=True), (table, col)
    assert a["routing"].height > 0 and a["expert_stats"].height > 0


def test_two_gloo_ranks_equal_one_process_row_for_row(tmp_path: Path) -> None:
    probe = write_probe(tmp_path)
    single, parallel = tmp_path / "single.duckdb", tmp_path / "parallel.duckdb"
    opts = {"logits": "fp32", "expert_stats": True, "batch_size": 1, "progress": False}
    capture("tiny:qwen2_moe", probe, single, run_id="one", **opts)  # type: ignore[arg-type]
    args = ["--model", "tiny:qwen2_moe", "--probe", str(probe), "--db", str(parallel), "--run-id", "dp"]
    args += ["--logits", "fp32", "--expert-stats", "--batch-size", "1", "--device", "cpu", "--quiet"]
    proc = torchrun(["-m", "workbench.capture", *args], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.split() == ["dp"], "rank 0 alone prints the run id"
    with Store(parallel, read_only=True) as store:
        runs = store.runs()
        info = store.run("dp")
        built = summaries.valid_parts(store.con, "dp")
    assert runs["run_id"].to_list() == ["dp"] and info["status"] == "complete"
    # the CLI registers the analyses' summary parts, so its runs get every part, not the counts alone
    assert built == set(summaries.PART_TABLES), built
    assert info["config"]["parallel"]["world_size"] == 2
    assert not rank_store_dir(parallel, "dp").exists(), "the rank stores were absorbed and removed"
    _assert_same_rows(single, "one", parallel, "dp")
    again = torchrun(["-m", "workbench.capture", *args], tmp_path)  # the run id is taken: every rank stops
    assert again.returncode != 0
    assert "already exists" in again.stdout + again.stderr
    assert "rank 0 could not open the run" in again.stdout + again.stderr, "rank 1 says why it stopped"
    _assert_same_rows(single, "one", parallel, "dp")


WORKER = textwrap.dedent(
    """
    import os, sys
    from workbench.capture.distributed import capture_data_parallel
    from workbench.probefile import iter_probe_file

    probe, db, die_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def prompts():
        for p in iter_probe_file(probe):
            if os.environ["RANK"] == "1" and p.prompt_id == die_at:
                os._exit(17)  # rank 1 is killed mid-run, as by the OOM killer: no cleanup runs
            yield p

    capture_data_parallel("tiny:qwen2_moe", prompts(), db, run_id="dp", logits="fp32", expert_stats=True,
                          batch_size=1, max_pending=1, write_rows=1, progress=False, timeout_s=60)
    """
)


def test_resume_after_a_rank_is_killed_completes_without_duplicates(tmp_path: Path) -> None:
    probe = write_probe(tmp_path)
    single, parallel = tmp_path / "single.duckdb", tmp_path / "parallel.duckdb"
    opts = {"logits": "fp32", "expert_stats": True, "batch_size": 1, "progress": False}
    capture("tiny:qwen2_moe", probe, single, run_id="one", **opts)  # type: ignore[arg-type]
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    proc = torchrun([str(worker), str(probe), str(parallel), "7"], tmp_path)
    assert proc.returncode != 0, "the job fails when a rank dies"
    with Store(parallel, read_only=True) as store:
        # left unfinished, and its processes are gone: it reads as interrupted (store/liveness.py)
        assert store.run("dp")["status"] == "interrupted", "the main run was left unfinished"
        assert store.done_prompt_ids("dp") == set(), "nothing was absorbed before every rank finished"
    ranks = sorted(p.name for p in rank_store_dir(parallel, "dp").glob("rank-*.duckdb"))
    assert ranks == ["rank-0.duckdb", "rank-1.duckdb"]
    with Store(rank_store_dir(parallel, "dp") / "rank-1.duckdb", read_only=True) as rank1:
        committed = rank1.done_prompt_ids("dp")
    assert committed and committed < {1, 3, 5, 9}, (
        f"rank 1 committed some prompts before it died: {committed}"
    )
    resume(parallel, "dp", probes=iter_probe_file(probe), progress=False)
    with Store(parallel, read_only=True) as store:
        assert store.run("dp")["status"] == "complete"
        prompts = store.prompts("dp")
    assert prompts["prompt_id"].n_unique() == prompts.height == len(TEXTS)
    assert not rank_store_dir(parallel, "dp").exists()
    _assert_same_rows(single, "one", parallel, "dp")


def test_tensor_parallel_capture_records_the_routing_once(tmp_path: Path) -> None:
    """2 gloo ranks shard a saved tiny Qwen2-MoE with its own tp_plan; rank 0 writes one run whose
    expert ids equal one process's, and whose floats differ only by the all-reduce's rounding."""
    checkpoint = tp_checkpoint(tmp_path)
    probe = write_probe(tmp_path)
    single, parallel = tmp_path / "single.duckdb", tmp_path / "parallel.duckdb"
    capture(str(checkpoint), probe, single, run_id="one", logits="fp32", progress=False)
    args = ["--model", str(checkpoint), "--probe", str(probe), "--db", str(parallel), "--run-id", "tp"]
    proc = torchrun(
        ["-m", "workbench.capture", *args, "--tp-plan", "auto", "--logits", "fp32", "--quiet"], tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.split() == ["tp"]
    assert sorted(p.name for p in tmp_path.iterdir() if "parallel" in p.name) == [
        "parallel.duckdb",
        "parallel.duckdb.shards",
    ]
    with Store(parallel, read_only=True) as store:
        info = store.run("tp")
    assert info["status"] == "complete"
    assert info["config"]["parallel"] == {"mode": "tensor", "world_size": 2, "tp_plan": "auto"}
    assert_rows_match_within_rounding(single, "one", parallel, "tp")


TP_WORKER = textwrap.dedent(
    """
    import os, sys
    import workbench.capture.distributed as dist_capture

    checkpoint, probe, db, die_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    stream = dist_capture.prompt_stream

    def dying(probes):  # the probe file's own stream and name, but every rank dies at prompt die_at
        prompts, name = stream(probes)

        def until():
            for p in prompts:
                if p.prompt_id == die_at:
                    os._exit(17)  # as a node failure: no cleanup runs on any rank
                yield p

        return until(), name

    dist_capture.prompt_stream = dying
    dist_capture.capture_tensor_parallel(checkpoint, probe, db, run_id="tp", logits="fp32", batch_size=1,
                                         max_pending=1, write_rows=1, progress=False, timeout_s=60)
    """
)


def test_a_killed_tensor_parallel_run_resumes_under_torchrun(tmp_path: Path) -> None:
    checkpoint = tp_checkpoint(tmp_path)
    probe = write_probe(tmp_path)
    single, parallel = tmp_path / "single.duckdb", tmp_path / "parallel.duckdb"
    capture(str(checkpoint), probe, single, run_id="one", logits="fp32", progress=False)
    worker = tmp_path / "tp_worker.py"
    worker.write_text(TP_WORKER)
    proc = torchrun([str(worker), str(checkpoint), str(probe), str(parallel), "6"], tmp_path)
    assert proc.returncode != 0, "the job fails when its ranks die"
    with Store(parallel, read_only=True) as store:
        assert store.run("tp")["status"] == "interrupted"  # its ranks are gone
        committed = store.done_prompt_ids("tp")
    assert committed and committed <= set(range(6)), committed
    with pytest.raises(ValueError, match=r"torchrun --nproc-per-node 2 -m workbench.capture resume"):
        resume(parallel, "tp", progress=False)  # one process cannot hold a model sharded over two
    # --run-id: torchrun's own parser would take --run for its --run-path
    again = ["-m", "workbench.capture", "resume", "--db", str(parallel), "--run-id", "tp", "--quiet"]
    proc = torchrun(again, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.split() == ["tp"]
    with Store(parallel, read_only=True) as store:
        assert store.run("tp")["status"] == "complete"
        prompts = store.prompts("tp")
    assert prompts["prompt_id"].n_unique() == prompts.height == len(TEXTS)
    assert_rows_match_within_rounding(single, "one", parallel, "tp")


def test_tp_plan_is_refused_outside_torchrun_and_for_in_memory_models(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.models.loading import ModelLoadError, load_model

    probe = write_probe(tmp_path)
    cmd = ["capture", "--model", "tiny:qwen2_moe", "--probe", str(probe), "--db", str(tmp_path / "x.duckdb")]
    shown = CliRunner().invoke(app, [*cmd, "--tp-plan", "auto"])
    assert shown.exit_code != 0 and "torchrun" in shown.output
    assert not (tmp_path / "x.duckdb").exists()
    with pytest.raises(ModelLoadError, match="model directory or hub id"):
        load_model("tiny:qwen2_moe", tp_plan="auto")


def test_a_resume_plan_refuses_a_run_it_cannot_resume_and_says_what_to_run(tmp_path: Path) -> None:
    """What rank 0 decides before any rank loads a model (no torchrun needed to check it)."""
    from store_support import LAYERS

    from workbench.capture.distributed import _resume_plan
    from workbench.capture.integrity import ResumeMismatchError, UnverifiedResumeWarning

    db = tmp_path / "s.duckdb"
    probe = tmp_path / "p.jsonl"
    probe.write_text('{"text": "a prompt", "label": "x"}\n')
    options = {"batch_size": 1, "logits": "fp32", "tp_plan": "auto"}
    with Store(db) as st:
        for run_id, parallel in (("tp", {"mode": "tensor", "world_size": 2, "tp_plan": "auto"}),
                                 ("dp", {"mode": "data", "world_size": 2}), ("done", None)):  # fmt: skip
            config = {"options": options, "model_source": "m", "parallel": parallel}
            st.create_run(model="m", architecture="a", probe=str(tmp_path / "p.jsonl"), n_experts=8, top_k=2,
                          config=config, layers=LAYERS, run_id=run_id)  # fmt: skip
        st.set_status("done", "complete")
    with pytest.raises(
        ValueError, match=r"captured on 2 tensor-parallel ranks and this job has 3.*--nproc-per-node 2"
    ):
        _resume_plan(db, "tp", 3)
    with pytest.raises(
        ValueError, match=r"not captured tensor-parallel; resume it in one process: moe-workbench resume"
    ):
        _resume_plan(db, "dp", 2)
    assert _resume_plan(db, "done", 2) is None
    probe.rename(tmp_path / "moved.jsonl")  # the probe file is verified before anything is written
    with pytest.raises(ResumeMismatchError, match=r"p.jsonl of run 'tp' is not there .*--probe FILE"):
        _resume_plan(db, "tp", 2)
    with Store(db, read_only=True) as st:
        assert st.run("tp")["status"] == "running"
    (tmp_path / "moved.jsonl").rename(probe)
    with pytest.warns(UnverifiedResumeWarning, match="recorded no content digest"):
        plan = _resume_plan(db, "tp", 2)
    assert plan == {"options": options, "model_source": "m", "probe": str(tmp_path / "p.jsonl"), "done": []}
