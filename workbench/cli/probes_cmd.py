"""`moe-workbench probes`: the labelled probe suites shipped in probes/."""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.cli.app import app, fail, out, safe

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
        fail(str(exc))
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
        cells = (suite.name, suite.file, suite.n_prompts, labels, metric or "", suite.description)
        table.add_row(*(safe(v) for v in cells))
    out.print(table)
