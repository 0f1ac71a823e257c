"""Everything looked up by analysis name, derived from :data:`~workbench.catalog.entries.ENTRIES`.

``ANALYSES`` (name → spec, catalog order), :func:`run_analysis` (dispatch by name, returning the
analysis' tidy polars DataFrame), the options ``moe-workbench analyse --set`` may change,
:func:`figure_for` (the figure of a table), :func:`findings_for` (its sentences) and
:data:`PAGE_ANALYSES` (what the dashboard prewarms). None of these holds a name of its own: a new
catalog entry shows up in all of them.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from workbench.catalog.entries import ENTRIES
from workbench.catalog.spec import (
    AnalysisSpec,
    FigureBuilder,
    FindingsBuilder,
    RunFacts,
    UnknownAnalysisError,
    UnknownFigureError,
)
from workbench.store import queries
from workbench.store.segments import check_segment, parse_segment, segment_scope

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import polars as pl

    from workbench.store import Store
    from workbench.wording import Context, Findings

__all__ = [
    "ANALYSES",
    "FIGURES",
    "FINDINGS",
    "PAGE_ANALYSES",
    "analysis_options",
    "figure_for",
    "figure_options",
    "findings_for",
    "generic_findings",
    "get_analysis",
    "list_options",
    "prewarm_options",
    "run_analysis",
]


def _index(entries: tuple[AnalysisSpec, ...]) -> dict[str, AnalysisSpec]:
    found: dict[str, AnalysisSpec] = {}
    for spec in entries:
        if spec.name in found:
            raise ValueError(f"analysis {spec.name!r} is catalogued twice")
        found[spec.name] = spec
    return found


ANALYSES: dict[str, AnalysisSpec] = _index(ENTRIES)
"""Every catalogued analysis by name, in catalog order (``analyse --list`` and the report)."""
FIGURES: dict[str, FigureBuilder] = {name: spec.figure for name, spec in ANALYSES.items()}
"""The figure builder of every analysis, by name."""
FINDINGS: dict[str, FindingsBuilder] = {n: s.findings for n, s in ANALYSES.items() if s.findings is not None}
"""The finding sentences of every analysis that has its own (the others get :func:`generic_findings`)."""
PAGE_ANALYSES: tuple[str, ...] = tuple(name for name, spec in ANALYSES.items() if spec.prewarm is not None)
"""The analyses the dashboard computes for a run when it starts (their pages show them)."""


def get_analysis(name: str) -> AnalysisSpec:
    """The spec catalogued as ``name``; raises :class:`UnknownAnalysisError` listing every name."""
    try:
        return ANALYSES[name]
    except KeyError:
        raise UnknownAnalysisError(
            f"unknown analysis {name!r}; available: {', '.join(sorted(ANALYSES))}"
        ) from None


# -- running ----------------------------------------------------------------------------------


def _option_params(name: str) -> list[inspect.Parameter]:
    spec = get_analysis(name)
    params = list(inspect.signature(spec.fn).parameters.values())[3 if spec.is_compare else 2 :]
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in params if p.kind in kinds and p.name != "model"]


def analysis_options(name: str) -> dict[str, Any]:
    """The keyword options of analysis ``name`` with their defaults (``n_perm``, ``seed``, ``layers`` ...).

    These are what ``moe-workbench analyse NAME --set KEY=VALUE`` may change: every parameter
    after the store and the run id(s), except ``model`` (given by ``--model``).
    """
    return {p.name: None if p.default is inspect.Parameter.empty else p.default for p in _option_params(name)}


def list_options(name: str) -> set[str]:
    """The options of :func:`analysis_options` that take several values (``layers``, ``p_levels`` ...)."""
    many = ("Iterable[", "Sequence[", "list[", "tuple[")
    return {p.name for p in _option_params(name) if any(m in str(p.annotation) for m in many)}


def run_analysis(
    name: str,
    store: Store,
    run_id: str,
    compare: str | None = None,
    model: Any = None,
    segment: str | None = None,
    **kwargs: Any,
) -> pl.DataFrame:
    """Run analysis ``name`` on ``run_id`` and return its tidy table.

    ``compare`` is the second run for comparison analyses (``needs`` has ``"compare"``).
    ``model`` is the loaded model (``workbench.models.loading.load_model``) for analyses whose
    ``needs`` has ``"model"``; it is passed on as ``model=`` and ignored by the others, so a
    caller holding a model may pass it to every analysis. ``segment`` ('prompt', 'response' or
    'all'/None) restricts the analysis to those tokens (:mod:`workbench.store.segments`); a run
    without such tokens is refused. Other keyword arguments go to the analysis function.
    """
    chosen = parse_segment(segment)
    if chosen is not None:
        for rid in (run_id, compare):
            if rid is not None:
                check_segment(store, rid, chosen)
        with segment_scope(store, chosen) as view:
            return run_analysis(name, view, run_id, compare=compare, model=model, **kwargs)
    spec = get_analysis(name)
    if "weights" in spec.needs and not _has_weights(store, run_id):
        raise ValueError(
            f"analysis {name!r} needs the gate weights the model applied, and run {run_id!r} holds expert ids "
            "only (imported from a serving engine); capture the model with moe-workbench capture to get them"
        )
    if kwargs.get("layers") is not None:
        _check_layers(store, run_id, kwargs["layers"])
    if spec.needs_model:
        if model is None:
            raise ValueError(
                f"analysis {name!r} needs the model: give --model M on the CLI (model=... in Python), "
                "the model the run was captured from"
            )
        kwargs["model"] = model
    if spec.is_compare:
        if compare is None:
            raise ValueError(
                f"analysis {name!r} compares two runs: give the second run (--compare RUN2 on the CLI)"
            )
        return spec.fn(store, run_id, compare, **kwargs)
    if compare is not None:
        raise ValueError(
            f"analysis {name!r} reads one run; --compare is only for: {', '.join(_compare_names())}"
        )
    return spec.fn(store, run_id, **kwargs)


def _has_weights(store: Store, run_id: str) -> bool:
    """Whether ``run_id`` has a routing row with gate weights (an unknown run raises the store's error)."""
    store.run(run_id)
    return queries.has_gate_weights(store, run_id)


def _check_layers(store: Store, run_id: str, layers: Any) -> None:
    """Refuse a ``layers`` option that names no layer, or a layer the run does not have.

    Analyses filter by it, so such a choice would give an empty table instead of saying why.
    """
    have = [int(x) for x in store.layers(run_id)["layer"].to_list()]
    asked = list(layers) if isinstance(layers, (list, tuple, set, frozenset)) else [layers]
    if not asked:
        raise ValueError(f"layers is empty; name some of run {run_id!r}'s MoE layers {have}, or leave it out")
    missing = [x for x in asked if isinstance(x, bool) or not isinstance(x, int) or x not in have]
    if missing:
        shown = ", ".join(repr(x) if not isinstance(x, int) else str(x) for x in missing[:10])
        raise ValueError(f"run {run_id!r} has no MoE layer {shown}; its MoE layers are {have}")


def _compare_names() -> list[str]:
    return sorted(n for n, s in ANALYSES.items() if s.is_compare)


# -- figures, findings, prewarm ---------------------------------------------------------------


def _builder(name: str) -> FigureBuilder:
    try:
        return FIGURES[name]
    except KeyError:
        raise UnknownFigureError(
            f"no figure for analysis {name!r}; available: {', '.join(sorted(FIGURES))}"
        ) from None


def figure_options(name: str) -> dict[str, Any]:
    """The keyword options the figure for ``name`` accepts, with their defaults (e.g. ``{"label": None}``)."""
    params = list(inspect.signature(_builder(name)).parameters.values())[1:]
    return {p.name: p.default for p in params}


def figure_for(name: str, df: pl.DataFrame, **options: Any) -> go.Figure:
    """The figure for analysis ``name`` drawn from its table ``df``.

    ``options`` go to the builder as keywords (``label=``, ``layer=``, ``p=`` ...; see
    :func:`figure_options`). An unknown name raises :class:`UnknownFigureError` listing the
    catalogued names; an option the builder does not take raises ``TypeError`` listing those
    it does. Missing columns or an absent label/layer raise ``ValueError`` from the builder.
    """
    builder = _builder(name)
    accepted = figure_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"figure {name!r} does not take option(s) {unknown}; it takes: {sorted(accepted) or 'none'}"
        )
    return builder(df, **options)


def generic_findings(df: pl.DataFrame, ctx: Context) -> Findings:
    """Fallback for an analysis without finding sentences of its own: its size (see the table)."""
    return [f"The analysis returned {df.height:,} rows × {df.width} columns (first rows below)."]


def findings_for(name: str, df: pl.DataFrame, ctx: Context) -> Findings:
    """The sentences for analysis ``name`` (:func:`generic_findings` when it has none of its own)."""
    return FINDINGS.get(name, generic_findings)(df, ctx)


def prewarm_options(name: str, facts: RunFacts) -> dict[str, Any] | None:
    """The options the dashboard computes analysis ``name`` with for a run (None: nothing for this run).

    An analysis without ``prewarm`` in its entry is not in :data:`PAGE_ANALYSES`; asked for by
    name, it is computed with its default options.
    """
    spec = get_analysis(name)
    return {} if spec.prewarm is None else spec.prewarm(facts)
