"""Health (``/health``): per-expert load and balance; collapse, degradation and underfitting
with the evidence behind each flag."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, html

from dashboards.components import expert_href, fill, guarded, query_string, slot
from dashboards.components.pending import poll_input, poll_outputs, polled, poller, register_poll
from dashboards.components.pickers import run_choice
from dashboards.components.url import register_url_sync, url_components
from dashboards.data import current_db
from dashboards.views import health as view

dash.register_page(__name__, path="/health", name="Health", title="moe-workbench · health", order=3)
PAGE = "health"


def layout(run: str | None = None, **_: Any) -> html.Div:
    """Run picker (from ``?run=``), load figure, balance table and the three HoME checks."""
    runs = run_choice(current_db(), run)
    return html.Div(
        [
            *url_components(PAGE),
            *poller(PAGE),
            html.H2("Expert health"),
            runs.problem,
            runs.dropdown("health-run"),
            html.H3("Load"),
            slot("health-load"),
            html.H3("Balance per layer"),
            html.Div(id="health-balance"),
            html.Div(id="health-flags"),
        ]
    )


def update(run: str | None) -> tuple[Any, ...]:
    """Load figure, balance table and flag sections for the run, and the view's query string."""
    db = current_db()
    flags = [view.flag_section(db, run, name) for name in view.FLAGS] if run else []
    return (*fill(view.load, db, run), guarded(view.balance, db, run), flags, query_string(run=run))


def open_card(click: Any, run: str | None) -> Any:
    """The expert card of a clicked load bar (one trace per layer, the expert on x)."""
    cell = guarded(view.load_click, current_db(), run, click)
    return expert_href(run, *cell) if isinstance(cell, tuple) else dash.no_update


callback(
    Output("health-load", "figure"), Output("health-load", "style"), Output("health-load-msg", "children"),
    Output("health-balance", "children"), Output("health-flags", "children"), Output("health-query", "data"),
    *poll_outputs(PAGE),
    Input("health-run", "value"), poll_input(PAGE),
)(polled(update))  # fmt: skip
callback(
    Output("health-nav", "href"), Input("health-load", "clickData"), State("health-run", "value"),
    prevent_initial_call=True,
)(open_card)  # fmt: skip
register_url_sync(PAGE)
register_poll(PAGE)
