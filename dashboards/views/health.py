"""Health page: per-expert load, and the collapse, degradation and underfitting flags with the
numbers behind each flag (docs/methods.md §1 and §3); each over the tokens of one segment (prompt,
response) or all of them."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import polars as pl
from dash import html

from dashboards import data
from dashboards.components import figure, guarded, message, of_segment, table, to_int
from dashboards.components.url import clicked_expert
from workbench.catalog import figure_for

__all__ = ["FLAGS", "TABLE_ROWS", "balance", "flag_section", "load", "load_click"]

TABLE_ROWS = 500
"""A flag's evidence table lists at most this many rows, the most flagged first: at 58 layers × 256
experts a table of all 14,848 rows is 2.6 MB of JSON on every render of the page."""
FLAGS: dict[str, tuple[str, str, str]] = {
    # analysis: (flag column, or the column to rank by when there is no flag; what it means; evidence)
    "collapse": (
        "mean_zero_frac",
        "Collapse: experts whose hidden units are mostly zero or whose output norm is tiny "
        "(no yes/no flag: ranked by mean zero fraction).",
        "mean zero fraction, mean output norm, their spread per layer",
    ),
    "degradation": (
        "degraded",
        "Degradation: experts that one label nearly monopolises (a general expert turned narrow).",
        "load, concentration, the dominant label and its share",
    ),
    "underfitting": (
        "underfit",
        "Underfitting: labels whose tokens lean on shared/generalist experts more than on specialists.",
        "shared-expert norm share, specialist vs generalist gate mass with CI",
    ),
}


def load(db: str, run: str, segment: str | None = None) -> go.Figure:
    """``figure_for("load")``: each expert's selection share with its bootstrap CI over ``segment``'s
    tokens (None or ``all``: every token); dead experts marked."""
    return of_segment(figure_for("load", data.analysis(db, run, "load", **data.scoped(segment))), segment)


def load_click(
    db: str, run: str, click: dict[str, Any] | None, segment: str | None = None
) -> tuple[int, int] | None:
    """(layer, expert) of a click on the load figure: a bar (its trace is the layer, in order; x the
    expert) or, with many experts, a heatmap cell (y the layer, x the expert; only cells carry ``z``)."""
    points = click.get("points") if isinstance(click, dict) else None
    if not isinstance(points, list) or not points or not isinstance(points[0], dict):
        return None  # no click, or not what a browser sends
    point = points[0]
    if "z" in point:
        return clicked_expert(click)
    shown = data.analysis(db, run, "load", **data.scoped(segment))  # the table the figure was drawn from
    layers = sorted(int(x) for x in shown["layer"].unique().to_list())
    curve, expert = to_int(point.get("curveNumber")), to_int(point.get("x"))
    if curve is None or expert is None or not 0 <= curve < len(layers):
        return None
    return layers[curve], expert


def balance(db: str, run: str, segment: str | None = None) -> Any:
    """Per-layer load balance (CV, normalised entropy, dead experts) over ``segment``'s tokens, as a table."""
    return table(data.analysis(db, run, "balance", **data.scoped(segment)))


def _flag_table(db: str, run: str, name: str, segment: str | None = None) -> Any:
    column, _, _ = FLAGS[name]
    df = data.analysis(db, run, name, **data.scoped(segment))
    if df.height == 0:
        return message(f"{name}: the analysis returned no rows for this run.")
    if df.schema.get(column) == pl.Boolean:
        summary = f"{int(df[column].fill_null(False).sum())} of {df.height} rows flagged ({column})."
        order = f"{column} rows first"
    else:
        summary = f"{df.height} rows, highest {column} first."
        order = f"highest {column} first"
    ordered = df.sort(column, descending=True, nulls_last=True) if column in df.columns else df
    parts: list[Any] = [
        html.P(summary, className="wb-summary"),
        figure(of_segment(figure_for(name, df), segment)),
    ]
    if ordered.height > TABLE_ROWS:  # a browser table of every row would carry them all to the page
        parts.append(
            html.P(
                f"The table lists the first {TABLE_ROWS:,} of {ordered.height:,} rows ({order}); "
                "`moe-workbench analyse` gives them all.",
                className="wb-muted",
                id=f"health-{name}-rows",
            )
        )
    parts.append(table(ordered.head(TABLE_ROWS), page_size=10))
    return html.Div(parts)


def flag_section(db: str, run: str, name: str, segment: str | None = None) -> html.Div:
    """One health check over ``segment``'s tokens: what its flag means, how many rows are flagged, the
    figure and the evidence table."""
    _, meaning, evidence = FLAGS[name]
    return html.Div(
        [
            html.H3(name.capitalize()),
            html.P(f"{meaning} Evidence: {evidence}."),
            guarded(_flag_table, db, run, name, segment),
        ],
        className="wb-section",
        id=f"health-{name}",
    )
