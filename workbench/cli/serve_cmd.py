"""`moe-workbench serve`: the interactive dashboard over a run store (``dashboards/``)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.app import app, console, fail


def _create_app() -> Any:
    """``dashboards.app.create_app`` (imported late: Dash is only needed to serve)."""
    return importlib.import_module("dashboards.app").create_app


@app.command()
def serve(
    db: Annotated[Path, typer.Option("--db", help="DuckDB store to show (opened read-only per request).")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Model the runs were captured from (path or zoo name), for the lab."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind; the default serves this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8050,
    debug: Annotated[
        bool, typer.Option("--debug", help="Dash dev tools and reloading (development).")
    ] = False,
) -> None:
    """Serve the dashboard: runs, routing, specialisation, health, co-activation, resonance, expert cards.

    The store is opened read-only for each request, so a capture may keep writing to it; every view
    keeps its state in the address, so a view is shared by copying the URL. Binds 127.0.0.1 unless
    --host says otherwise (the dashboard has no authentication).

    Example: moe-workbench serve --db runs.duckdb --port 8050
    """
    from workbench.store import StoreError

    path = db.expanduser().resolve()
    if not path.is_file():
        fail(f"no store at {path}: the file does not exist. Check --db, or capture a run first.")
    try:
        dash_app = _create_app()(path, model=model)
    except StoreError as exc:
        fail(str(exc))
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] serving on {host}: anyone who can reach it can read the store")
    console.print(f"dashboard for {path} at http://{host}:{port}/ (Ctrl-C to stop)")
    dash_app.run(host=host, port=port, debug=debug)
