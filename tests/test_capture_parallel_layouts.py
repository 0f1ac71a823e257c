"""Tensor parallelism in groups, data parallelism across them: 4 gloo ranks on CPU as 2 groups of 2.

One torchrun job is killed mid-run (every rank, as a node failure) and a second one resumes it; the
finished run holds every prompt once, with a single process's records (ids equal, floats within the
all-reduce's rounding). Each job starts 4 processes: 163 s for both on a 2-core machine shared with
other jobs (load average 11-14). Expert parallelism runs on 2 ranks (47 s there).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from distributed_support import TEXTS, assert_rows_match_within_rounding, torchrun, tp_checkpoint, write_probe

from workbench.capture.engine import CaptureOptions, capture, resume
from workbench.capture.rank_stores import rank_store_dir
from workbench.models.parallelism import ParallelLayout, parallel_layout, tp_group_of
from workbench.store import Store

pytestmark = pytest.mark.integration

#: the CLI, with every rank dying at its first prompt >= die_at, once every group has got that far (so
#: each group has committed some batches: the groups run at their own pace)
GROUPS_WORKER = textwrap.dedent(
    """
    import os, sys
    from dataclasses import replace
    import torch.distributed
    import workbench.capture.distributed as dist_capture
    from workbench.cli import app

    checkpoint, probe, db, die_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    stream, merge = dist_capture.prompt_stream, dist_capture.merge_options

    def dying(probes):
        prompts, name = stream(probes)

        def until():
            for p in prompts:
                if p.prompt_id >= die_at:
                    torch.distributed.barrier()
                    os._exit(17)  # as a node failure: no cleanup runs on any rank
                yield p

        return until(), name

    dist_capture.prompt_stream = dying
    dist_capture.merge_options = lambda o, ov: replace(merge(o, ov), max_pending=1, write_rows=1)
    app(["capture", "--model", checkpoint, "--probe", probe, "--db", db, "--run-id", "tpdp", "--tp-size", "2",
         "--logits", "fp32", "--batch-size", "1", "--quiet"])
    """
)


def test_two_groups_of_two_ranks_capture_one_run_and_resume_after_a_kill(tmp_path: Path) -> None:
    checkpoint = tp_checkpoint(tmp_path)
    probe = write_probe(tmp_path)
    single, parallel = tmp_path / "single.duckdb", tmp_path / "parallel.duckdb"
    capture(str(checkpoint), probe, single, run_id="one", logits="fp32", batch_size=1, progress=False)
    worker = tmp_path / "groups_worker.py"
    worker.write_text(GROUPS_WORKER)
    proc = torchrun([str(worker), str(checkpoint), str(probe), str(parallel), "6"], tmp_path, nproc=4)
    assert proc.returncode != 0, "the job fails when its ranks die"
    with Store(parallel, read_only=True) as store:
        info = store.run("tpdp")
        assert info["status"] == "interrupted"  # unfinished, and its ranks are gone
        assert store.done_prompt_ids("tpdp") == set(), "rank 0 absorbs only when every group is done"
    assert info["config"]["parallel"]["mode"] == "tensor+data"
    assert {k: info["config"]["parallel"][k] for k in ("world_size", "tp_size", "dp_size")} == {
        "world_size": 4,
        "tp_size": 2,
        "dp_size": 2,
    }
    folder = rank_store_dir(parallel, "tpdp")
    assert sorted(p.name for p in folder.glob("rank-*.duckdb")) == ["rank-0.duckdb", "rank-2.duckdb"], (
        "the first rank of each group writes; the others drop their records"
    )
    for name, share in (("rank-0.duckdb", {0, 2, 4}), ("rank-2.duckdb", {1, 3, 5})):
        with Store(folder / name, read_only=True) as rank:
            committed = rank.done_prompt_ids("tpdp")
        assert committed and committed <= share, (name, committed)
    with pytest.raises(ValueError, match=r"torchrun --nproc-per-node 4 -m workbench.capture resume"):
        resume(parallel, "tpdp", progress=False)  # one process cannot hold the sharded model
    again = ["-m", "workbench.capture", "resume", "--db", str(parallel), "--run-id", "tpdp", "--quiet"]
    proc = torchrun(again, tmp_path, nproc=4)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.split() == ["tpdp"], "rank 0 alone prints the run id"
    with Store(parallel, read_only=True) as store:
        assert store.run("tpdp")["status"] == "complete"
        prompts = store.prompts("tpdp")
    assert prompts["prompt_id"].n_unique() == prompts.height == len(TEXTS)
    assert not folder.exists(), "the rank stores were absorbed and removed"
    assert_rows_match_within_rounding(single, "one", parallel, "tpdp")


def test_the_layout_of_groups_and_its_refusals() -> None:
    layout = parallel_layout(6, 2)
    assert (layout.dp_size, [layout.group(r) for r in range(6)]) == (3, [0, 0, 1, 1, 2, 2])
    assert [r for r in range(6) if layout.leads(r)] == [0, 2, 4]
    assert tp_group_of(3, layout) == [2, 3] and tp_group_of(4, layout) == [4, 5]
    assert parallel_layout(4, None) == ParallelLayout(world_size=4, tp_size=4)
    with pytest.raises(ValueError, match=r"--tp-size 4 does not divide the job's 6 ranks"):
        parallel_layout(6, 4)
    with pytest.raises(ValueError, match=r"group of 1 rank shards nothing"):
        parallel_layout(4, 1)
    with pytest.raises(ValueError, match=r"tp_size must be >= 2"):
        CaptureOptions(tp_size=1)
    assert CaptureOptions(tp_size=2).tp_plan == "auto", "tp_size implies the model's own plan"
    with pytest.raises(ValueError, match=r"give no device or device_map"):
        CaptureOptions(tp_size=2, device="cpu")


def test_tp_size_is_refused_outside_torchrun_and_for_named_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.models.loading import ModelLoadError, load_model

    probe = write_probe(tmp_path)
    cmd = ["capture", "--model", "tiny:qwen2_moe", "--probe", str(probe), "--db", str(tmp_path / "x.duckdb")]
    shown = CliRunner().invoke(app, [*cmd, "--tp-size", "2"])
    assert shown.exit_code != 0 and "--tp-size shards the model across torchrun ranks" in shown.output
    assert not (tmp_path / "x.duckdb").exists()
    with pytest.raises(ModelLoadError, match="model directory or hub id"):
        load_model("tiny:qwen2_moe", tp_plan="auto", tp_size=2)
    with pytest.raises(ModelLoadError, match="give tp_plan='auto' too"):
        load_model("tiny:qwen2_moe", tp_size=2)
    checkpoint = tp_checkpoint(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ModelLoadError, match="WORLD_SIZE is unset"):
        load_model(str(checkpoint), tp_plan="auto", tp_size=2)
    monkeypatch.setenv("WORLD_SIZE", "6")
    with pytest.raises(ModelLoadError, match=r"--tp-size 4 does not divide the job's 6 ranks"):
        load_model(str(checkpoint), tp_plan="auto", tp_size=4)


#: 2 ranks: capture through the CLI with --ep; then, on the same job, the self-check on a planted block
#: whose experts receive ids shifted onto the other rank's experts
EP_WORKER = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    import torch.distributed as dist
    from torch import nn
    from workbench.cli import app
    from workbench.models.discovery import find_moe_layers
    from workbench.models.loading import load_model
    from workbench.models.registry import register_adapter
    from workbench.models.routing_check import RoutingCheckError, check_routing

    checkpoint, probe, db = sys.argv[1], sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    report = open(f"{db}.rank{rank}.txt", "w")  # a file per rank: the ranks' stdout lines interleave
    app(["capture", "--model", checkpoint, "--probe", probe, "--db", db, "--run-id", "ep", "--ep",
         "--logits", "fp32", "--batch-size", "1", "--quiet"], standalone_mode=False)

    loaded = load_model(checkpoint, tp_plan="auto", expert_parallel=True)
    held = loaded.layers[0].experts.gate_up_proj
    report.write(f"SHARD {held.to_local().shape[0]} of {held.shape[0]}\\n")

    class Shifted(nn.Module):  # applies expert (e + E/2) mod E where its router chose e: the other rank's
        def __init__(self, inner):
            super().__init__()
            self.gate, self.experts, self.n = inner.gate, inner.experts, loaded.layers[0].n_experts

        def forward(self, hidden):
            x = hidden.reshape(-1, hidden.shape[-1])
            _, weights, indices = self.gate(x)
            return self.experts(x, (indices + self.n // 2) % self.n, weights).reshape(hidden.shape)

    for layer in loaded.layers:
        parent, name = layer.path.rsplit(".", 1)
        setattr(loaded.model.get_submodule(parent), name, Shifted(layer.block))
    family = loaded.layers[0].family
    for selection in ("router", "experts_args"):
        register_adapter("Shifted", replace(family, name=f"shifted-{selection}", selection=selection), overwrite=True)
        try:
            check_routing(loaded.model, find_moe_layers(loaded.model), force=True)
            report.write(f"CHECK {selection} passed\\n")
        except RoutingCheckError as exc:
            report.write(f"CHECK {selection} refused: {exc}\\n")
    report.close()
    dist.destroy_process_group()
    """
)


def test_expert_parallel_capture_passes_the_self_check_and_equals_one_process(tmp_path: Path) -> None:
    """2 gloo ranks split each block's experts (4 of 8 each): the self-check measures what both apply
    together and passes; the records equal one process's within rounding. A planted block that applies
    the other rank's experts is refused by (a) when the adapter records the router's choice, and passes
    (a) when it records the ids the experts received (then (b), the recipe, refuses it)."""
    checkpoint = tp_checkpoint(tmp_path)
    probe = write_probe(tmp_path, TEXTS[:6])
    single, parallel = tmp_path / "single.duckdb", tmp_path / "parallel.duckdb"
    capture(str(checkpoint), probe, single, run_id="one", logits="fp32", batch_size=1, progress=False)
    worker = tmp_path / "ep_worker.py"
    worker.write_text(EP_WORKER)
    proc = torchrun([str(worker), str(checkpoint), str(probe), str(parallel)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.split() == ["ep"], "rank 0 alone prints the run id"
    for rank in (0, 1):
        lines = Path(f"{parallel}.rank{rank}.txt").read_text().splitlines()
        assert lines[0] == "SHARD 4 of 8", lines
        by = {x.split()[1]: x for x in lines[1:]}
        assert by.keys() == {"router", "experts_args"}, lines
        assert "refused: routing self-check failed" in by["router"], by
        assert "(a) the experts the module applied differ" in by["router"], by
        # (a) passes here (recorded = applied, measured across both ranks); the recipe (b) refuses
        assert "refused: routing self-check failed" in by["experts_args"], by
        assert "(b) the family's recipe" in by["experts_args"], by
    with Store(parallel, read_only=True) as store:
        info = store.run("ep")
    assert info["status"] == "complete"
    assert info["config"]["parallel"] == {"mode": "tensor", "world_size": 2, "tp_plan": "auto", "ep_size": 2}
    assert info["config"]["options"]["expert_parallel"] is True
    checked = info["config"]["routing_check"]
    assert not checked["skipped"] and [b["decoded_by"] for b in checked["blocks"]] == ["experts-call"]
    assert_rows_match_within_rounding(single, "one", parallel, "ep")


def test_expert_parallel_refusals(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.models.loading import ModelLoadError, load_model

    probe = write_probe(tmp_path)
    cmd = ["capture", "--model", "tiny:qwen2_moe", "--probe", str(probe), "--db", str(tmp_path / "x.duckdb")]
    shown = CliRunner().invoke(app, [*cmd, "--ep"])
    assert shown.exit_code != 0 and "--expert-parallel shards the model across torchrun ranks" in shown.output
    assert not (tmp_path / "x.duckdb").exists()
    with pytest.raises(
        ValueError, match=r"expert_stats recompute expert outputs .* expert parallelism splits"
    ):
        CaptureOptions(expert_parallel=True, expert_stats=True)
    assert CaptureOptions(expert_parallel=True).tp_plan == "auto"
    with pytest.raises(
        ModelLoadError, match=r"expert parallelism splits the experts .* give tp_plan='auto' too"
    ):
        load_model("tiny:qwen2_moe", expert_parallel=True)


def test_a_mesh_that_puts_a_rank_in_another_group_than_the_split_assumes_is_refused() -> None:
    """Ranks that share collectives must run the same forwards: capture reads the group transformers
    built (``model._device_mesh["tp"]``) and refuses to split prompts on another layout."""
    from types import SimpleNamespace
    from typing import Any, cast

    import torch

    from workbench.capture.distributed import ParallelCaptureError, RankEnv, _check_groups

    def loaded(tp_ranks: list[int] | None) -> Any:
        mesh = None if tp_ranks is None else {"tp": SimpleNamespace(mesh=torch.tensor(tp_ranks))}
        return cast(Any, SimpleNamespace(model=SimpleNamespace(_device_mesh=mesh)))

    layout = parallel_layout(4, 2)
    rank2 = RankEnv(rank=2, world_size=4, local_rank=2)
    _check_groups(loaded([2, 3]), rank2, layout)  # the layout the split assumes
    with pytest.raises(
        ParallelCaptureError, match=r"put rank 2 in tensor-parallel group \[0, 2\], not \[2, 3\]"
    ):
        _check_groups(loaded([0, 2]), rank2, layout)
    with pytest.raises(ParallelCaptureError, match=r"cannot read the tensor-parallel group .* rank 2"):
        _check_groups(loaded(None), rank2, layout)
    _check_groups(loaded(None), rank2, parallel_layout(4, None))  # one group over the job: nothing to check


def test_a_layout_transformers_refuses_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers refuses e.g. 8 experts over 3 expert-parallel ranks; the message says the layout is
    the problem (not the weights' format) and what to change."""
    from transformers import AutoModelForCausalLM

    from workbench.models.loading import ModelLoadError, load_model

    checkpoint = tp_checkpoint(tmp_path)
    refusal = "Cannot evenly shard 8 experts across 3 expert-parallel ranks."

    def refuse(*_args: object, **kwargs: object) -> None:
        assert kwargs["distributed_config"].ep_size == 3  # type: ignore[attr-defined]
        raise ValueError(refusal)

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(
        ModelLoadError, match=r"cannot shard .* over the ranks of this job: Cannot evenly shard"
    ) as caught:
        load_model(str(checkpoint), tp_plan="auto", expert_parallel=True)
    assert "safetensors" not in str(caught.value)
