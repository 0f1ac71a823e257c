"""Specialisation page: per label, a heatmap of the log-odds against the other labels with a star
on exactly the specialised cells (the workbench's one definition, as in the report and ``make
demo``), vocabulary specialisation, and how well the specialisation scorers agree; each over the
tokens of one segment (prompt, response) or all of them."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from dash import html

from dashboards import data
from dashboards.components import message, of_segment, table
from workbench.catalog import figure_for

__all__ = ["agreement", "lift_heatmap", "vocab"]


def lift_heatmap(db: str, run: str, label: str | None, segment: str | None = None) -> go.Figure:
    """``figure_for("specialisation")`` for ``label`` (default: the first label) over ``segment``'s tokens
    (None or ``all``: every token); a click opens the card.

    Colour: log-odds of the slot share against the other labels; ``*``: the ``specialised`` column.
    """
    df = data.analysis(db, run, "specialisation", **data.scoped(segment))
    if df.height == 0:
        raise ValueError(f"run {run!r} has no labelled tokens: specialisation needs prompts with labels")
    return of_segment(figure_for("specialisation", df, label=label or None), segment)


def vocab(db: str, run: str, segment: str | None = None) -> go.Figure:
    """``figure_for("vocab")``: per layer, how specialised the experts' top-1 vocabularies are (over
    ``segment``'s tokens)."""
    return of_segment(figure_for("vocab", data.analysis(db, run, "vocab", **data.scoped(segment))), segment)


def agreement(db: str, run: str, segment: str | None = None) -> Any:
    """Scorer agreement (lift, ESFT, TCESS rank correlations per label, over ``segment``'s tokens) as a
    figure and a table."""
    df = data.analysis(db, run, "agreement", **data.scoped(segment))
    if df.height == 0:
        return message("No scorer pairs to compare (the run needs labelled prompts).")
    from dashboards.components import figure

    return html.Div([figure(of_segment(figure_for("agreement", df), segment)), table(df)])
