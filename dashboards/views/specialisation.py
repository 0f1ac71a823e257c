"""Specialisation page: per label, a heatmap of the log-odds against the other labels with a star
on exactly the specialised cells (the workbench's one definition, as in the report and ``make
demo``), vocabulary specialisation, and how well the specialisation scorers agree."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from dash import html

from dashboards import data
from dashboards.components import message, table
from workbench.catalog import figure_for

__all__ = ["agreement", "lift_heatmap", "vocab"]


def lift_heatmap(db: str, run: str, label: str | None) -> go.Figure:
    """``figure_for("specialisation")`` for ``label`` (default: the first label); a click opens the card.

    Colour: log-odds of the slot share against the other labels; ``*``: the ``specialised`` column.
    """
    df = data.analysis(db, run, "specialisation")
    if df.height == 0:
        raise ValueError(f"run {run!r} has no labelled tokens: specialisation needs prompts with labels")
    return figure_for("specialisation", df, label=label or None)


def vocab(db: str, run: str) -> go.Figure:
    """``figure_for("vocab")``: per layer, how specialised the experts' top-1 vocabularies are."""
    return figure_for("vocab", data.analysis(db, run, "vocab"))


def agreement(db: str, run: str) -> Any:
    """Scorer agreement (lift, ESFT, TCESS rank correlations per label) as a figure and a table."""
    df = data.analysis(db, run, "agreement")
    if df.height == 0:
        return message("No scorer pairs to compare (the run needs labelled prompts).")
    from dashboards.components import figure

    return html.Div([figure(figure_for("agreement", df)), table(df)])
