"""`moe-workbench report`: write a self-contained HTML probing report of one run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.analyse_cmd import Segment
from workbench.cli.app import app, console, fail, note, reading_store, user_errors
from workbench.store.segments import SEGMENT_HELP


@app.command()
def report(
    db: Annotated[Path, typer.Option("--db", help="DuckDB file to read.")],
    run: Annotated[str, typer.Option("--run", "-r", help="Run id to report on.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write, e.g. report.html.")],
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare", help="Second run of the same prompts, for the comparison analyses (drift)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="The model the run was captured from (path or zoo name), for analyses that run it "
            "(expert similarity).",
        ),
    ] = None,
    analyses: Annotated[
        list[str] | None,
        typer.Option("--analysis", "-a", help="Only this analysis (repeatable; default: all catalogued)."),
    ] = None,
    segment: Annotated[Segment, typer.Option("--segment", help=SEGMENT_HELP)] = Segment.all,
) -> None:
    """Write a self-contained HTML report: every analysis as sentences with CIs, figures and tables.

    plotly is embedded, so the file opens offline. Analyses the run cannot support (no router
    logits, no --expert-stats, no --compare run, no --model) get a section saying how to get them.

    Example: moe-workbench report --db runs.duckdb --run R --out report.html
    """
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from workbench.catalog import UnknownAnalysisError
    from workbench.reports import write_report

    if out_file.suffix.lower() not in (".html", ".htm"):
        fail(f"--out must end in .html, got {out_file}")
    errors: tuple[type[BaseException], ...] = (UnknownAnalysisError, *user_errors())
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("analyses", total=None)

        def step(i: int, n: int, name: str) -> None:
            bar.update(
                task, total=n, completed=i, description=escape(f"analysis {name}") if name else "rendering"
            )

        try:
            with reading_store(db):
                path = write_report(
                    db,
                    run,
                    out_file,
                    compare=compare,
                    model=model,
                    analyses=analyses,
                    progress=step,
                    segment=segment.value,
                )
        except errors as exc:
            fail(str(exc))
    note(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
