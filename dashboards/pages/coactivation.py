"""Co-activation (``/coactivation``): the P(b | a) matrix of one layer (click a row for expert a's
card), the same layer as a network of its strongest pairs (by lift or count above a threshold, at
most N of them; click an expert for its card), and the cross-layer top-1 pathways as a Sankey
diagram (the N most frequent per layer pair). Both Ns have a control: at E = 256 thousands of pairs
pass the threshold, and drawn all at once they hide each other.

The layer picker always names the layer the figures show: when none is chosen (or the run lacks the
chosen one) the page shows the run's most structured layer and writes it into the picker, so the
picker is never blank beside a drawn layer (it was while that default was still being computed)."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html

from dashboards.components import expert_href, fill, guarded, query_string, slot, to_float, to_int
from dashboards.components.pending import poll_input, poll_outputs, polled, poller, register_poll
from dashboards.components.pickers import Choice, layer_choice, run_choice
from dashboards.components.url import register_url_sync, url_components
from dashboards.data import current_db
from dashboards.views import coactivation as view

dash.register_page(
    __name__, path="/coactivation", name="Co-activation", title="moe-workbench · co-activation", order=4
)
PAGE = "coactivation"


def layout(
    run: str | None = None,
    layer: str | None = None,
    metric: str | None = None,
    min: str | None = None,
    top: str | None = None,
    paths: str | None = None,
    **_: Any,
) -> html.Div:
    """Run and layer pickers (from ``?run=&layer=``; layer default: the most structured one), the
    network's edge weight, threshold and most pairs drawn (``?metric=lift|count&min=&top=``; default:
    lift ≥ 1.5, the strongest 40), and the transitions per layer pair of the Sankey (``?paths=``, 20)."""
    db = current_db()
    runs = run_choice(db, run)
    layers = layer_choice(db, runs.value)
    chosen = to_int(layer)
    if not layers.offers(chosen) and runs.value:
        found = guarded(view.default_layer, db, runs.value)
        chosen = found if isinstance(found, int) else None
    metrics = Choice([{"label": v, "value": k} for k, v in view.METRICS.items()]).keep(metric, "lift")
    return html.Div(
        [
            *url_components(PAGE),
            *poller(PAGE),
            html.H2("Co-activation"),
            runs.problem,
            html.Div(
                [
                    runs.dropdown("coact-run"),
                    Choice(layers.options, chosen).dropdown("coact-layer"),
                ],
                className="wb-controls",
            ),
            slot("coact-matrix"),
            html.H3("Network of the strongest pairs"),
            html.Div(
                [
                    html.Span("edge weight", className="wb-muted"),
                    metrics.dropdown("coact-metric", class_name="wb-pick-wide"),
                    html.Span("at least", className="wb-muted"),
                    dcc.Input(
                        id="coact-min",
                        type="number",
                        value=to_float(min),
                        debounce=True,
                        placeholder="auto",
                        className="wb-number",
                    ),
                    html.Span(
                        f"(empty: lift ≥ {view.DEFAULT_MIN_LIFT} or the layer's strongest 10% of pairs, whichever is lower; "
                        "counts: the strongest 10%)",
                        className="wb-muted",
                    ),
                    html.Span("draw at most", className="wb-muted"),
                    count_input("coact-top", top, view.DEFAULT_TOP_PAIRS),
                    html.Span("pairs, the strongest first", className="wb-muted"),
                ],
                className="wb-controls",
            ),
            slot("coact-network"),
            html.H3("Pathways across layers"),
            html.Div(
                [
                    html.Span("the most frequent", className="wb-muted"),
                    count_input("coact-paths", paths, view.DEFAULT_PATHS),
                    html.Span("top-1 transitions of each layer pair", className="wb-muted"),
                ],
                className="wb-controls",
            ),
            slot("coact-sankey"),
        ]
    )


def count_input(input_id: str, value: Any, default: int) -> dcc.Input:
    """A whole-number input (≥ 1) for how many pairs or transitions to draw, ``default`` when unset."""
    chosen = to_int(value)
    return dcc.Input(
        id=input_id,
        type="number",
        min=1,
        step=1,
        value=chosen if chosen is not None and chosen >= 1 else default,
        debounce=True,
        className="wb-number",
    )


def layers_of(run: str | None, layer: Any) -> tuple[list[Any], Any]:
    """(options, value) of the layer picker: the run's layers, the chosen one when the run has it, else
    the run's most structured layer (:func:`dashboards.views.coactivation.default_layer`; None while
    that is still being computed, or when the run has no co-activations)."""
    db = current_db()
    layers = layer_choice(db, run, layer)
    if layers.offers(to_int(layer)) or not run:
        return layers.update()
    found = guarded(view.default_layer, db, run)
    return layers.options, found if isinstance(found, int) and layers.offers(found) else None


def update(
    run: str | None, layer: Any, metric: str | None, threshold: Any, top: Any, paths: Any
) -> tuple[Any, ...]:
    """The layer picker (:func:`layers_of`: it names the layer drawn), matrix, network and Sankey for the
    choices, and the view's query string (defaults left out)."""
    db = current_db()
    options, shown = layers_of(run, layer)
    metric = metric or "lift"
    minimum = to_float(threshold)
    pairs = to_int(top) or view.DEFAULT_TOP_PAIRS
    per_pair = to_int(paths) or view.DEFAULT_PATHS
    return (
        options,
        shown,
        *fill(view.matrix, db, run, shown),
        *fill(view.network, db, run, shown, metric, minimum, pairs),
        *fill(view.pathways, db, run, per_pair),
        query_string(
            run=run, layer=shown, metric=None if metric == "lift" else metric, min=minimum,
            top=None if pairs == view.DEFAULT_TOP_PAIRS else pairs,
            paths=None if per_pair == view.DEFAULT_PATHS else per_pair,
        ),
    )  # fmt: skip


def open_card(click: Any, net_click: Any, run: str | None, layer: int | None) -> Any:
    """The card of the clicked expert at the shown layer: matrix row a (y), or a network node."""
    if layer is None:
        return dash.no_update
    if dash.ctx.triggered_id == "coact-network":
        point = ((net_click or {}).get("points") or [{}])[0]
        label = point.get("text")  # a node's text is its expert id; edge midpoints have none
        return expert_href(run, layer, label) if to_int(label) is not None else dash.no_update
    if not click or not click.get("points"):
        return dash.no_update
    return expert_href(run, layer, click["points"][0].get("y"))


callback(
    Output("coact-layer", "options"), Output("coact-layer", "value"),
    Output("coact-matrix", "figure"), Output("coact-matrix", "style"), Output("coact-matrix-msg", "children"),
    Output("coact-network", "figure"), Output("coact-network", "style"), Output("coact-network-msg", "children"),
    Output("coact-sankey", "figure"), Output("coact-sankey", "style"), Output("coact-sankey-msg", "children"),
    Output("coactivation-query", "data"),
    *poll_outputs(PAGE),
    Input("coact-run", "value"), Input("coact-layer", "value"),
    Input("coact-metric", "value"), Input("coact-min", "value"),
    Input("coact-top", "value"), Input("coact-paths", "value"), poll_input(PAGE),
)(polled(update))  # fmt: skip
callback(
    Output("coactivation-nav", "href"), Input("coact-matrix", "clickData"), Input("coact-network", "clickData"),
    State("coact-run", "value"), State("coact-layer", "value"), prevent_initial_call=True,
)(open_card)  # fmt: skip
register_url_sync(PAGE)
register_poll(PAGE)
