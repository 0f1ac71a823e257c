"""Runs page (``/``): the store's runs; pick one to see its layers and labels and open its views,
and a second one to see the routing drift between them."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, callback, dcc, html

from dashboards.components import choices, guarded, message, query_string
from dashboards.components.pending import poll_input, poll_outputs, polled, poller, register_poll
from dashboards.components.url import register_url_sync, url_components
from dashboards.data import attached, current_db
from dashboards.views import runs as view
from dashboards.views.common import pick, run_options

dash.register_page(__name__, path="/", name="Runs", title="moe-workbench · runs", order=0)
PAGE = "runs"


def layout(run: str | None = None, compare: str | None = None, **_: Any) -> html.Div:
    """Runs table, a run picker (``?run=``; default the newest run), its details and a comparison run (``?compare=``)."""
    db = current_db()
    options, problem = choices(run_options, db)
    model = attached().name
    return html.Div(
        [
            *url_components(PAGE),
            *poller(PAGE),
            html.H2("Runs"),
            html.P(f"Store: {db}" + (f" · model attached: {model}" if model else ""), className="wb-muted"),
            problem or guarded(view.runs_table, db),
            html.Label("Run", htmlFor="runs-run"),
            dcc.Dropdown(id="runs-run", options=options, value=pick(run, options), clearable=False),
            html.Div(id="runs-detail"),
            html.H3("Compare with another run", className="wb-section"),
            dcc.Dropdown(
                id="runs-compare",
                options=options,
                value=compare if compare in [o["value"] for o in options] else None,
                placeholder="second run (same prompts)",
                className="wb-pick-wide",
            ),
            html.Div(id="runs-drift"),
        ]
    )


def update(run: str | None, compare: str | None) -> tuple[Any, Any, str]:
    """The chosen run's details, its drift against ``compare``, and the view's query string."""
    if not run:
        return message("The store holds no runs yet."), None, ""
    db = current_db()
    return (
        guarded(view.run_detail, db, run),
        guarded(view.run_drift, db, run, compare),
        query_string(run=run, compare=compare),
    )


callback(
    Output("runs-detail", "children"), Output("runs-drift", "children"), Output("runs-query", "data"),
    *poll_outputs(PAGE),
    Input("runs-run", "value"), Input("runs-compare", "value"), poll_input(PAGE),
)(polled(update))  # fmt: skip
register_url_sync(PAGE)
register_poll(PAGE)
