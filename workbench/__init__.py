"""moe-workbench: capture, analyse and intervene on the routing of Mixture-of-Experts models.

import workbench as wb
run_id = wb.capture_routing("tiny:qwen2_moe", "probes/example.jsonl", "runs.duckdb")
db = wb.open("runs.duckdb")        # a Session: the store's readers plus analysis handles
db.runs()                          # polars DataFrame
db.routing(run_id, layers=[1], labels=["code"])
spec = db.run(run_id).specialisation(by="label")   # polars DataFrame (share vs other labels, log-odds, q, specialised)
spec.plot(label="code")                              # plotly figure
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.session import Session

#: Intervention specs and ``intervene`` (docs/methods.md §8), exported lazily from workbench.interventions.
_INTERVENE = frozenset(
    [
        "intervene",
        "Intervention",
        "Ablate",
        "Zero",
        "Reroute",
        "Force",
        "Bias",
        "TopK",
        "TopP",
        "Scale",
        "Prune",
    ]
)

__all__ = [
    "RoutingFamily",
    "capture_routing",
    "load_model",
    "open",
    "register_adapter",
    "resume",
    *sorted(_INTERVENE),
]


def open(path: str | Path, read_only: bool = True, model: Any = None) -> Session:
    """Open a run store for analysis: a :class:`~workbench.session.Session` (read-only by default).

    ``session.run(R)`` gives a run's analyses as methods; the store's readers (``runs``,
    ``routing``, ``prompts`` ...) are available on the session too. ``model`` (optional, from
    :func:`load_model`) is used by analyses that need the weights (expert similarity).
    """
    from workbench.session import Session
    from workbench.store import Store

    return Session(Store(path, read_only=read_only), model=model)


def capture_routing(model: Any, probes: Any, db: str | Path, **kwargs: Any) -> str:
    """Capture routing of ``model`` on ``probes`` into ``db``; returns the run id.

    ``probes`` is a probe file (JSONL/CSV/Parquet) or prompts from Python: plain strings, dicts with
    ``text`` (and ``label``, ``pair_id``, ``split``, ``meta``, ``prompt_id``) or
    :class:`~workbench.probefile.Prompt` objects, in a list or a generator. See :func:`workbench.capture.engine.capture` for the options. Not called ``capture``: that
    name is the subpackage :mod:`workbench.capture`, which importing any of its modules binds here.
    """
    import workbench.analysis.summaries  # noqa: F401  (registers every summary part the run's completion builds)
    from workbench.capture.engine import capture as _capture

    return _capture(model, probes, db, **kwargs)


def resume(db: str | Path, run_id: str, **kwargs: Any) -> str:
    """Complete an interrupted run; see :func:`workbench.capture.engine.resume`."""
    import workbench.analysis.summaries  # noqa: F401  (registers every summary part the run's completion builds)
    from workbench.capture.engine import resume as _resume

    return _resume(db, run_id, **kwargs)


def load_model(source: Any, tokenizer: Any = None, **kwargs: Any) -> Any:
    """Load a model and discover its MoE layers; see :func:`workbench.models.loading.load_model`."""
    from workbench.models.loading import load_model as _load

    return _load(source, tokenizer, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "register_adapter":
        from workbench.models.registry import register_adapter

        return register_adapter
    if name == "RoutingFamily":
        from workbench.models.family import RoutingFamily

        return RoutingFamily
    if name in _INTERVENE:
        import importlib

        return getattr(importlib.import_module("workbench.interventions"), name)
    if name == "capture":  # the subpackage (the same object ``import workbench.capture`` binds); not callable
        import importlib

        return importlib.import_module("workbench.capture")
    raise AttributeError(name)
