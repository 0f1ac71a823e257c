"""moe-workbench: capture, analyse and intervene on the routing of Mixture-of-Experts models.

import workbench as wb
run = wb.capture("tiny:qwen2_moe", "probes/example.jsonl", "runs.duckdb")
store = wb.open("runs.duckdb")
store.runs()                       # polars DataFrame
store.routing(run, layers=[1], labels=["code"])
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.store import Store

__all__ = ["RoutingFamily", "capture", "load_model", "open", "register_adapter", "resume"]


def open(path: str | Path, read_only: bool = True) -> Store:
    """Open a run store (read-only by default; pass ``read_only=False`` to write)."""
    from workbench.store import Store

    return Store(path, read_only=read_only)


def capture(model: Any, probes: Any, db: str | Path, **kwargs: Any) -> str:
    """Capture routing of ``model`` on ``probes`` into ``db``; see :func:`workbench.capture.engine.capture`."""
    from workbench.capture.engine import capture as _capture

    return _capture(model, probes, db, **kwargs)


def resume(db: str | Path, run_id: str, **kwargs: Any) -> str:
    """Complete an interrupted run; see :func:`workbench.capture.engine.resume`."""
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
    raise AttributeError(name)
