"""The dashboard's data layer: read-only store access with a small cache around the analyses.

Why: a Dash callback fires on every control change, and most analyses take tens of
milliseconds to seconds; the same (run, analysis, options) is asked for again and again
as a user clicks around. So every read goes through a function here that opens the store
**read-only** for the duration of one call (a capture in another process may hold the
write lock between calls; DuckDB then refuses, and the page says so) and caches the polars
result keyed by ``(db, file version, run, analysis, options)``. The file version (its
modification time and size) is part of the key, so a store that a capture has grown since
is read afresh instead of served stale. User input only ever reaches SQL as parameters of
the store readers and analysis functions; nothing here formats SQL.

**Callbacks never wait for an analysis.** An analysis of a 1M-token run takes seconds, and a
callback that runs one holds the page (and, on a busy box, its neighbours) that long. So the
slow results (every analysis, an expert's top tokens and example contexts, resonance driving tokens) are computed
by a small pool of background processes (:mod:`dashboards.background`). Inside
:func:`nonblocking` — every Dash request of the app (``create_app`` installs it) — asking for a
result that is not ready starts
its computation (once; concurrent askers share it) and raises :class:`Pending`; the page shows
"computing <what> for run R…" and polls (:mod:`dashboards.components.pending`) until the result
is there. Outside it (tests, scripts, background jobs, the pool itself) a call computes and
waits as before. Cheap reads (runs, layers, prompts: tens of ms) are always served inline.

Optionally (:func:`configure`) finished analysis tables are also kept as parquet files under a
cache folder, keyed by the store's path and file version and the analysis and its options, so a
dashboard served again over the same store starts warm; and :func:`prewarm` queues a run's
page analyses when the server starts.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from dashboards.background import (
    WORKERS,
    Pending,
    Results,
    begin_nonblocking,
    end_nonblocking,
    nonblocking,
)
from workbench.analysis import tokens as token_reads
from workbench.analysis.relevance import expert_top_tokens
from workbench.analysis.resonance import default_contrast, resonance_tokens
from workbench.analysis.tokens import ExpertContexts, decode_tokens, token_scheme
from workbench.catalog import PAGE_ANALYSES, RunFacts, prewarm_options, run_analysis
from workbench.store import Store, StoreError
from workbench.store.liveness import observe, with_observed_status
from workbench.store.segments import segment_counts, segment_scope

__all__ = [
    "PAGE_ANALYSES",
    "Pending",
    "analysis",
    "any_ready",
    "attached",
    "begin_nonblocking",
    "clear_cache",
    "configure",
    "contrast",
    "current_db",
    "current_model",
    "driving_tokens",
    "end_nonblocking",
    "evaluations",
    "expert_contexts",
    "file_version",
    "interventions",
    "labels",
    "layers",
    "nonblocking",
    "open_store",
    "prewarm",
    "prompt_routing",
    "prompts",
    "run_info",
    "runs",
    "scoped",
    "shutdown",
    "start_workers",
    "stored_resonance",
    "top_tokens",
]

CACHE_SIZE = 256
"""Cached tables per reader; a run's analysis tables are small (one row per layer × expert × label)."""

Options = tuple[tuple[str, Any], ...]
log = logging.getLogger("dashboards")


def _noop() -> None:
    """A task that only makes a worker process start and import the analyses."""


def start_workers() -> None:
    """Start the pool's processes now (server start), so the first slow request does not pay their start-up."""
    for _ in range(WORKERS):
        _RESULTS.submit(Future(), (_noop, ()))


def any_ready(tokens: list[str] | None) -> bool:
    """Whether a page's pending computations (the tokens its callback got) have any result yet."""
    return bool(tokens) and _RESULTS.any_ready(list(tokens or []))


_RESULTS = Results(CACHE_SIZE)
_DISK: dict[str, Path | None] = {"dir": None}
atexit.register(_RESULTS.shutdown)


DISK_MAX_AGE_S = 30 * 24 * 3600
"""Cached parquet tables not used for this long are deleted when a dashboard starts (old store versions)."""


def configure(cache_dir: str | Path | None) -> None:
    """Keep finished analysis tables as parquet under ``cache_dir`` too (None: memory only).

    Tables not read or written for :data:`DISK_MAX_AGE_S` are removed, so the folder does not keep
    every past version of every store forever.
    """
    _DISK["dir"] = None if cache_dir is None else Path(cache_dir).expanduser()
    folder = _DISK["dir"]
    if folder is not None and folder.is_dir():
        cutoff = time.time() - DISK_MAX_AGE_S
        for old in folder.glob("*.parquet"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:  # another server removed or is replacing it
                continue


def shutdown() -> None:
    """Stop the background pool (queued computations are dropped); the next slow call starts a new one."""
    _RESULTS.shutdown()


def _disk_path(key: tuple[Any, ...], folder: Path | None) -> Path | None:
    if folder is None:
        return None
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    return folder / f"{key[3]}-{digest}.parquet"


def _compute_analysis(key: tuple[Any, ...], folder: Path | None) -> pl.DataFrame:
    """``run_analysis`` of ``key`` = (db, version, run, name, options), through the parquet cache in ``folder``."""
    db, _version, run, name, options = key
    path = _disk_path(key, folder)
    if path is not None and path.is_file():
        try:
            table = pl.read_parquet(path)
            os.utime(path)  # used: keep it past the age limit
            return table
        except (OSError, pl.exceptions.PolarsError) as exc:  # a torn or foreign file: recompute
            log.warning("ignoring unreadable cached table %s: %s", path, exc)
    with open_store(db) as store:
        df = run_analysis(name, store, run, **dict(options))
    if path is not None and isinstance(df, pl.DataFrame):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            df.write_parquet(tmp)
            os.replace(tmp, path)
        except (OSError, pl.exceptions.PolarsError) as exc:  # the cache is an optimisation only
            log.warning("could not cache %s: %s", path, exc)
    return df


def file_version(db: str) -> tuple[int, int]:
    """(mtime in ns, size) of the store file: part of every cache key, so new writes invalidate it."""
    try:
        stat = os.stat(db)
    except OSError as exc:
        raise StoreError(f"no store at {db}: {exc.strerror or exc}") from exc
    return stat.st_mtime_ns, stat.st_size


@contextmanager
def open_store(db: str) -> Iterator[Store]:
    """The store at ``db`` opened read-only for one request, closed afterwards."""
    if not Path(db).exists():
        raise StoreError(f"no store at {db}: the file does not exist (check --db, or capture a run first)")
    store = Store(db, read_only=True)
    try:
        yield store
    finally:
        store.close()


def _freeze(options: dict[str, Any]) -> Options:
    """Keyword options as a hashable, order-independent cache key (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))


def _analysis_key(db: str, run: str, name: str, options: dict[str, Any]) -> tuple[Any, ...]:
    return (db, file_version(db), run, name, _freeze(options))


def analysis(db: str, run: str, name: str, **options: Any) -> pl.DataFrame:
    """The registered analysis ``name`` of ``run`` (``run_analysis``), cached per file version.

    Non-blocking (:func:`nonblocking`): raises :class:`Pending` while it is being computed.
    """
    _need_run(run)
    key = _analysis_key(db, run, name, options)
    result: pl.DataFrame = _RESULTS.get(
        ("analysis", key), (_compute_analysis, (key, _DISK["dir"])), name, run
    )
    return result


def prewarm(db: str, run: str | None, names: tuple[str, ...] = PAGE_ANALYSES) -> None:
    """Queue ``run``'s page analyses in the background pool (server start), so first visits find them ready.

    ``PAGE_ANALYSES`` and each analysis' options (the ones its page asks for, e.g. resonance's
    contrast pair) come from the catalog entries' ``prewarm``.
    """
    if not run:
        return
    facts = RunFacts(contrast=contrast(db, run))
    for name in names:
        options = prewarm_options(name, facts)
        if options is None:
            continue
        key = _analysis_key(db, run, name, options)
        _RESULTS.warm(("analysis", key), (_compute_analysis, (key, _DISK["dir"])))


@lru_cache(maxsize=CACHE_SIZE)
def _read(db: str, version: tuple[int, int], what: str, args: Options) -> Any:
    """One cached reader call; ``what`` names the reader below, ``args`` its keyword arguments."""
    kw = dict(args)
    with open_store(db) as store:
        if what == "runs":
            return store.runs()
        if what == "run_info":
            return store.run(kw["run"])
        if what == "layers":
            return store.layers(kw["run"])
        if what == "prompts":
            return store.prompts(kw["run"])
        if what == "prompt_routing":
            routing = store.routing(kw["run"], prompt_ids=[kw["prompt_id"]])
            tokens = decode_tokens(
                store.tokens(kw["run"], prompt_ids=[kw["prompt_id"]]), token_scheme(store, kw["run"])
            )
            return routing.join(
                tokens.select("position", "token_id", "token", "text", "hover"), on="position", how="left"
            )
        if what == "expert_contexts":
            return token_reads.expert_contexts(
                store, kw["run"], kw["layer"], kw["expert"], n=kw["n"], window=kw["window"], seed=kw["seed"]
            )
        if what == "top_tokens":
            return expert_top_tokens(
                store, kw["run"], kw["layer"], kw["expert"], n=kw["n"], min_count=kw["min_count"]
            )
        if what == "driving_tokens":
            with segment_scope(store, kw.get("segment")) as view:
                return resonance_tokens(
                    view,
                    kw["run"],
                    layer=kw["layer"],
                    expert=kw["expert"],
                    target=kw["target"],
                    control=kw["control"],
                    span=kw.get("span"),
                )
        if what == "segments":
            return segment_counts(store, kw["run"])
        if what == "contrast":
            return default_contrast(store, kw["run"])
        if what == "stored_resonance":
            return store.resonance(kw["run"])
        if what == "interventions":
            return store.interventions(kw["run"])
        if what == "evaluations":
            return store.evaluations(run_id=kw["run"])
        if what == "compatible_runs":
            return store.compatible_runs(kw["run"])
    raise KeyError(what)


def _need_run(run: object) -> None:
    if not run:
        raise ValueError("no run chosen: pick one (an empty store has none; capture a run first)")
    if not isinstance(run, str):  # a tampered request: a run id is always text
        raise ValueError(f"a run id is text, not {type(run).__name__}: pick a run from the list")


SLOW_READS = {
    "top_tokens": "top tokens",
    "driving_tokens": "driving tokens",
    "expert_contexts": "example contexts",
}
"""Readers that scan the routing table (hundreds of ms on a 1M-token run): computed in the pool."""


def _call(db: str, what: str, **args: Any) -> Any:
    if "run" in args:
        _need_run(args["run"])
    version, frozen = file_version(db), _freeze(args)
    if what in SLOW_READS:
        desc = f"{SLOW_READS[what]} of layer {args.get('layer')} expert {args.get('expert')}"
        return _RESULTS.get(
            ("read", db, version, what, frozen),
            (_read, (db, version, what, frozen)),
            desc,
            args.get("run"),
        )
    return _read(db, version, what, frozen)


def runs(db: str) -> pl.DataFrame:
    """All runs in the store, oldest first.

    The status is observed on every call, not cached with the file's version: a capture that dies
    leaves the file unchanged, and its run must turn ``interrupted`` (workbench/store/liveness.py).
    """
    result: pl.DataFrame = _call(db, "runs")
    return with_observed_status(result)


def run_info(db: str, run: str) -> dict[str, Any]:
    """One run's metadata (raises ``UnknownRunError`` listing the runs for an unknown id); status as in :func:`runs`."""
    result: dict[str, Any] = _call(db, "run_info", run=run)
    return observe(dict(result))


def layers(db: str, run: str) -> pl.DataFrame:
    """The run's MoE layers."""
    result: pl.DataFrame = _call(db, "layers", run=run)
    return result


def prompts(db: str, run: str, label: str | None = None) -> pl.DataFrame:
    """The run's prompts, optionally only those labelled ``label``."""
    frame: pl.DataFrame = _call(db, "prompts", run=run)
    return frame if label is None else frame.filter(pl.col("label") == label)


def labels(db: str, run: str) -> list[str]:
    """The run's distinct non-null prompt labels, sorted."""
    return sorted({str(x) for x in prompts(db, run)["label"].drop_nulls().to_list()})


def prompt_routing(db: str, run: str, prompt_id: int) -> pl.DataFrame:
    """Routing rows of one prompt (every layer) with each position's token: ``token_id``, ``token`` (the raw
    symbol), ``text`` (decoded, whitespace visible) and ``hover`` (id, symbol and bytes)."""
    result: pl.DataFrame = _call(db, "prompt_routing", run=run, prompt_id=int(prompt_id))
    return result


def top_tokens(db: str, run: str, layer: int, expert: int, n: int = 15, min_count: int = 2) -> pl.DataFrame:
    """``expert_top_tokens``: the token ids most specialised to one expert (top-1 routing)."""
    result: pl.DataFrame = _call(
        db, "top_tokens", run=run, layer=int(layer), expert=int(expert), n=n, min_count=min_count
    )
    return result


def expert_contexts(
    db: str, run: str, layer: int, expert: int, n: int = 10, window: int = 8, seed: int = 0
) -> ExpertContexts:
    """``expert_contexts``: an expert's top contexts by gate weight, a seeded sample, and their label mix."""
    result: ExpertContexts = _call(
        db, "expert_contexts", run=run, layer=int(layer), expert=int(expert), n=n, window=window, seed=seed
    )
    return result


def driving_tokens(
    db: str,
    run: str,
    layer: int,
    expert: int,
    target: str,
    control: str,
    span: str | None = None,
    segment: str | None = None,
) -> pl.DataFrame:
    """``resonance_tokens``: the tokens that make one expert resonate on the target prompts (within ``span``
    of ``segment``'s tokens)."""
    result: pl.DataFrame = _call(
        db, "driving_tokens", run=run, layer=int(layer), expert=int(expert), target=target, control=control,
        span=span, **scoped(segment),
    )  # fmt: skip
    return result


def scoped(segment: str | None) -> dict[str, str]:
    """``segment=`` for :func:`analysis` and the address: nothing for every token (None or ``all``), so the
    cache key and the query string stay the plain ones; else ``{"segment": segment}``."""
    return {"segment": segment} if segment not in (None, "all") else {}


def segments(db: str, run: str) -> dict[str, int]:
    """The run's tokens per segment ('prompt'; 'response' for a run captured with --generate)."""
    result: dict[str, int] = _call(db, "segments", run=run)
    return result


def contrast(db: str, run: str) -> tuple[str, str] | None:
    """The run's (target, control) contrast set when its pairs make one, else None."""
    result: tuple[str, str] | None = _call(db, "contrast", run=run)
    return result


def stored_resonance(db: str, run: str) -> pl.DataFrame:
    """Resonance maps stored for the run (``moe-workbench resonate``), oldest first."""
    result: pl.DataFrame = _call(db, "stored_resonance", run=run)
    return result


def interventions(db: str, run: str) -> pl.DataFrame:
    """Interventions recorded on the run (the lab, ``moe-workbench intervene``), oldest first; ``spec`` is JSON."""
    result: pl.DataFrame = _call(db, "interventions", run=run)
    return result


def evaluations(db: str, run: str) -> pl.DataFrame:
    """Evaluation rows (metric, value, CI per label) of the run's interventions."""
    result: pl.DataFrame = _call(db, "evaluations", run=run)
    return result


def compatible_runs(db: str, run: str) -> pl.DataFrame:
    """Runs sharing at least one prompt (text and token ids) with ``run``: ``run_id, n_shared, n_prompts``."""
    result: pl.DataFrame = _call(db, "compatible_runs", run=run)
    return result


def clear_cache() -> None:
    """Forget every cached table (tests; a long-running server never needs it: keys carry the file version)."""
    _RESULTS.clear()
    _read.cache_clear()


def _server_config() -> Any:
    """The config of the Flask server handling this request, else of the last Dash app created.

    Flask's ``current_app`` is the request's own server. ``dash.get_app()`` alone can name another
    app when several exist in one process (tests, notebooks): it read one test's store for another's.
    """
    import flask

    if flask.has_app_context():
        return flask.current_app.config
    import dash

    return dash.get_app().server.config


def current_db() -> str:
    """The store path of the app serving this request (``create_app`` puts it in the server config)."""
    return str(_server_config()["WORKBENCH_DB"])


def current_model() -> Any:
    """The ``LoadedModel`` the app was started with (None: no ``--model``, or it failed to load)."""
    return attached().loaded


def attached() -> Any:
    """The app's :class:`dashboards.jobs.Attached` model (name, loaded model or load error)."""
    from dashboards.jobs import Attached

    found = _server_config().get("WORKBENCH_MODEL")
    return found if isinstance(found, Attached) else Attached()
