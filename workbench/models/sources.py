"""Named model sources: ``load_model("tiny-ref")`` without the loader knowing what tiny-ref is.

A *source* is a name, a loader that returns ``(model, tokenizer)`` and a one-line description.
Packages above the models (the zoo) register theirs with :func:`register_source`; the loader
(:mod:`workbench.models.loading`) only looks names up here, so it imports none of them.

So that a name works in a fresh process before anything imported its package, registrations are
also discovered through the entry-point group :data:`ENTRY_POINT_GROUP`: each entry point names a
function taking no arguments that calls :func:`register_source`. Discovery runs once, on the first
lookup or registration (so a later explicit registration may replace a discovered one). The zoo
declares its function in pyproject.toml; an installed third-party package can declare its own:

    [project.entry-points."moe_workbench.model_sources"]
    mine = "my_package.models:register"

An unknown name raises :class:`UnknownSourceError`, which lists the registered names.
``tiny:<model_type>`` (a tiny random model, :mod:`workbench.models.tiny`) is built into the loader
and is not a registered source; names under that prefix are refused here.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from torch import nn

__all__ = [
    "BUILT_IN_PREFIX",
    "ENTRY_POINT_GROUP",
    "ModelSource",
    "SourceLoader",
    "UnknownSourceError",
    "find_source",
    "get_source",
    "register_source",
    "registered_sources",
    "unregister_source",
]

#: The entry-point group whose functions register sources (see the module docstring).
ENTRY_POINT_GROUP = "moe_workbench.model_sources"
#: Names the loader resolves itself (``tiny:<model_type>``); no source may be registered under it.
BUILT_IN_PREFIX = "tiny:"

#: Returns ``(model, tokenizer)``; raises :class:`~workbench.models.loading.ModelLoadError` saying
#: what to do when the model is not there (e.g. not built yet).
SourceLoader = Callable[[], tuple[nn.Module, Any]]


class UnknownSourceError(LookupError):
    """No source is registered under a name; the message lists the registered ones."""


@dataclass(frozen=True)
class ModelSource:
    """One named model: how to load it and what it is."""

    name: str
    loader: SourceLoader
    description: str


_SOURCES: dict[str, ModelSource] = {}
_FAILED: dict[str, str] = {}  # entry point -> why it did not load
_LOCK = threading.RLock()
_discovered = False


def _discover() -> None:
    """Run every registration function of :data:`ENTRY_POINT_GROUP` once per process.

    A function that fails is reported with a warning (and in :class:`UnknownSourceError`), not
    raised: one broken plugin must not stop loading a model directory or the other sources.
    """
    global _discovered
    with _LOCK:
        if _discovered:
            return
        _discovered = True  # before running them: a registration function may register (re-enter)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()()
            except Exception as exc:  # third-party code: any failure is reported, not fatal
                _FAILED[f"{ep.name} = {ep.value}"] = f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    f"model sources from entry point {ep.name} = {ep.value} did not register: "
                    f"{type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )


def register_source(
    name: str, loader: SourceLoader, description: str, *, overwrite: bool = False
) -> ModelSource:
    """Make ``load_model(name)`` call ``loader()``; returns the registered :class:`ModelSource`.

    Registering the same loader under the same name again is a no-op; another loader under a
    taken name raises ``ValueError`` unless ``overwrite``.
    """
    if not name or name != name.strip() or name.startswith(BUILT_IN_PREFIX):
        raise ValueError(
            f"invalid source name {name!r}: it must be non-empty, without surrounding spaces, and "
            f"not start with {BUILT_IN_PREFIX!r} (built in: {BUILT_IN_PREFIX}<model_type>)"
        )
    _discover()
    source = ModelSource(name, loader, description)
    with _LOCK:
        existing = _SOURCES.get(name)
        if existing is not None and existing.loader is not loader and not overwrite:
            raise ValueError(
                f"a model source {name!r} is already registered; pass overwrite=True to replace it"
            )
        _SOURCES[name] = source
    return source


def unregister_source(name: str) -> None:
    """Forget the source ``name``; :class:`UnknownSourceError` when there is none."""
    _discover()
    with _LOCK:
        if name not in _SOURCES:
            raise UnknownSourceError(_unknown(name))
        del _SOURCES[name]


def registered_sources() -> dict[str, ModelSource]:
    """Every registered source by name, sorted (a copy)."""
    _discover()
    with _LOCK:
        return dict(sorted(_SOURCES.items()))


def find_source(name: str) -> ModelSource | None:
    """The source registered as ``name``, or None."""
    _discover()
    with _LOCK:
        return _SOURCES.get(name)


def get_source(name: str) -> ModelSource:
    """The source registered as ``name``; :class:`UnknownSourceError` lists the registered names."""
    source = find_source(name)
    if source is None:
        raise UnknownSourceError(_unknown(name))
    return source


def _unknown(name: str) -> str:
    with _LOCK:
        names = ", ".join(sorted(_SOURCES)) or "none"
        failed = "; ".join(f"{ep} ({why})" for ep, why in sorted(_FAILED.items()))
    message = (
        f"no model source named {name!r}; registered: {names} "
        f"(built in: {BUILT_IN_PREFIX}<model_type>, a tiny random model of that architecture)"
    )
    return message + (f". Entry points that failed to register: {failed}" if failed else "")
