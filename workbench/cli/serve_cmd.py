"""`moe-workbench serve`: the interactive dashboard over a run store (``dashboards/``)."""

from __future__ import annotations

import importlib
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.app import app, console, fail

DEFAULT_CACHE = Path("~/.cache/moe-workbench/dashboard")
"""Where ``serve`` keeps computed analysis tables unless told otherwise."""


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
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Keep computed analysis tables here (parquet, keyed by store file version), so a restarted "
            "dashboard starts warm. Default: ~/.cache/moe-workbench/dashboard.",
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Keep analysis tables in memory only.")
    ] = False,
    prewarm: Annotated[
        bool,
        typer.Option(
            "--prewarm/--no-prewarm",
            help="Compute the newest run's page analyses in the background at start.",
        ),
    ] = True,
) -> None:
    """Serve the dashboard: runs, routing, specialisation, health, co-activation, resonance, expert cards.

    The store is opened read-only for each request, so a capture may keep writing to it; every view
    keeps its state in the address, so a view is shared by copying the URL. Analyses run in the
    background (pages show "computing …" until they are ready) and are cached on disk. Binds 127.0.0.1 unless
    --host says otherwise (the dashboard has no authentication).

    Example: moe-workbench serve --db runs.duckdb --port 8050
    """
    from workbench.store import StoreError

    path = db.expanduser().resolve()
    if not path.is_file():
        fail(f"no store at {path}: the file does not exist. Check --db, or capture a run first.")
    try:
        folder = None if no_cache else (cache_dir or DEFAULT_CACHE).expanduser()
        dash_app = _create_app()(path, model=model, cache_dir=folder, prewarm=prewarm)
    except StoreError as exc:
        fail(str(exc))
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] serving on {host}: anyone who can reach it can read the store")
    console.print(f"dashboard for {path} at http://{host}:{port}/ (Ctrl-C to stop)")
    # SIGTERM (a service manager, `kill`) exits like Ctrl-C: the exit handlers remove the job cache
    # folder and stop the analysis workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    dash_app.run(host=host, port=port, debug=debug)
