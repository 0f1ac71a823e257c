"""Co-activation (``/coactivation``): the P(b | a) matrix of one layer (click a row for expert a's
card) and the cross-layer top-1 pathways as a Sankey diagram."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html

from dashboards.components import choices, expert_href, fill, guarded, query_string, slot, to_int
from dashboards.components.url import register_url_sync, url_components
from dashboards.data import current_db
from dashboards.views import coactivation as view
from dashboards.views.common import layer_options, pick, run_options

dash.register_page(
    __name__, path="/coactivation", name="Co-activation", title="moe-workbench · co-activation", order=4
)
PAGE = "coactivation"


def layout(run: str | None = None, layer: str | None = None, **_: Any) -> html.Div:
    """Run and layer pickers (from ``?run=&layer=``; layer default: the most structured one)."""
    db = current_db()
    runs, problem = choices(run_options, db)
    run = pick(run, runs)
    layers, _ = choices(layer_options, db, run)
    chosen = to_int(layer)
    if chosen not in [o["value"] for o in layers] and run:
        found = guarded(view.default_layer, db, run)
        chosen = found if isinstance(found, int) else None
    return html.Div(
        [
            *url_components(PAGE),
            html.H2("Co-activation"),
            problem,
            html.Div(
                [
                    dcc.Dropdown(
                        id="coact-run", options=runs, value=run, clearable=False, className="wb-pick"
                    ),
                    dcc.Dropdown(id="coact-layer", options=layers, value=chosen, className="wb-pick"),
                ],
                className="wb-controls",
            ),
            slot("coact-matrix"),
            html.H3("Pathways across layers"),
            slot("coact-sankey"),
        ]
    )


def layers_of(run: str | None, layer: int | None) -> tuple[list[Any], Any]:
    """The run's layers, keeping the chosen one when the run has it."""
    layers, _ = choices(layer_options, current_db(), run)
    return layers, pick(layer, layers)


def update(run: str | None, layer: int | None) -> tuple[Any, ...]:
    """Matrix and Sankey for the choices, and the view's query string."""
    db = current_db()
    return (
        *fill(view.matrix, db, run, to_int(layer)),
        *fill(view.pathways, db, run),
        query_string(run=run, layer=layer),
    )


def open_card(click: Any, run: str | None, layer: int | None) -> Any:
    """The card of expert a (the clicked row, y) at the shown layer."""
    if not click or not click.get("points") or layer is None:
        return dash.no_update
    return expert_href(run, layer, click["points"][0].get("y"))


callback(
    Output("coact-layer", "options"), Output("coact-layer", "value"),
    Input("coact-run", "value"), State("coact-layer", "value"), prevent_initial_call=True,
)(layers_of)  # fmt: skip
callback(
    Output("coact-matrix", "figure"), Output("coact-matrix", "style"), Output("coact-matrix-msg", "children"),
    Output("coact-sankey", "figure"), Output("coact-sankey", "style"), Output("coact-sankey-msg", "children"),
    Output("coactivation-query", "data"),
    Input("coact-run", "value"), Input("coact-layer", "value"),
)(update)  # fmt: skip
callback(
    Output("coactivation-nav", "href"), Input("coact-matrix", "clickData"),
    State("coact-run", "value"), State("coact-layer", "value"), prevent_initial_call=True,
)(open_card)  # fmt: skip
register_url_sync(PAGE)
