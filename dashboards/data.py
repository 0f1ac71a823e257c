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
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from workbench.analysis.registry import run_analysis
from workbench.analysis.relevance import expert_top_tokens
from workbench.analysis.resonance import default_contrast, resonance_tokens
from workbench.store import Store, StoreError

__all__ = [
    "analysis",
    "attached",
    "clear_cache",
    "contrast",
    "current_db",
    "current_model",
    "driving_tokens",
    "file_version",
    "labels",
    "layers",
    "open_store",
    "prompt_routing",
    "prompts",
    "run_info",
    "runs",
    "stored_resonance",
    "top_tokens",
]

CACHE_SIZE = 256
"""Cached tables per reader; a run's analysis tables are small (one row per layer × expert × label)."""

Options = tuple[tuple[str, Any], ...]


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


@lru_cache(maxsize=CACHE_SIZE)
def _analysis(db: str, version: tuple[int, int], run: str, name: str, options: Options) -> pl.DataFrame:
    with open_store(db) as store:
        return run_analysis(name, store, run, **dict(options))


def analysis(db: str, run: str, name: str, **options: Any) -> pl.DataFrame:
    """The registered analysis ``name`` of ``run`` (``run_analysis``), cached per file version."""
    _need_run(run)
    return _analysis(db, file_version(db), run, name, _freeze(options))


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
            tokens = store.tokens(kw["run"], prompt_ids=[kw["prompt_id"]])
            return routing.join(tokens.select("position", "token"), on="position", how="left")
        if what == "top_tokens":
            return expert_top_tokens(
                store, kw["run"], kw["layer"], kw["expert"], n=kw["n"], min_count=kw["min_count"]
            )
        if what == "driving_tokens":
            return resonance_tokens(
                store,
                kw["run"],
                layer=kw["layer"],
                expert=kw["expert"],
                target=kw["target"],
                control=kw["control"],
            )
        if what == "contrast":
            return default_contrast(store, kw["run"])
        if what == "stored_resonance":
            return store.resonance(kw["run"])
    raise KeyError(what)


def _need_run(run: str | None) -> None:
    if not run:
        raise ValueError("no run chosen: pick one (an empty store has none; capture a run first)")


def _call(db: str, what: str, **args: Any) -> Any:
    if "run" in args:
        _need_run(args["run"])
    return _read(db, file_version(db), what, _freeze(args))


def runs(db: str) -> pl.DataFrame:
    """All runs in the store, oldest first."""
    result: pl.DataFrame = _call(db, "runs")
    return result


def run_info(db: str, run: str) -> dict[str, Any]:
    """One run's metadata (raises ``UnknownRunError`` listing the runs for an unknown id)."""
    result: dict[str, Any] = _call(db, "run_info", run=run)
    return result


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
    """Routing rows of one prompt (every layer) with each position's token string."""
    result: pl.DataFrame = _call(db, "prompt_routing", run=run, prompt_id=int(prompt_id))
    return result


def top_tokens(db: str, run: str, layer: int, expert: int, n: int = 15, min_count: int = 2) -> pl.DataFrame:
    """``expert_top_tokens``: the token ids most specialised to one expert (top-1 routing)."""
    result: pl.DataFrame = _call(
        db, "top_tokens", run=run, layer=int(layer), expert=int(expert), n=n, min_count=min_count
    )
    return result


def driving_tokens(db: str, run: str, layer: int, expert: int, target: str, control: str) -> pl.DataFrame:
    """``resonance_tokens``: the tokens that make one expert resonate on the target prompts."""
    result: pl.DataFrame = _call(
        db, "driving_tokens", run=run, layer=int(layer), expert=int(expert), target=target, control=control
    )
    return result


def contrast(db: str, run: str) -> tuple[str, str] | None:
    """The run's (target, control) contrast set when its pairs make one, else None."""
    result: tuple[str, str] | None = _call(db, "contrast", run=run)
    return result


def stored_resonance(db: str, run: str) -> pl.DataFrame:
    """Resonance maps stored for the run (``moe-workbench resonate``), oldest first."""
    result: pl.DataFrame = _call(db, "stored_resonance", run=run)
    return result


def clear_cache() -> None:
    """Forget every cached table (tests; a long-running server never needs it: keys carry the file version)."""
    _analysis.cache_clear()
    _read.cache_clear()


def current_db() -> str:
    """The store path of the app serving this request (``create_app`` puts it in the server config)."""
    import dash

    return str(dash.get_app().server.config["WORKBENCH_DB"])


def current_model() -> Any:
    """The ``LoadedModel`` the app was started with (None: no ``--model``, or it failed to load)."""
    return attached().loaded


def attached() -> Any:
    """The app's :class:`dashboards.jobs.Attached` model (name, loaded model or load error)."""
    import dash

    from dashboards.jobs import Attached

    found = dash.get_app().server.config.get("WORKBENCH_MODEL")
    return found if isinstance(found, Attached) else Attached()
