"""Self-contained HTML probing reports: every analysis of a run as sentences, figures and tables.

``write_report(db, run_id, "report.html")`` (CLI: ``moe-workbench report --db DB --run R --out
report.html``) runs each catalogued analysis (:mod:`workbench.catalog`), states its top findings
as sentences with numbers and confidence intervals, draws its figure with plotly (embedded inline:
the file opens offline) and says, for an analysis the run cannot support, what is missing and how
to capture it. The sentences themselves belong to each analysis' catalog entry.
"""

from workbench.reports.build import build_report, compute_sections, render, write_report

__all__ = ["build_report", "compute_sections", "render", "write_report"]
