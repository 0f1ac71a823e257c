"""Commands that write and manage runs: capture, resume, runs, export, models."""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from workbench.capture.modes import DEFAULT_LOGITS_MODE, LogitsMode
from workbench.cli.app import (
    app,
    existing_run,
    fail,
    note,
    reading_store,
    show,
    summary_builders,
    user_errors,
    warn,
    writable_db,
)
from workbench.cli.tables import print_frame

if TYPE_CHECKING:
    import polars as pl


class Backend(str, Enum):
    hooks = "hooks"
    nnsight = "nnsight"
    transformer_lens = "transformer_lens"


@app.command()
def capture(
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="Local HF directory, hub id, or zoo name (e.g. tiny:qwen2_moe)."),
    ],
    probe: Annotated[
        Path,
        typer.Option("--probe", "-p", help="Probe file: .jsonl/.csv/.parquet with text and label columns."),
    ],
    db: Annotated[
        Path, typer.Option("--db", help="DuckDB file to write (created if missing; holds many runs).")
    ],
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Name for the run (default: generated).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Prompts per forward pass.")
    ] = 16,
    max_length: Annotated[
        int | None, typer.Option("--max-length", min=1, help="Truncate longer prompts (with a warning).")
    ] = None,
    logits: Annotated[
        LogitsMode,  # the choices come from the type (workbench.capture.modes)
        typer.Option(
            "--logits",
            help="Store raw router logits as fp32, fp16 (rounded, 2 bytes each on disk), or not at all.",
        ),
    ] = DEFAULT_LOGITS_MODE,
    expert_stats: Annotated[
        bool,
        typer.Option(
            "--expert-stats",
            help="Also record each selected expert's output norm and hidden-unit zero fraction.",
        ),
    ] = False,
    backend: Annotated[
        Backend,
        typer.Option(
            "--backend",
            help="How to read routing: plain torch hooks, nnsight tracing, or TransformerLens' TransformerBridge.",
        ),
    ] = Backend.hooks,
    device: Annotated[
        str | None,
        typer.Option("--device", help="cpu, cuda, cuda:1, mps ... (default: cuda when available)."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32, bfloat16 or float16 (default: the checkpoint's).")
    ] = None,
    device_map: Annotated[
        str | None,
        typer.Option(
            "--device-map",
            help="Divide a model larger than one device (transformers' device_map): auto, balanced, sequential, "
            'a JSON object of module name → device such as \'{"model.layers.30": "disk", "": 0}\', or a '
            "JSON file. Replaces --device. Records equal the undivided model's (docs/capture.md).",
        ),
    ] = None,
    offload_folder: Annotated[
        Path | None,
        typer.Option("--offload-folder", help='Where --device-map\'s "disk" entries keep their weights.'),
    ] = None,
    tp_plan: Annotated[
        str | None,
        typer.Option(
            "--tp-plan",
            help="Under torchrun: shard a model directory or hub id across the ranks (or each --tp-size group) "
            "with transformers' tensor parallelism ('auto': the model's own plan). One rank per group writes; "
            "routers are replicated, so the records equal one process's within float rounding (docs/capture.md).",
        ),
    ] = None,
    tp_size: Annotated[
        int | None,
        typer.Option(
            "--tp-size",
            min=2,
            help="Under torchrun: ranks per tensor-parallel group (implies --tp-plan auto). A job of "
            "D x T ranks with --tp-size T holds D groups; each shards its own copy of the model, the groups "
            "split the prompts as data-parallel ranks do, and the store holds one run (docs/capture.md). "
            "Default: one group of all ranks.",
        ),
    ] = None,
    expert_parallel: Annotated[
        bool,
        typer.Option(
            "--expert-parallel",
            "--ep",
            help="Under torchrun: also split each MoE block's experts over the ranks of a tensor-parallel group "
            "(transformers' expert parallelism, ep_size = the group's size; implies --tp-plan auto). The routing "
            "self-check measures the experts every rank applies together (docs/capture.md).",
        ),
    ] = False,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code", help="Allow the checkpoint's own Python code to run (off by default)."
        ),
    ] = False,
    skip_routing_check: Annotated[
        bool,
        typer.Option(
            "--skip-routing-check",
            help="Do not verify, before the first batch, that each MoE block class records the experts and "
            "weights it applies (a few random tokens per class; see docs/capture.md). The run's config "
            "records the skip.",
        ),
    ] = False,
    allow_nonfinite: Annotated[
        bool,
        typer.Option(
            "--allow-nonfinite",
            help="Record NaN/inf gate weights or router logits instead of stopping the capture (they mean "
            "broken weights or an overflowing dtype); the run's config flags it (options.allow_nonfinite).",
        ),
    ] = False,
    generate: Annotated[
        int,
        typer.Option(
            "--generate",
            min=0,
            help="Continue each prompt by up to N generated tokens (greedy unless --sample; a row stops after "
            "its end-of-sequence token) and record prompt and response: tokens.segment says which is which. "
            "Routing is that of the forward pass that reads the text (docs/capture.md).",
        ),
    ] = 0,
    sample: Annotated[
        bool,
        typer.Option(
            "--sample", help="Sample the --generate tokens instead of taking the most likely (see --seed)."
        ),
    ] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of --sample (default 0): each prompt draws from its own generator seeded from it and the "
            "prompt id, so a continuation does not depend on the batch or on a resume.",
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature",
            help="Divide the logits by T before --sample draws (default 1).",
        ),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            "--top-p",
            help="--sample draws from the most likely tokens whose probability reaches P (default 1: all).",
        ),
    ] = None,
    chat: Annotated[
        bool,
        typer.Option(
            "--chat",
            help="Put each prompt in the tokenizer's chat template (a user turn, then the assistant's turn "
            "opened); positions index that text. prompts.text keeps the prompt as written.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Record per-token routing of MODEL on the prompts of PROBE into DB; prints the run id.

    Example: moe-workbench capture --model tiny:qwen2_moe --probe probes/example.jsonl --db runs.duckdb

    Generated text: --generate 32 [--chat] records the prompt and the model's greedy continuation
    (--sample --seed S to sample); analyse, report and resonate take --segment response for it alone.

    Data-parallel on N processes (GPUs, or CPU with gloo): torchrun --nproc-per-node N -m workbench.capture
    with the same options. Ranks split the prompts; the store holds one run (docs/capture.md).
    A model too large for one device: --tp-plan auto shards it over all ranks; --tp-size T over groups of T
    ranks, the N/T groups splitting the prompts (e.g. torchrun --nproc-per-node 8 ... --tp-size 4: 2 groups).
    """
    import torch

    from workbench.capture.batching import TruncationTally
    from workbench.capture.distributed import capture_data_parallel, capture_tensor_parallel, rank_env
    from workbench.capture.engine import capture as run_capture
    from workbench.capture.options import CaptureOptions
    from workbench.models.loading import load_model, parse_device_map

    for option, given in (("--seed", seed), ("--temperature", temperature), ("--top-p", top_p)):
        if given is not None and not sample:
            fail(
                f"{option} shapes the sampling of --sample: add --sample (and --generate N), or leave {option} out"
            )
    if sample and not generate:
        fail("--sample samples the generated tokens: give --generate N too")
    writable_db(db)
    summary_builders()
    ranks = rank_env()
    parallel = ranks is not None and ranks.world_size > 1
    if (tp_plan is not None or tp_size is not None or expert_parallel) and not parallel:
        option = (
            "--tp-size" if tp_size is not None else "--expert-parallel" if expert_parallel else "--tp-plan"
        )
        fail(
            f"{option} shards the model across torchrun ranks: start it with "
            "torchrun --nproc-per-node N -m workbench.capture"
        )
    if tp_size is not None or expert_parallel:
        tp_plan = tp_plan or "auto"
    if tp_plan is None and device_map is None:
        local = f"cuda:{ranks.local_rank}" if parallel and ranks is not None else "cuda"
        device = device or (local if torch.cuda.is_available() else "cpu")
    try:
        opts = CaptureOptions(
            batch_size=batch_size,
            max_length=max_length,
            logits=logits,
            expert_stats=expert_stats,
            backend=backend.value,
            device=device,
            dtype=dtype,
            skip_routing_check=skip_routing_check,
            device_map=device_map,
            offload_folder=str(offload_folder) if offload_folder is not None else None,
            tp_plan=tp_plan,
            allow_nonfinite=allow_nonfinite,
            tp_size=tp_size,
            expert_parallel=expert_parallel,
            generate=generate,
            sample=sample,
            seed=seed if seed is not None else 0,
            temperature=temperature if temperature is not None else 1.0,
            top_p=top_p if top_p is not None else 1.0,
            chat=chat,
        )
        if tp_plan is not None:
            rid = capture_tensor_parallel(model, probe, db, run_id=run_id, options=opts, progress=not quiet)
            if ranks is not None and ranks.rank == 0:
                show(rid)
            return
        loaded = load_model(
            model,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            device_map=parse_device_map(device_map) if device_map is not None else None,
            offload_folder=offload_folder,
        )
        with TruncationTally() as truncated:  # constant memory however many prompts are truncated
            if parallel:
                rid = capture_data_parallel(
                    loaded, probe, db, run_id=run_id, options=opts, progress=not quiet
                )
            else:
                rid = run_capture(loaded, probe, db, run_id=run_id, options=opts, progress=not quiet)
        if (summary := truncated.summary()) is not None:
            warn(summary)
    except user_errors() as exc:
        fail(str(exc))
    if not parallel or (ranks is not None and ranks.rank == 0):
        show(rid)


@app.command()
def resume(
    db: Annotated[Path, typer.Option("--db", help="DuckDB file holding the interrupted run.")],
    run: Annotated[
        str, typer.Option("--run", "--run-id", "-r", help="Run id to complete (under torchrun: --run-id).")
    ],
    probe: Annotated[
        Path | None,
        typer.Option(
            "--probe",
            "-p",
            help="The run's probe file, if it moved or was renamed (default: the absolute path recorded at "
            "capture). Accepted only when its prompts are the ones the run was captured from.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="The run's model, if its directory moved (default: the one recorded at capture). Accepted "
            "only when its weights fingerprint is the recorded one.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Complete an interrupted (running/failed) capture without duplicating committed prompts.

    Resume first checks that the probe file holds the prompts the run was captured from (a content
    digest, and each prompt already captured) and that the model has the same weights (a fingerprint);
    otherwise it refuses and writes nothing (docs/capture.md, "Resuming a run").

    A tensor-parallel run resumes under torchrun on as many ranks as it ran on:
    torchrun --nproc-per-node N -m workbench.capture resume --db DB --run-id RUN
    (--run-id there: torchrun's own parser would take --run for its --run-path).
    """
    from workbench.capture.distributed import rank_env, resume_tensor_parallel
    from workbench.capture.engine import resume as run_resume
    from workbench.capture.integrity import UnverifiedResumeWarning

    summary_builders()
    ranks = rank_env()
    try:
        if ranks is not None and ranks.world_size > 1:
            if probe is not None or model is not None:
                fail(
                    "--probe and --model are for a resume in one process; a tensor-parallel resume reads the run's own"
                )
            rid = resume_tensor_parallel(db, run, progress=not quiet)
            if ranks.rank == 0:
                show(rid)
            return
        existing_run(db, run)  # a mistyped --db is named, not created empty (one process: no rank holds it)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnverifiedResumeWarning)
            rid = run_resume(db, run, model=model, probes=probe, progress=not quiet)
        for warning in caught:
            if issubclass(warning.category, UnverifiedResumeWarning):
                warn(str(warning.message))
        show(rid)
    except user_errors() as exc:
        fail(str(exc))


RUNS_COLUMNS = ("run_id", "status", "model", "probe", "experts", "created", "architecture")
"""The columns of `runs`, most wanted first: those that do not fit the terminal are named below it."""


def runs_view(frame: pl.DataFrame) -> pl.DataFrame:
    """The ``runs`` table as printed: the probe's file name, ``8 top-2``, the creation time to the minute."""
    import polars as pl

    if frame.height == 0:
        return pl.DataFrame({c: [] for c in RUNS_COLUMNS}, schema=dict.fromkeys(RUNS_COLUMNS, pl.Utf8))
    return frame.select(
        "run_id",
        "status",
        "model",
        pl.col("probe").map_elements(lambda p: Path(p).name, return_dtype=pl.Utf8),  # "<python>" stays
        pl.format("{} top-{}", "n_experts", "top_k").alias("experts"),
        pl.col("created_at").dt.strftime("%Y-%m-%d %H:%M").alias("created"),
        "architecture",
    )


@app.command()
def runs(
    db: Annotated[Path, typer.Option("--db", help="DuckDB file to read.")],
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Delete the runs that are not complete and hold no rows (failed, or killed before their "
            "first batch: nothing to resume), then list the rest. Parallel runs are kept.",
        ),
    ] = False,
) -> None:
    """List the runs stored in DB with their status, model, probe and size.

    A capture whose process died (killed, out of memory) shows as `interrupted`, with the command
    that finishes it (docs/capture.md).
    """
    from workbench.store import Store
    from workbench.store.liveness import finish_hint, interrupted_runs
    from workbench.store.runs import empty_unfinished_runs

    with reading_store(db):
        try:
            with Store(db, read_only=not prune) as store:
                empty = empty_unfinished_runs(store.con)
                if prune:
                    for rid in empty:
                        store.delete_run(rid)
                frame = store.runs()
        except user_errors() as exc:
            fail(str(exc))
    if prune:
        note(f"removed {len(empty)} run(s) that held no rows" + (f": {', '.join(empty)}" if empty else ""))
    print_frame(runs_view(frame), first=RUNS_COLUMNS, title=str(db), more=None)
    configs = (
        dict(zip(frame["run_id"].to_list(), frame["config"].to_list(), strict=True)) if frame.height else {}
    )
    for rid in interrupted_runs(frame):
        note(
            f"run {rid} was interrupted (the process writing it is gone): {finish_hint(db, rid, configs[rid])}"
        )
    if empty and not prune:
        note(
            f"{len(empty)} run(s) are not complete and hold no rows ({', '.join(empty[:5])}"
            f"{' ...' if len(empty) > 5 else ''}): moe-workbench runs --db {db} --prune removes them"
        )


@app.command()
def export(
    db: Annotated[Path, typer.Option("--db", help="DuckDB file to read.")],
    run: Annotated[str, typer.Option("--run", "-r", help="Run id to export.")],
    parquet: Annotated[
        Path, typer.Option("--parquet", help="Directory to write one Parquet file per table into.")
    ],
) -> None:
    """Export one run's tables (prompts, tokens, routing, ...) as Parquet files."""
    from workbench.store import Store

    with reading_store(db):
        try:
            with Store(db, read_only=True) as store:
                paths = store.export_parquet(run, parquet)
        except user_errors() as exc:
            fail(str(exc))
    for path in paths:
        show(path)


@app.command()
def models() -> None:
    """List the MoE block classes with a built-in adapter (see docs/supported-models.md)."""
    from workbench.models.registry import registered_classes

    for name in registered_classes():
        show(name)
