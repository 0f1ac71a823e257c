"""Runs page (``/``): the store's runs; pick one to see its layers and labels and open its views."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, callback, dcc, html

from dashboards.components import choices, guarded, message, query_string
from dashboards.components.url import register_url_sync, url_components
from dashboards.data import current_db, current_model
from dashboards.views import runs as view
from dashboards.views.common import pick, run_options

dash.register_page(__name__, path="/", name="Runs", title="moe-workbench · runs", order=0)
PAGE = "runs"


def layout(run: str | None = None, **_: Any) -> html.Div:
    """Runs table, a run picker (initialised from ``?run=``; default the newest run) and its details."""
    db = current_db()
    options, problem = choices(run_options, db)
    model = current_model()
    return html.Div(
        [
            *url_components(PAGE),
            html.H2("Runs"),
            html.P(f"Store: {db}" + (f" · model attached: {model}" if model else ""), className="wb-muted"),
            problem or guarded(view.runs_table, db),
            html.Label("Run", htmlFor="runs-run"),
            dcc.Dropdown(id="runs-run", options=options, value=pick(run, options), clearable=False),
            html.Div(id="runs-detail"),
        ]
    )


def update(run: str | None) -> tuple[Any, str]:
    """The chosen run's details, and the query string that describes this view."""
    if not run:
        return message("The store holds no runs yet."), ""
    return guarded(view.run_detail, current_db(), run), query_string(run=run)


callback(Output("runs-detail", "children"), Output("runs-query", "data"), Input("runs-run", "value"))(update)
register_url_sync(PAGE)
