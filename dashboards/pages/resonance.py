"""Resonance (``/resonance``): pick target and control labels, a method and a span of tokens to get the
layer × expert map, or pick a map stored by ``moe-workbench resonate`` (a causal map too); click a cell
to list the tokens that drive that expert (with a link to its card).

A stored map carries its own target, control, span and method: while one is shown those pickers are
disabled, and the drill-down uses the map's. The address keeps every choice (``?span=…&map=…``)."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html

from dashboards.components import choices, fill, guarded, query_string, slot, to_int
from dashboards.components.pending import poll_input, poll_outputs, polled, poller, register_poll
from dashboards.components.pickers import Choice, label_choice, run_choice, segment_choice, segments_of
from dashboards.components.url import clicked_expert, register_url_sync, url_components
from dashboards.data import current_db
from dashboards.views import resonance as view

dash.register_page(__name__, path="/resonance", name="Resonance", title="moe-workbench · resonance", order=5)
PAGE = "resonance"


def pair_of(db: str, run: str | None, target: Any, control: Any) -> tuple[Choice, Choice]:
    """Target and control pickers over the run's labels, keeping the chosen ones it has (else its contrast set)."""
    labels = label_choice(db, run, with_all=False)
    pair = guarded(view.default_pair, db, run) if run else (None, None)
    found = pair if isinstance(pair, tuple) else (None, None)
    return labels.keep(target, found[0]), labels.keep(control, found[1])


def layout(
    run: str | None = None,
    target: str | None = None,
    control: str | None = None,
    method: str | None = None,
    layer: str | None = None,
    expert: str | None = None,
    span: str | None = None,
    map: str | None = None,  # the query parameter ?map= (shadows the builtin here only)
    segment: str | None = None,
    **_: Any,
) -> html.Div:
    """Run, target, control, method, token segment, span and stored-map pickers (from the query string);
    a clicked cell is kept too."""
    db = current_db()
    runs = run_choice(db, run)
    targets, controls = pair_of(db, runs.value, target, control)
    cell = (to_int(layer), to_int(expert))
    methods = Choice([{"label": m, "value": m} for m in view.METHODS]).pick(method)
    segments = segment_choice(db, runs.value, segment)
    maps = maps_choice(db, runs.value, map)
    return html.Div(
        [
            *url_components(PAGE),
            *poller(PAGE),
            dcc.Store(id="resonance-cell", data=list(cell) if None not in cell else None),
            html.H2("Resonance map"),
            runs.problem,
            html.Div(
                [
                    runs.dropdown("res-run"),
                    html.Span("target", className="wb-muted"),
                    targets.dropdown("res-target", clearable=True),
                    html.Span("control", className="wb-muted"),
                    controls.dropdown("res-control", clearable=True),
                    methods.dropdown("res-method", class_name="wb-pick-small"),
                    segments.dropdown("res-segment", class_name="wb-pick-small"),
                    html.Span("span", className="wb-muted"),
                    dcc.Input(
                        id="res-span",
                        type="text",
                        value=span or "",
                        placeholder="all",
                        debounce=True,
                        className="wb-text",
                    ),
                    html.Span(f"({view.SPAN_HELP})", className="wb-muted"),
                ],
                className="wb-controls",
            ),
            html.Div(
                [html.Span("map", className="wb-muted"), maps.dropdown("res-map", class_name="wb-pick-wide")],
                className="wb-controls",
            ),
            slot("res-heatmap"),
            html.Div(id="res-tokens"),
        ]
    )


def maps_choice(db: str, run: str | None, chosen: Any = None) -> Choice:
    """The map picker: the map computed here, then the run's stored maps; ``chosen`` kept when the run has it."""
    options, _ = choices(view.map_options, db, run)
    return Choice(options or [{"label": "computed here", "value": view.LIVE}]).pick(chosen)


def maps_of(run: str | None) -> tuple[list[Any], Any]:
    """The map picker for a new run: its stored maps, the map computed here chosen (map ids belong to one run)."""
    return maps_choice(current_db(), run).update()


def labels_of(run: str | None, target: Any, control: Any) -> tuple[list[Any], Any, list[Any], Any]:
    """The run's labels for both pickers, keeping the chosen ones it has (else its contrast set)."""
    targets, controls = pair_of(current_db(), run, target, control)
    return (*targets.update(), *controls.update())


def remember_cell(
    click: Any, run: Any, target: Any, control: Any, span: Any = None, map_id: Any = None, segment: Any = None
) -> Any:
    """The clicked (layer, expert); a new run, label pair, span, map or segment clears it."""
    if dash.ctx.triggered_id != "res-heatmap":
        return None
    cell = clicked_expert(click)
    return list(cell) if cell else dash.no_update


def _cell(cell: Any) -> tuple[int, int] | None:
    """The remembered (layer, expert) as ints, or None for anything else a request may carry."""
    if not isinstance(cell, (list, tuple)) or len(cell) != 2:
        return None
    layer, expert = to_int(cell[0]), to_int(cell[1])
    return None if layer is None or expert is None else (layer, expert)


def update(
    run: str | None,
    target: str | None,
    control: str | None,
    method: str,
    cell: Any,
    span: Any = None,
    map_id: Any = None,
    segment: str | None = None,
) -> tuple[Any, ...]:
    """The map (computed here, or the stored one chosen), the clicked cell's driving tokens, the pickers
    a stored map fixes (disabled while one is shown), and the view's query string."""
    db = current_db()
    at = _cell(cell)
    stored = map_id if isinstance(map_id, str) and map_id != view.LIVE else None
    span = span.strip() if isinstance(span, str) else ""  # a request may carry anything
    query = query_string(
        run=run, target=target, control=control, method=method, span=span or None, map=stored,
        layer=at[0] if at else None, expert=at[1] if at else None,
        segment=segment if segment not in (None, "all") else None,
    )  # fmt: skip
    fixed = stored is not None
    if stored is None:
        shown = fill(view.resonance_figure, db, run, target, control, method, span, segment)
        tokens = guarded(view.driving_tokens, db, run, target, control, at, span, segment)
    else:
        shown = fill(view.stored_map_figure, db, run, stored)
        found = guarded(view.stored_map, db, run, stored)
        tokens = (
            guarded(view.driving_tokens, db, run, found.target, found.control, at, found.span, found.segment)
            if isinstance(found, view.StoredMap)
            else found
        )
    return (*shown, tokens, fixed, fixed, fixed, fixed, fixed, query)


callback(
    Output("res-target", "options"), Output("res-target", "value"),
    Output("res-control", "options"), Output("res-control", "value"),
    Input("res-run", "value"), State("res-target", "value"), State("res-control", "value"),
    prevent_initial_call=True,
)(labels_of)  # fmt: skip
callback(
    Output("res-segment", "options"), Output("res-segment", "value"),
    Input("res-run", "value"), State("res-segment", "value"),
    prevent_initial_call=True,
)(segments_of)  # fmt: skip
callback(
    Output("resonance-cell", "data"), Input("res-heatmap", "clickData"),
    Input("res-run", "value"), Input("res-target", "value"), Input("res-control", "value"),
    Input("res-span", "value"), Input("res-map", "value"), Input("res-segment", "value"),
    prevent_initial_call=True,
)(remember_cell)  # fmt: skip
callback(
    Output("res-map", "options"), Output("res-map", "value"), Input("res-run", "value"), prevent_initial_call=True,
)(maps_of)  # fmt: skip
callback(
    Output("res-heatmap", "figure"), Output("res-heatmap", "style"), Output("res-heatmap-msg", "children"),
    Output("res-tokens", "children"),
    Output("res-target", "disabled"), Output("res-control", "disabled"), Output("res-method", "disabled"),
    Output("res-span", "disabled"), Output("res-segment", "disabled"),
    Output("resonance-query", "data"),
    *poll_outputs(PAGE),
    Input("res-run", "value"), Input("res-target", "value"), Input("res-control", "value"),
    Input("res-method", "value"), Input("resonance-cell", "data"), Input("res-span", "value"),
    Input("res-map", "value"), Input("res-segment", "value"), poll_input(PAGE),
)(polled(update))  # fmt: skip
register_url_sync(PAGE)
register_poll(PAGE)
