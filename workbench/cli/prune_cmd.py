"""`moe-workbench prune`: task pruning with retention curves (docs/methods.md §8 ``prune(task)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, fail, note, show, user_errors
from workbench.cli.tables import print_frame


@app.command()
def prune(
    task: Annotated[
        str, typer.Option("--task", "-t", help="Label of the suite's prompts (e.g. arithmetic).")
    ],
    keep: Annotated[
        str, typer.Option("--keep", help="Fractions of experts kept per layer, comma-separated, in (0, 1].")
    ] = "0.25,0.5,0.75",
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo name or model directory.")] = "tiny-ref",
    suite: Annotated[
        str, typer.Option("--suite", help="Probe suite holding the task (needs meta.gold).")
    ] = "tasks",
    n_random: Annotated[int, typer.Option("--random", help="Random keep sets per fraction (seeds).")] = 5,
    methods: Annotated[
        str, typer.Option("--methods", help="Scorers choosing the keep sets: tcess, esft, frequency.")
    ] = "tcess,esft,frequency",
    max_prompts: Annotated[
        int | None, typer.Option("--max-prompts", help="Cap on each half (selection, evaluation).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="First random seed.")] = 0,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the table to FILE (.csv).")] = None,
) -> None:
    """How much of the TASK survives keeping only a fraction of each layer's experts?

    Splits the task's prompts into a selection and an evaluation half, scores experts on the
    first by TCESS, ESFT gate score and selection frequency, keeps each layer's top
    ceil(f·E) experts (never fewer than top-k) and reroutes the rest, and measures exact match
    and the gold answer's log-prob on the second, against random keep sets of the same size.
    retention = exact match / unpruned, reported only when the unpruned model answers at least
    10 evaluation prompts correctly (else "not enough baseline successes" is printed and
    retention is empty); lp_retention = exp(mean log-prob change).

    Example: moe-workbench prune --task arithmetic --keep 0.25,0.5,0.75 --out prune.csv
    """
    import polars as pl

    from workbench.data.suites import load_suite
    from workbench.interventions.pruning import retention_curve, summary_lines
    from workbench.models.loading import load_model

    try:
        fractions = tuple(float(x) for x in keep.split(","))
    except ValueError:
        fail(f"--keep must be numbers separated by commas, got {keep!r}")
    if out_file is not None and out_file.suffix.lower() != ".csv":
        fail(f"--out must be a .csv file, got {out_file}")
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    try:
        table = retention_curve(
            load_model(model), load_suite(suite), label=task, keep=fractions, methods=chosen,
            n_random=n_random, seed=seed, n_select=max_prompts, n_eval=max_prompts, log=note,
        )  # fmt: skip
    except user_errors() as exc:
        fail(str(exc))
    with pl.Config(
        tbl_rows=-1, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
        tbl_formatting="ASCII_MARKDOWN", float_precision=3, tbl_width_chars=400,
    ):  # fmt: skip
        print_frame(table.drop("experts"), more=None)
    for line in summary_lines(table):
        show(line)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        table.write_csv(out_file)
        note(f"wrote {out_file}")
