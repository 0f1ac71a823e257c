"""Resonance page: the layer × expert map of target vs control labels, and the tokens that make
a clicked expert resonate."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from dash import dcc, html

from dashboards import data
from dashboards.components import expert_href, message, table
from workbench.catalog import figure_for

__all__ = ["METHODS", "default_pair", "driving_tokens", "resonance_figure"]

METHODS = ("rd", "ftri")


def default_pair(db: str, run: str) -> tuple[str | None, str | None]:
    """(target, control): the run's contrast set when it has one, else its first two labels."""
    found = data.contrast(db, run)
    if found is not None:
        return found
    labels = data.labels(db, run)
    return (labels[0] if labels else None, labels[1] if len(labels) > 1 else None)


def _segment(segment: str | None) -> dict[str, str]:
    """``segment=`` for the data layer: nothing for all tokens, so the cache key stays the plain one."""
    return {"segment": segment} if segment not in (None, "all") else {}


def resonance_figure(
    db: str, run: str, target: str | None, control: str | None, method: str, segment: str | None = None
) -> go.Figure:
    """``figure_for("resonance")`` of the resonance map of ``target`` vs ``control`` (``method`` rd or ftri),
    over ``segment``'s tokens (all, prompt, or the generated responses)."""
    if not target or not control:
        raise ValueError("pick a target and a control label (the run needs at least two labels)")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    df = data.analysis(
        db, run, "resonance", target=target, control=control, method=method, **_segment(segment)
    )
    return figure_for("resonance", df)


def driving_tokens(
    db: str,
    run: str,
    target: str | None,
    control: str | None,
    cell: tuple[int, int] | None,
    segment: str | None = None,
) -> Any:
    """The tokens driving the clicked expert (``resonance_tokens``), with a link to its card."""
    if cell is None:
        return message("Click a cell of the map to list the tokens that drive that expert.")
    if not target or not control:
        raise ValueError("pick a target and a control label")
    layer, expert = cell
    df = data.driving_tokens(db, run, layer, expert, target, control, segment)
    return html.Div(
        [
            html.H4(f"Layer {layer}, expert {expert}: tokens that drive it on {target!r} vs {control!r}"),
            dcc.Link("open the expert card", href=expert_href(run, layer, expert), id="resonance-card-link"),
            html.P(
                "Each token as it reads (· a space, ⏎ a newline, → a tab) with its id, most selected on "
                "the target beyond the control rate first.",
                className="wb-muted",
            ),
            table(
                df.drop("token"),
                table_id="resonance-tokens",
                empty="no token occurs often enough in the target prompts",
            ),
        ]
    )
