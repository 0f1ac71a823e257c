"""`moe-workbench analyse`: run one catalogued analysis (``workbench.catalog``) and write its tidy table."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from workbench.cli.app import app, fail, note, out, reading_store, safe, show, user_errors, write_table
from workbench.cli.tables import id_columns, print_frame, significant_first
from workbench.store.segments import SEGMENT_HELP

if TYPE_CHECKING:
    import polars as pl

    from workbench.wording import Context


class GroupBy(str, Enum):
    label = "label"


class Segment(str, Enum):
    """``--segment`` of analyse, report and resonate: the values of ``workbench.store.segments.SEGMENT_CHOICES``."""

    prompt = "prompt"
    response = "response"
    all = "all"


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
    segment: Annotated[Segment, typer.Option("--segment", help=SEGMENT_HELP)] = Segment.all,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model the run was captured from (zoo name, directory or hub id), for analyses that "
            "run it (expert-similarity).",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device", help="Device for --model: cpu, cuda, cuda:1 ... (default: cuda if available)."
        ),
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the table to FILE: .csv, .parquet or .json (default: print the findings and the "
            "first rows, significant ones first).",
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="An option of the analysis as KEY=VALUE (repeatable), e.g. --set n_perm=20000 --set seed=1;"
            " a wrong key lists the ones it has.",
        ),
    ] = None,
) -> None:
    """Run one analysis (docs/methods.md §1–§7) on a stored run and write its tidy table.

    Example: moe-workbench analyse specialisation --db runs.duckdb --run R --out spec.csv

    Compare two runs: moe-workbench analyse drift --db runs.duckdb --run R --compare R2 --out drift.parquet
    (prompts are matched by text and token ids; runs that share none are refused).

    Analyses that run the model: moe-workbench analyse expert-similarity --db runs.duckdb --run R --model M

    Resampling and other options: --set n_perm=20000 (a smaller permutation p floor for large maps).

    Generated text (capture --generate): --segment response analyses the responses alone, --segment
    prompt the prompts alone.
    """
    from workbench.catalog import (
        ANALYSES,
        UnknownAnalysisError,
        analysis_options,
        list_options,
        run_analysis,
    )

    if list_:
        from rich.table import Table

        table = Table(title="analyses (moe-workbench analyse NAME --db DB --run R --out FILE)")
        for col in ("name", "section", "needs", "summary"):
            table.add_column(col)
        for spec in ANALYSES.values():
            table.add_row(*(safe(v) for v in (spec.name, spec.section, ", ".join(spec.needs), spec.summary)))
        out.print(table)
        return
    if name is None:
        fail("give an analysis NAME (see `moe-workbench analyse --list`)")
    if db is None or run is None:
        fail(f"--db and --run are required, e.g. moe-workbench analyse {name} --db runs.duckdb --run R")
    suffix = out_file.suffix.lower() if out_file is not None else None
    if suffix not in (None, ".csv", ".parquet", ".json"):
        fail(f"--out must end in .csv, .parquet or .json, got {out_file}")
    assert db is not None and run is not None and name is not None  # for the type checker: _fail exits
    from workbench.store import Store

    errors: tuple[type[BaseException], ...] = (UnknownAnalysisError, *user_errors())
    try:
        from workbench.cli.settings import parse_settings

        kwargs = parse_settings(settings or [], analysis_options(name), name, list_options(name))
        loaded = _load_model(name, model, device)
        with reading_store(db), Store(db, read_only=True) as store:
            frame = run_analysis(
                name, store, run, compare=compare, model=loaded, segment=segment.value, **kwargs
            )
            ctx = None if out_file is not None else _context(store, run, compare, kwargs)
    except errors as exc:
        fail(str(exc))
    if (
        compare is not None
        and {"n_shared", "n_prompts_a", "n_prompts_b"} <= set(frame.columns)
        and frame.height
    ):
        from workbench.analysis.compare import drift_coverage

        note(drift_coverage(frame, run, compare))  # how many prompts the two runs share
    if out_file is None:
        assert ctx is not None
        print_findings(name, frame, ctx)
        return
    write_table(frame, out_file)
    note(f"wrote {frame.height} rows × {frame.width} columns to {out_file}")


SHOWN_ROWS = 15
"""Rows printed without --out (significant ones first); --out writes them all."""


def _context(store: Any, run: str, compare: str | None, options: dict[str, Any]) -> Context:
    """What the finding sentences need besides the table (as the report builds it)."""
    from workbench.wording import Context

    info = store.run(run)
    labels = tuple(sorted(str(x) for x in store.prompts(run)["label"].drop_nulls().unique().to_list()))
    contrast = (options["target"], options["control"]) if {"target", "control"} <= set(options) else None
    return Context(
        n_experts=int(info.get("n_experts") or 0),
        top_k=int(info.get("top_k") or 0),
        labels=labels,
        compare=compare,
        extra={"contrast": contrast} if contrast else {},
    )


def print_findings(name: str, frame: pl.DataFrame, ctx: Context) -> None:
    """The analysis' findings as sentences (as the report states them), then its rows, significant first."""
    from workbench.catalog import findings_for

    if frame.height == 0:
        show("The analysis returned no rows for this run.")
        return
    try:
        sentences = findings_for(name, frame, ctx)
    except Exception as exc:  # the rows are still worth showing
        sentences = [f"The findings could not be summarised ({str(exc).splitlines()[0]}); see the rows."]
    for sentence in sentences:
        show(f"- {sentence}")
    rows = significant_first(frame)
    flags = [c for c in ("specialised", "significant") if c in frame.columns]
    first = [*id_columns(frame.columns), *flags, *(c for c in ("q", "p") if c in frame.columns)]
    show("")
    print_frame(rows.head(SHOWN_ROWS), first=first, total=frame.height)


def _load_model(name: str, model: str | None, device: str | None) -> object:
    """The loaded ``--model`` when analysis ``name`` needs one (else None: nothing is loaded)."""
    from workbench.catalog import get_analysis

    if model is None or not get_analysis(name).needs_model:
        return None
    from workbench.models.loading import load_model

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(model, device=device)
