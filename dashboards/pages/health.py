"""Health (``/health``): per-expert load and balance; collapse, degradation and underfitting
with the evidence behind each flag; all over the token segment picked (prompt, response or all, kept
in the address as ``?segment=``)."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, html

from dashboards.components import expert_href, fill, guarded, query_string, slot
from dashboards.components.pending import poll_input, poll_outputs, polled, poller, register_poll
from dashboards.components.pickers import run_choice, segment_choice, segments_of
from dashboards.components.url import register_url_sync, url_components
from dashboards.data import current_db, scoped
from dashboards.views import health as view

dash.register_page(__name__, path="/health", name="Health", title="moe-workbench · health", order=3)
PAGE = "health"


def layout(run: str | None = None, segment: str | None = None, **_: Any) -> html.Div:
    """Run and token segment pickers (from ``?run=&segment=``), load figure, balance table and the three
    HoME checks."""
    db = current_db()
    runs = run_choice(db, run)
    return html.Div(
        [
            *url_components(PAGE),
            *poller(PAGE),
            html.H2("Expert health"),
            runs.problem,
            html.Div(
                [
                    runs.dropdown("health-run"),
                    segment_choice(db, runs.value, segment).dropdown(
                        "health-segment", class_name="wb-pick-small"
                    ),
                ],
                className="wb-controls",
            ),
            html.H3("Load"),
            slot("health-load"),
            html.H3("Balance per layer"),
            html.Div(id="health-balance"),
            html.Div(id="health-flags"),
        ]
    )


def update(run: str | None, segment: str | None = None) -> tuple[Any, ...]:
    """Load figure, balance table and flag sections for the run (over the segment's tokens), and the
    view's query string."""
    db = current_db()
    flags = [view.flag_section(db, run, name, segment) for name in view.FLAGS] if run else []
    return (
        *fill(view.load, db, run, segment),
        guarded(view.balance, db, run, segment),
        flags,
        query_string(run=run, **scoped(segment)),
    )


def open_card(click: Any, run: str | None, segment: str | None = None) -> Any:
    """The expert card of a clicked load bar (one trace per layer, the expert on x)."""
    cell = guarded(view.load_click, current_db(), run, click, segment)
    return expert_href(run, *cell) if isinstance(cell, tuple) else dash.no_update


callback(
    Output("health-load", "figure"), Output("health-load", "style"), Output("health-load-msg", "children"),
    Output("health-balance", "children"), Output("health-flags", "children"), Output("health-query", "data"),
    *poll_outputs(PAGE),
    Input("health-run", "value"), Input("health-segment", "value"), poll_input(PAGE),
)(polled(update))  # fmt: skip
callback(
    Output("health-segment", "options"), Output("health-segment", "value"),
    Input("health-run", "value"), State("health-segment", "value"), prevent_initial_call=True,
)(segments_of)  # fmt: skip
callback(
    Output("health-nav", "href"), Input("health-load", "clickData"), State("health-run", "value"),
    State("health-segment", "value"), prevent_initial_call=True,
)(open_card)  # fmt: skip
register_url_sync(PAGE)
register_poll(PAGE)
