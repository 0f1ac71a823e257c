"""Expert card (``/expert?run=R&layer=L&expert=E``): everything the store says about one expert.

Every heatmap of the other pages links here with the clicked cell in the query string.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, callback, dcc, html

from dashboards.components import guarded, query_string, to_int
from dashboards.components.pending import poll_input, poll_outputs, polled, poller, register_poll
from dashboards.components.pickers import layer_choice, run_choice
from dashboards.components.url import register_url_sync, url_components
from dashboards.data import current_db
from dashboards.views import expert as view

dash.register_page(__name__, path="/expert", name="Expert card", title="moe-workbench · expert", order=6)
PAGE = "expert"


def layout(run: str | None = None, layer: str | None = None, expert: str | None = None, **_: Any) -> html.Div:
    """Run, layer and expert pickers (from the query string; default layer 0 of the newest run, expert 0)."""
    db = current_db()
    runs = run_choice(db, run)
    chosen = to_int(expert)
    return html.Div(
        [
            *url_components(PAGE),
            *poller(PAGE),
            html.H2("Expert card"),
            runs.problem,
            html.Div(
                [
                    runs.dropdown("expert-run"),
                    layer_choice(db, runs.value, layer).dropdown("expert-layer"),
                    dcc.Input(
                        id="expert-expert",
                        type="number",
                        min=0,
                        step=1,
                        value=0 if chosen is None else chosen,
                        debounce=True,
                        className="wb-number",
                    ),
                ],
                className="wb-controls",
            ),
            html.Div(id="expert-card"),
        ]
    )


def layers_of(run: str | None) -> list[Any]:
    """The run's layers (the chosen layer is left as it is)."""
    return layer_choice(current_db(), run).options


def update(run: str | None, layer: int | None, expert: Any) -> tuple[Any, str]:
    """The card for the choices, and the view's query string."""
    layer_i, expert_i = to_int(layer), to_int(expert)
    card = guarded(view.expert_card, current_db(), run, layer_i, expert_i)
    return card, query_string(run=run, layer=layer_i, expert=expert_i)


callback(Output("expert-layer", "options"), Input("expert-run", "value"), prevent_initial_call=True)(
    layers_of
)
callback(
    Output("expert-card", "children"), Output("expert-query", "data"),
    *poll_outputs(PAGE),
    Input("expert-run", "value"), Input("expert-layer", "value"), Input("expert-expert", "value"),
    poll_input(PAGE),
)(polled(update))  # fmt: skip
register_url_sync(PAGE)
register_poll(PAGE)
