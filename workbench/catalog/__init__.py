"""The analysis catalog: one declaration per analysis, and every lookup by name derived from it.

:mod:`workbench.catalog.entries` holds one :class:`AnalysisSpec` per analysis (function,
docs/methods.md chapter, summary, needs, figure, finding sentences, report table order, dashboard
prewarm). The CLI (``moe-workbench analyse``), the notebook API (:mod:`workbench.session`), the
report (:mod:`workbench.reports`), the dashboard (``dashboards.data``), the tests and the benchmark
all read it through the names exported here.

Floors: the catalog sees the analyses (records only), the interventions (expert similarity runs
the model), the figure builders and the wording, and sits below the report, the notebook API, the
CLI and the dashboard, which import it. Its finding sentences live in ``findings_*`` modules here.
"""

from workbench.catalog.lookup import (
    ANALYSES,
    FIGURES,
    FINDINGS,
    PAGE_ANALYSES,
    analysis_options,
    figure_for,
    figure_options,
    findings_for,
    generic_findings,
    get_analysis,
    list_options,
    prewarm_options,
    run_analysis,
)
from workbench.catalog.spec import (
    KNOWN_NEEDS,
    AnalysisSpec,
    Deferred,
    RunFacts,
    UnknownAnalysisError,
    UnknownFigureError,
    contrast_pair,
    default_options,
    every_row,
)

__all__ = [
    "ANALYSES",
    "FIGURES",
    "FINDINGS",
    "KNOWN_NEEDS",
    "PAGE_ANALYSES",
    "AnalysisSpec",
    "Deferred",
    "RunFacts",
    "UnknownAnalysisError",
    "UnknownFigureError",
    "analysis_options",
    "contrast_pair",
    "default_options",
    "every_row",
    "figure_for",
    "figure_options",
    "findings_for",
    "generic_findings",
    "get_analysis",
    "list_options",
    "prewarm_options",
    "run_analysis",
]
