"""The Dash app: ``create_app(db)`` → a multi-page dashboard over a run store.

Pages live in ``dashboards/pages/`` (one module each, registered with ``dash.register_page``);
this module builds the shell around them — a navigation bar made from the page registry
(:mod:`dashboards.components.nav`) whose links keep the current run, the page container, and the
app-level ``wb-run`` store that the pages' URL state feeds (see :mod:`dashboards.components.url`).
The store is never held open: each request opens it read-only through :mod:`dashboards.data`, so
a capture can write between requests.

Dash imports the page modules when the app is created and their ``dash.callback``s are global
until the first request binds them to the app: create one app per process.

With a model (``serve --model M``) the app loads it once (:func:`dashboards.jobs.attach_model`)
and runs the lab's and circuits' long jobs as background callbacks in threads of this process
(:class:`dashboards.jobs.ThreadJobManager`), so they share that one model.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dash
import diskcache
import duckdb
import flask
from dash import Input, Output, dcc, html

from dashboards import callback_guard, data
from dashboards.access import LoopbackGate, TokenGate
from dashboards.components.nav import nav_hrefs, nav_pages, navbar
from dashboards.components.pickers import default_run
from dashboards.components.url import RUN_STORE
from dashboards.jobs import ThreadJobManager, attach_model
from workbench.store import StoreError

__all__ = ["create_app", "job_cache"]

PAGES_DIR = Path(__file__).resolve().parent / "pages"


def job_cache() -> tuple[diskcache.Cache, Callable[[], None]]:
    """(cache, cleanup): the background-callback cache in a temp folder of its own.

    ``diskcache.Cache()`` without a folder makes a temp folder that nothing removes; this one is
    removed by ``cleanup``, which also runs when the process exits (a server stopped with Ctrl-C).
    """
    folder = tempfile.mkdtemp(prefix="moe-workbench-jobs-")
    cache = diskcache.Cache(folder)

    def cleanup() -> None:
        cache.close()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(cleanup)
    return cache, cleanup


def _nonblocking(server: flask.Flask) -> None:
    """Every request of the app runs in the data layer's non-blocking mode (no callback waits for an analysis)."""

    @server.before_request
    def _begin() -> None:
        flask.g.wb_pending = data.begin_nonblocking()

    @server.teardown_request
    def _end(_exc: BaseException | None) -> None:
        token = flask.g.pop("wb_pending", None)
        if token is not None:
            data.end_nonblocking(token)


def create_app(
    db_path: str | Path,
    model: Any = None,
    cache_dir: str | Path | None = None,
    prewarm: bool = False,
    *,
    token: str | None = None,
    loopback_only: bool = False,
) -> dash.Dash:
    """A Dash app showing the store at ``db_path`` (read-only); ``model`` unlocks the lab.

    ``token`` makes every request need it (:class:`dashboards.access.TokenGate`: ``?token=``, its
    cookie, or an ``Authorization: token`` header); ``loopback_only`` answers only requests addressed
    to a loopback name (:class:`dashboards.access.LoopbackGate`, for ``serve --no-token``). Without
    either the app has no access control of its own: an embedder serving it must add one.

    ``model`` is a zoo name or path (loaded here, once) or a ``LoadedModel``; a model that fails
    to load leaves the read-only pages working and the lab saying why. Raises ``StoreError`` when
    there is no store file at ``db_path``: a dashboard over nothing would only show messages.

    Callbacks never wait for an analysis (:mod:`dashboards.data`): ``cache_dir`` keeps finished
    analysis tables as parquet files there, so the next server over the same store starts warm;
    ``prewarm`` queues the newest complete run's page analyses in the background right away.
    Those run in spawned worker processes, which import the ``__main__`` module again: a script
    calling ``create_app`` needs the usual ``if __name__ == "__main__":`` guard (without it the
    workers cannot start, and the analyses fall back to threads of this process, with a warning).
    """
    db = Path(db_path).expanduser().resolve()
    if not db.is_file():
        raise StoreError(f"no store at {db}: the file does not exist (check --db, or capture a run first)")
    data.configure(cache_dir)
    cache, cleanup = job_cache()
    app = dash.Dash(
        "dashboards",
        use_pages=True,
        pages_folder=str(PAGES_DIR),
        title="moe-workbench",
        update_title="",  # no "Updating..." flicker in the tab title
        background_callback_manager=ThreadJobManager(cache, expire=3600),
    )
    app.server.config["WORKBENCH_CLEANUP"] = cleanup  # for embedders and tests; also runs at exit
    app.server.config["WORKBENCH_DB"] = str(db)
    app.server.config["WORKBENCH_MODEL"] = attach_model(model)
    _nonblocking(app.server)
    callback_guard.install(app.server, lambda: app.callback_map)
    if token is not None:
        app.server.wsgi_app = TokenGate(app.server.wsgi_app, token)
    if loopback_only:
        app.server.wsgi_app = LoopbackGate(app.server.wsgi_app)
    data.start_workers()
    if prewarm:
        _prewarm(str(db))
    pages = nav_pages()  # Dash has imported pages/ (creating the app registered them)
    app.layout = html.Div(
        [
            dcc.Store(id=RUN_STORE),
            navbar(pages),
            html.Main(dash.page_container, className="wb-main"),
        ]
    )

    @app.callback([Output(p.link_id, "href") for p in pages], Input(RUN_STORE, "data"))
    def _nav_hrefs(run: str | None) -> list[str]:
        return nav_hrefs(pages, run)

    return app


def _prewarm(db: str) -> None:
    """Queue the default run's page analyses (a store that cannot be read now just is not warmed)."""
    try:
        data.prewarm(db, default_run(db))
    except (StoreError, OSError, duckdb.Error) as exc:
        data.log.warning("not prewarming %s: %s", db, exc)
