"""What one catalog entry declares about an analysis, and the errors of name lookups.

One :class:`AnalysisSpec` per analysis carries everything the rest of the workbench needs to know
about it: the function, its docs/methods.md chapter, a one-line summary, what the run must hold,
the figure builder, the finding sentences, how the report orders its table and whether (and with
which options) the dashboard computes it ahead of the first visit. The CLI, the notebook API, the
report, the dashboard, the tests and the benchmarks read these fields and never keep a list of
names of their own (see :mod:`workbench.catalog.entries`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import polars as pl

    from workbench.wording import Context, Findings

__all__ = [
    "KNOWN_NEEDS",
    "AnalysisSpec",
    "Deferred",
    "FigureBuilder",
    "FindingsBuilder",
    "Prewarm",
    "RunFacts",
    "UnknownAnalysisError",
    "UnknownFigureError",
    "contrast_pair",
    "default_options",
    "every_row",
]

#: ``fig = builder(table, **options)``: draws what the analysis returned (``workbench.plots``).
FigureBuilder = Callable[..., "go.Figure"]
#: ``sentences = findings(table, context)``: plain-English findings, strongest first.
FindingsBuilder = Callable[["pl.DataFrame", "Context"], "Findings"]

#: What a run may have to hold: ``routing`` always; ``logits`` = stored router logits,
#: ``weights`` = the gate weights the model applied (every capture stores them; a run imported from a
#: serving engine holds expert ids only), ``expert_stats`` = captured with ``--expert-stats``,
#: ``compare`` = a second run to compare against, ``model`` = the model the run was captured from
#: (the analysis runs it), ``contrast`` = paired prompts with exactly two labels (target and control).
KNOWN_NEEDS: frozenset[str] = frozenset(
    {"routing", "logits", "weights", "expert_stats", "compare", "model", "contrast"}
)


@dataclass(frozen=True)
class RunFacts:
    """What the dashboard knows about a run when it queues analyses ahead of the first visit."""

    #: The run's (target, control) contrast labels when its prompts form a paired contrast set.
    contrast: tuple[str, str] | None = None


#: The options the dashboard's page asks for, given the run (``None``: nothing to compute here).
Prewarm = Callable[[RunFacts], "dict[str, Any] | None"]


def default_options(facts: RunFacts) -> dict[str, Any]:
    """Prewarm with the analysis' default options (what a page asks for without choices)."""
    return {}


def every_row(facts: RunFacts) -> dict[str, Any]:
    """Prewarm with ``top=None``: the whole table, which the page truncates itself (the pathways
    Sankey shows the N most frequent transitions per layer pair and says of how many)."""
    return {"top": None}


def contrast_pair(facts: RunFacts) -> dict[str, Any] | None:
    """Prewarm with the run's contrast set as target/control and the rate difference (the resonance page)."""
    if facts.contrast is None:
        return None
    return {"target": facts.contrast[0], "control": facts.contrast[1], "method": "rd"}


class Deferred:
    """A function named ``"package.module:name"``, imported on its first call or signature lookup.

    Why: an analysis whose module pulls in a heavy stack (expert similarity imports the
    interventions package, and with it torch) should not make ``analyse --list``, the report of a
    run without ``--model`` or a dashboard worker load that stack. ``inspect.signature`` sees the
    real function's signature, so ``analysis_options`` works unchanged.
    """

    def __init__(self, target: str) -> None:
        module, sep, name = target.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"deferred function {target!r}: write it as 'package.module:name'")
        self.target = target
        self._fn: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        """The function itself (imported now if it was not yet)."""
        if self._fn is None:
            module, _, name = self.target.partition(":")
            self._fn = getattr(importlib.import_module(module), name)
        return self._fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.resolve())

    def __repr__(self) -> str:
        return f"Deferred({self.target!r})"


@dataclass(frozen=True)
class AnalysisSpec:
    """One catalogued analysis: ``fn(store, run_id, **kwargs)`` (or ``fn(store, run_a, run_b, ...)``).

    ``figure`` draws its table; ``findings`` states it in sentences (``None``: the report gives
    the table's size only); ``table_order`` is the (column, descending) the report sorts its first
    rows by; ``figure_per_label`` draws one figure per label in the report; ``prewarm`` gives the
    options the dashboard computes for a run at server start (``None``: not prewarmed).
    """

    name: str
    fn: Callable[..., pl.DataFrame] | Deferred
    section: str
    summary: str
    figure: FigureBuilder
    findings: FindingsBuilder | None = None
    needs: tuple[str, ...] = ("routing",)
    table_order: tuple[str, bool] | None = None
    figure_per_label: bool = False
    prewarm: Prewarm | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower() or " " in self.name:
            raise ValueError(f"analysis name {self.name!r}: use lower-case words joined by '-'")
        if not self.section.startswith("§"):
            raise ValueError(
                f"analysis {self.name!r}: section {self.section!r} must cite docs/methods.md (§N)"
            )
        if "routing" not in self.needs:
            raise ValueError(f"analysis {self.name!r}: needs must include 'routing'")

    @property
    def is_compare(self) -> bool:
        return "compare" in self.needs

    @property
    def needs_model(self) -> bool:
        return "model" in self.needs


class UnknownAnalysisError(KeyError):
    """An analysis name that is not catalogued; the message lists every catalogued name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownFigureError(KeyError):
    """A figure name that is not catalogued; the message lists every catalogued name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
