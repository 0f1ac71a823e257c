"""`moe-workbench serve`: the interactive dashboard over a run store (``dashboards/``)."""

from __future__ import annotations

import importlib
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.app import app, fail, note, warn

DEFAULT_CACHE = Path("~/.cache/moe-workbench/dashboard")
"""Where ``serve`` keeps computed analysis tables unless told otherwise."""


def _create_app() -> Any:
    """``dashboards.app.create_app`` (imported late: Dash is only needed to serve)."""
    return importlib.import_module("dashboards.app").create_app


def _access() -> Any:
    """``dashboards.access`` (tokens, loopback names), imported late like the app."""
    return importlib.import_module("dashboards.access")


def _address(host: str, port: int) -> str:
    """``http://host:port/`` to open; a wildcard bind (0.0.0.0, ::) is shown as this machine's name."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def _choose_token(token: str | None, no_token: bool, host: str, loopback: bool) -> tuple[str | None, bool]:
    """(token or None, whether it was generated here); exits with a one-line message on a bad choice."""
    access = _access()
    if no_token:
        if token is not None:
            fail(
                f"--no-token and a token (--token or ${access.ENV_VAR}) contradict each other: give one of them"
            )
        if not loopback:
            fail(
                "--no-token is only allowed on a loopback address (127.0.0.1, ::1, localhost), "
                f"not {host!r}: "
                "anyone who can reach the port could use the dashboard. Leave --no-token out."
            )
        return None, False
    if token is None:
        return access.new_token(), True
    try:
        return access.check_token(token), False
    except ValueError as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


@app.command()
def serve(
    db: Annotated[Path, typer.Option("--db", help="DuckDB store to show (opened read-only per request).")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model the runs were captured from (path or zoo name): adds the intervention lab (/lab) and "
            "circuits (/circuits), which run it.",
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Interface to bind; the default serves this machine only. Beyond loopback, anyone who can reach "
            "it and has the token can use the dashboard (with --model: run model jobs, write interventions).",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port (1 to 65535).")] = 8050,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Dash dev tools and reloading (development; loopback hosts only: it exposes the "
            "Werkzeug debugger).",
        ),
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
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="MOE_WORKBENCH_TOKEN",
            show_envvar=True,
            help="Access token to require (at least 16 of A-Z a-z 0-9 - _ . ~), for scripted use; default: a "
            "new random one, printed once in the address. Prefer the environment variable: other users "
            "of the machine can read a command line.",
        ),
    ] = None,
    no_token: Annotated[
        bool,
        typer.Option(
            "--no-token",
            help="Serve without a token (loopback addresses only; then only requests addressed to "
            "127.0.0.1/localhost/::1 are answered). Any user of this machine can then use the dashboard.",
        ),
    ] = False,
) -> None:
    """Serve the dashboard: runs, routing, specialisation, health, co-activation, resonance, expert cards.

    With --model, also the intervention lab (/lab: switch experts off, reroute, force or bias them and see
    what changes) and circuits (/circuits: two tasks' expert circuits, their overlap and cross-ablations).

    Every request needs an access token, loopback included (docs/dashboard.md says why): the address
    printed at start carries it (?token=...); the browser then keeps it in a cookie. Scripts send
    'Authorization: token <token>'. Binds 127.0.0.1 unless --host says otherwise.

    The store is opened read-only for each request only, so a capture can start and write to it while
    the dashboard is open (it waits briefly for a request in flight); the dashboard shows the new run
    once the capture is done. Every view keeps
    its state in the address (never the token), so a view is shared by copying the URL. Analyses run in
    the background (pages show "computing …" until they are ready) and are cached on disk.

    Example: moe-workbench serve --db runs.duckdb --port 8050
    """
    from workbench.store import StoreError

    loopback = bool(_access().is_loopback(host))
    if debug and not loopback:
        fail(
            "--debug serves the Werkzeug debugger, which runs code for whoever reaches it: "
            f"use it on 127.0.0.1, not {host!r}."
        )
    chosen, generated = _choose_token(token, no_token, host, loopback)
    path = db.expanduser().resolve()
    if not path.is_file():
        fail(f"no store at {path}: the file does not exist. Check --db, or capture a run first.")
    try:
        folder = None if no_cache else (cache_dir or DEFAULT_CACHE).expanduser()
        dash_app = _create_app()(
            path, model=model, cache_dir=folder, prewarm=prewarm, token=chosen, loopback_only=chosen is None
        )
    except StoreError as exc:
        fail(str(exc))
    if not loopback:
        jobs = (
            "; with --model they can also run model jobs on this machine and write interventions into the store"
            if model
            else ""
        )
        warn(
            f"serving on {host}: anyone who can reach it and has the token can read the store{jobs}. The traffic "
            "is not encrypted: use this on a trusted network, or an SSH tunnel."
        )
    address = _address(host, port)
    if chosen is None:
        where = f"{address} (no token: loopback only)"
    elif generated:
        where = f"{address}?token={chosen}"
    else:
        where = f"{address} (token from --token / ${_access().ENV_VAR})"
    note(f"dashboard for {path} at {where} (Ctrl-C to stop)")
    # SIGTERM (a service manager, `kill`) exits like Ctrl-C: the exit handlers remove the job cache
    # folder and stop the analysis workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    dash_app.run(host=host, port=port, debug=debug)
