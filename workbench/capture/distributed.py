"""Data-parallel capture under torchrun: ranks split the prompts, the store sees one run.

``torchrun --nproc-per-node N -m workbench.capture --model M --probe P --db DB`` starts N ranks.
Each loads the model (on ``cuda:LOCAL_RANK`` when there are GPUs) and captures the prompts whose
``prompt_id % N == rank``. DuckDB has one writer per file, so each rank commits its batches to its
own *rank store* next to the main one (``DB.ranks/<run>/rank-R.duckdb``), with the same exactly-once
batches as any capture. When every rank is done, rank 0 takes each rank store into the main store
in one transaction (its shard files linked, not rewritten), marks the run complete and deletes the
rank stores.

The run exists in the main store from the start (status ``running``, ``config.parallel`` says how it
was split), so ``runs`` lists it at once. If a rank dies, torchrun stops them all; ``resume`` then
moves whatever the rank stores committed into the main store and captures the rest, so no prompt is
lost or written twice.

With a sharded model (``--tp-plan auto``, ``--tp-size T``, ``--expert-parallel``) the ranks of a
tensor-parallel group run every forward together: one group over the job has rank 0 write the main
store; D groups of T split the prompts as the ranks above do, each group's first rank writing a rank
store (:func:`capture_tensor_parallel`). docs/capture.md describes both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from workbench.capture.engine import open_run, prepare_model, prompt_stream, run_batches
from workbench.capture.integrity import probe_for_resume
from workbench.capture.options import CaptureOptions, merge_options
from workbench.capture.rank_stores import absorb_rank_stores, rank_store_dir
from workbench.models.loading import LoadedModel
from workbench.models.parallelism import ParallelLayout, parallel_layout, tp_group_of
from workbench.probefile import Prompt, PromptLike
from workbench.store import Store

__all__ = [
    "ParallelCaptureError",
    "RankEnv",
    "capture_data_parallel",
    "capture_tensor_parallel",
    "prompt_share",
    "rank_env",
    "resume_tensor_parallel",
]


class ParallelCaptureError(ValueError):
    """Another rank stopped the job before this one could start (its message says why)."""


@dataclass(frozen=True)
class RankEnv:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int


def rank_env() -> RankEnv | None:
    """The torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or None outside one."""
    if not os.environ.get("WORLD_SIZE") or not os.environ.get("RANK"):
        return None
    return RankEnv(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
    )


def capture_data_parallel(
    model: LoadedModel | str | Path | torch.nn.Module,
    probes: str | Path | Iterable[PromptLike],
    db: str | Path,
    *,
    tokenizer: Any = None,
    run_id: str | None = None,
    options: CaptureOptions | None = None,
    progress: bool = True,
    timeout_s: float = 1800.0,
    **option_overrides: Any,
) -> str:
    """Capture on this rank's share of ``probes``; rank 0 owns the main store. Returns the run id.

    Call it on every rank of a torchrun job (it initialises the process group if needed: NCCL with
    GPUs, gloo without). Every rank must pass the same ``probes`` and options.
    """
    import torch.distributed as dist

    opts = merge_options(options, option_overrides)
    with _job("capture_data_parallel", timeout_s) as env:
        if torch.cuda.is_available() and opts.device is None and opts.device_map is None:
            opts = replace(opts, device=f"cuda:{env.local_rank}")
        prompts, probe_name = prompt_stream(probes)
        loaded, checked = prepare_model(model, opts, tokenizer)
        parallel = {"mode": "data", "world_size": env.world_size, "split": "prompt_id % world_size"}
        rid = _shared_run_id(env, lambda: _open_main(db, loaded, opts, probe_name, checked, run_id, parallel))
        mine = _share(prompts, env.rank, env.world_size)
        folder = rank_store_dir(db, rid)
        folder.mkdir(parents=True, exist_ok=True)
        with Store(folder / f"rank-{env.rank}.duckdb") as own:
            open_run(own, loaded, opts, probe_name=probe_name, checked=checked, run_id=rid)
            run_batches(loaded, mine, own, rid, opts, progress=progress and env.rank == 0)
        dist.barrier()
        if env.rank == 0:
            with Store(db) as main:
                absorb_rank_stores(main, db, rid)
                main.set_status(rid, "complete")
        dist.barrier()
        return rid


def capture_tensor_parallel(
    model: str | Path,
    probes: str | Path | Iterable[PromptLike],
    db: str | Path,
    *,
    tokenizer: Any = None,
    run_id: str | None = None,
    options: CaptureOptions | None = None,
    progress: bool = True,
    timeout_s: float = 1800.0,
    **option_overrides: Any,
) -> str:
    """Capture with the model sharded by transformers' ``tp_plan``; returns the run id.

    Without ``tp_size`` one tensor-parallel group spans the job and rank 0 writes. With ``tp_size`` T,
    the job's ``WORLD_SIZE = D × T`` ranks form D groups of T (:mod:`workbench.models.parallelism`):
    each group shards a copy of the model over its ranks and captures the prompts with
    ``prompt_id % D == group``, its first rank writes them to its rank store, and rank 0 absorbs the
    rank stores into one run. Every rank of a group runs every forward of the group (the collectives
    need all of them); the routers are replicated, so the group's first rank holds the routing and the
    others drop theirs.
    """

    opts = merge_options(options, option_overrides)
    if opts.tp_plan is None:
        opts = replace(opts, tp_plan="auto")
    with _job("capture_tensor_parallel", timeout_s) as env:
        layout = parallel_layout(env.world_size, opts.tp_size)  # refuses a size that does not divide the job
        prompts, probe_name = prompt_stream(probes)
        loaded, checked = prepare_model(model, opts, tokenizer)
        _check_groups(loaded, env, layout)
        parallel = _tensor_parallel_config(layout, opts)
        rid = _shared_run_id(env, lambda: _open_main(db, loaded, opts, probe_name, checked, run_id, parallel))
        _tensor_parallel_batches(env, layout, loaded, prompts, db, rid, opts, progress, (probe_name, checked))
        return rid


def _check_groups(loaded: LoadedModel, env: RankEnv, layout: ParallelLayout) -> None:
    """Refuse to split prompts by group unless transformers' mesh put this rank in the group the split
    assumes: ranks sharing collectives must run the same forwards."""
    if layout.dp_size == 1:
        return
    mesh: Any = getattr(loaded.model, "_device_mesh", None)
    try:
        ranks = [int(r) for r in mesh["tp"].mesh.flatten().tolist()]
    except (TypeError, KeyError, AttributeError, RuntimeError) as exc:
        raise ParallelCaptureError(
            f"cannot read the tensor-parallel group transformers put rank {env.rank} in ({exc}); capture with one "
            "group over the job (no --tp-size) or with the locked transformers"
        ) from exc
    expected = tp_group_of(env.rank, layout)
    if ranks != expected:
        raise ParallelCaptureError(
            f"transformers put rank {env.rank} in tensor-parallel group {ranks}, not {expected} as the prompt split "
            "assumes; capture with one group over the job (no --tp-size) or with the locked transformers"
        )


def _tensor_parallel_config(layout: ParallelLayout, opts: CaptureOptions) -> dict[str, Any]:
    """``config.parallel`` of a tensor-parallel run: one group over the job, or D groups of T ranks;
    with ``ep_size`` when the experts are split over each group's ranks."""
    experts = {"ep_size": layout.tp_size} if opts.expert_parallel else {}
    if layout.dp_size == 1:
        return {"mode": "tensor", "world_size": layout.world_size, "tp_plan": opts.tp_plan, **experts}
    return {
        **experts,
        "mode": "tensor+data",
        "world_size": layout.world_size,
        "tp_size": layout.tp_size,
        "dp_size": layout.dp_size,
        "tp_plan": opts.tp_plan,
        "split": "prompt_id % dp_size; group g = ranks g*tp_size .. g*tp_size + tp_size - 1",
        "writers": "the first rank of each group, to DB.ranks/<run>/rank-<rank>.duckdb; rank 0 absorbs them",
    }


@contextmanager
def _job(what: str, timeout_s: float) -> Iterator[RankEnv]:
    """This rank's place in the torchrun job, with a process group for the duration (NCCL with GPUs,
    gloo without); a group that was already initialised is left as it was found."""
    import torch.distributed as dist

    env = rank_env()
    if env is None:
        raise RuntimeError(
            f"{what} runs under torchrun (RANK and WORLD_SIZE unset); start it with "
            "torchrun --nproc-per-node N -m workbench.capture ..., or use capture() in one process"
        )
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    try:
        yield env
    finally:
        if owns_group:
            dist.destroy_process_group()


def _open_main(
    db: str | Path,
    loaded: LoadedModel,
    opts: CaptureOptions,
    probe_name: str,
    checked: dict[str, Any],
    run_id: str | None,
    parallel: dict[str, Any],
) -> str:
    with Store(db) as main:
        return open_run(
            main,
            loaded,
            opts,
            probe_name=probe_name,
            checked=checked,
            run_id=run_id,
            extra_config={"parallel": parallel},
        )


def _from_rank0(env: RankEnv, on_rank0: Callable[[], Any], what: str) -> Any:
    """Rank 0 computes a value; every rank gets it, or the error that stopped rank 0 (never a hang)."""
    import torch.distributed as dist

    box: list[tuple[str, Any] | None] = [None]
    failure: Exception | None = None
    if env.rank == 0:
        try:
            box[0] = ("ok", on_rank0())
        except Exception as exc:  # re-raised below, after the other ranks have heard of it
            failure = exc
            box[0] = ("error", f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(box, src=0)
    status, value = box[0] or ("error", "rank 0 sent nothing")
    if failure is not None:
        raise failure
    if status != "ok":
        raise ParallelCaptureError(f"rank 0 could not {what}: {value}")
    return value


def _shared_run_id(env: RankEnv, open_on_rank0: Callable[[], str]) -> str:
    """Rank 0 opens the run; every rank gets its id."""
    return str(_from_rank0(env, open_on_rank0, "open the run"))


def resume_tensor_parallel(
    db: str | Path, run_id: str, *, progress: bool = True, timeout_s: float = 1800.0
) -> str:
    """Finish an interrupted tensor-parallel run under torchrun, on the layout it ran on.

    Rank 0 takes in what the groups' rank stores committed, reads the run (its options, model, probe
    file and the prompts already committed) and tells every rank; each loads its shard of the model as
    the capture did, and the remaining prompts are captured as the capture would have (one group: rank
    0 writes; D groups: split by ``prompt_id % D``, each group's first rank writes its rank store, rank
    0 absorbs them), so no prompt is lost or written twice.
    """

    from workbench.probefile import iter_probe_file

    with _job("resume_tensor_parallel", timeout_s) as env:
        plan = _from_rank0(env, lambda: _resume_plan(db, run_id, env.world_size), "resume the run")
        if plan is None:  # already complete
            return run_id
        opts = CaptureOptions(**plan["options"])
        layout = parallel_layout(env.world_size, opts.tp_size)
        loaded, checked = prepare_model(plan["model_source"], opts)
        _check_groups(loaded, env, layout)
        done = set(plan["done"])
        remaining = (p for p in iter_probe_file(plan["probe"]) if p.prompt_id not in done)
        _tensor_parallel_batches(
            env, layout, loaded, remaining, db, run_id, opts, progress, (plan["probe"], checked)
        )
        return run_id


def _tensor_parallel_batches(
    env: RankEnv,
    layout: ParallelLayout,
    loaded: LoadedModel,
    prompts: Iterator[Prompt],
    db: str | Path,
    run_id: str,
    opts: CaptureOptions,
    progress: bool,
    provenance: tuple[str, dict[str, Any]],
) -> None:
    """Every rank of a group runs the group's forwards (the collectives need all of them); one rank writes.

    One group: rank 0 writes the main store. D groups: group g takes ``prompt_id % D == g``, its first
    rank writes its rank store (``provenance``: the probe name and routing check it records), and rank 0
    absorbs the rank stores and completes the run once every group is done.
    """
    import torch.distributed as dist

    if layout.dp_size > 1:
        prompts = _share(prompts, layout.group(env.rank), layout.dp_size)
    store: Store | None = None
    if layout.dp_size == 1 and env.rank == 0:
        store = Store(db)
    elif layout.dp_size > 1 and layout.leads(env.rank):
        folder = rank_store_dir(db, run_id)
        folder.mkdir(parents=True, exist_ok=True)
        store = Store(folder / f"rank-{env.rank}.duckdb")
        probe_name, checked = provenance
        open_run(store, loaded, opts, probe_name=probe_name, checked=checked, run_id=run_id)
    try:
        run_batches(loaded, prompts, store, run_id, opts, progress=progress and env.rank == 0)
    finally:
        if store is not None:
            store.close()
    dist.barrier()
    if layout.dp_size > 1:
        if env.rank == 0:
            with Store(db) as main:
                absorb_rank_stores(main, db, run_id)
                main.set_status(run_id, "complete")
        dist.barrier()


def _resume_plan(db: str | Path, run_id: str, world_size: int) -> dict[str, Any] | None:
    """What every rank needs to resume a tensor-parallel run (None when it is complete); rank 0 only.

    A run captured by D groups first takes in what their rank stores committed.
    """
    with Store(db) as store:
        info = store.run(run_id)
        if info["status"] == "complete":
            return None
        config = info["config"]
        parallel = config.get("parallel") or {}
        if parallel.get("mode") not in ("tensor", "tensor+data"):
            raise ValueError(
                f"run {run_id} was not captured tensor-parallel; resume it in one process: "
                f"moe-workbench resume --db {db} --run {run_id}"
            )
        if parallel.get("world_size") != world_size:
            raise ValueError(
                f"run {run_id} was captured on {parallel.get('world_size')} tensor-parallel ranks and this job "
                f"has {world_size}: resume it with torchrun --nproc-per-node {parallel.get('world_size')}"
            )
        if info["probe"] == "<python>":
            raise ValueError(
                f"run {run_id} captured prompts from Python; a tensor-parallel resume needs its probe file"
            )
        probe_for_resume(store, run_id, info, None)  # refuses a changed probe file before anything is written
        store.set_status(run_id, "running")
        if parallel.get("mode") == "tensor+data":
            absorb_rank_stores(store, db, run_id)
        done = sorted(store.done_prompt_ids(run_id))
        return {
            "options": config["options"],
            "model_source": config["model_source"],
            "probe": info["probe"],
            "done": done,
        }


def prompt_share(prompt: Prompt, rank: int, world_size: int) -> bool:
    return prompt.prompt_id % world_size == rank


def _share(prompts: Iterator[Prompt], rank: int, world_size: int) -> Iterator[Prompt]:
    return (p for p in prompts if prompt_share(p, rank, world_size))
