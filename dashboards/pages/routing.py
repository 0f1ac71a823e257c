"""Routing explorer (``/routing``): selection-share heatmap by label, and a prompt's tokens
coloured by their top-1 expert with the top-k, weights and logits on hover."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, html

from dashboards.components import choices, expert_href, fill, guarded, query_string, slot, to_int
from dashboards.components.pending import poll_input, poll_outputs, polled, poller, register_poll
from dashboards.components.pickers import ALL, Choice, label_choice, layer_choice, run_choice
from dashboards.components.url import clicked_expert, register_url_sync, url_components
from dashboards.data import current_db
from dashboards.views import routing as view

dash.register_page(__name__, path="/routing", name="Routing", title="moe-workbench · routing", order=1)
PAGE = "routing"


def layout(
    run: str | None = None,
    label: str | None = None,
    prompt: str | None = None,
    layer: str | None = None,
    **_: Any,
) -> html.Div:
    """Controls initialised from the query string (``run``, ``label``, ``prompt``, ``layer``)."""
    db = current_db()
    runs = run_choice(db, run)
    labels, prompts, layers = choices_of(db, runs.value, label, prompt, layer)
    return html.Div(
        [
            *url_components(PAGE),
            *poller(PAGE),
            html.H2("Routing explorer"),
            runs.problem,
            html.Div(
                [runs.dropdown("routing-run"), labels.dropdown("routing-label")], className="wb-controls"
            ),
            slot("routing-heatmap"),
            html.H3("Token view"),
            html.Div(
                [
                    prompts.dropdown(
                        "routing-prompt", clearable=True, class_name="wb-pick-wide", placeholder="prompt"
                    ),
                    layers.dropdown("routing-layer", clearable=True, placeholder="layer"),
                ],
                className="wb-controls",
            ),
            html.Div(id="routing-tokens"),
            slot("routing-grid"),
        ]
    )


def choices_of(
    db: str, run: str | None, label: Any, prompt: Any, layer: Any
) -> tuple[Choice, Choice, Choice]:
    """The run's labels (after "all labels"), the chosen label's prompts and the run's layers, each keeping
    the choice when offered (else the first option)."""
    labels = label_choice(db, run, label)
    found, _ = choices(view.prompt_options, db, run, labels.value)
    return labels, Choice(found).pick(to_int(prompt)), layer_choice(db, run, layer)


def options(
    run: str | None, label: str | None, prompt: int | None, layer: int | None
) -> tuple[list[Any], Any, list[Any], Any, list[Any], Any]:
    """Label, prompt and layer options of a run, keeping each choice the run still offers."""
    labels, prompts, layers = choices_of(current_db(), run, label, prompt, layer)
    return (*labels.update(), *prompts.update(), *layers.update())


def update(run: str | None, label: str | None) -> tuple[Any, ...]:
    """The selection-share heatmap for the choices (polled: it needs the specialisation table)."""
    return fill(view.share_heatmap, current_db(), run, label)


def update_tokens(
    run: str | None, label: str | None, prompt: int | None, layer: int | None
) -> tuple[Any, ...]:
    """Token text and token grid of the chosen prompt (store reads only), and the view's query string.

    A callback of its own: the heatmap's polling re-renders only the heatmap, not this
    (a 500-token prompt's views are about a megabyte).
    """
    db = current_db()
    text = guarded(view.token_text, db, run, prompt, layer)
    grid = fill(view.token_grid, db, run, prompt)
    query = query_string(run=run, label=None if label == ALL else label, prompt=prompt, layer=layer)
    return (text, *grid, query)


def open_card(heat_click: Any, grid_click: Any, run: str | None) -> Any:
    """The expert card of the clicked cell (heatmap: x is the expert; token grid: the cell's top-1)."""
    trigger = dash.ctx.triggered_id
    cell = (
        clicked_expert(grid_click, "customdata") if trigger == "routing-grid" else clicked_expert(heat_click)
    )
    if cell is None:
        return dash.no_update
    return expert_href(run, *cell)


callback(
    Output("routing-label", "options"), Output("routing-label", "value"),
    Output("routing-prompt", "options"), Output("routing-prompt", "value"),
    Output("routing-layer", "options"), Output("routing-layer", "value"),
    Input("routing-run", "value"), Input("routing-label", "value"),
    State("routing-prompt", "value"), State("routing-layer", "value"), prevent_initial_call=True,
)(options)  # fmt: skip
callback(
    Output("routing-heatmap", "figure"), Output("routing-heatmap", "style"), Output("routing-heatmap-msg", "children"),
    *poll_outputs(PAGE),
    Input("routing-run", "value"), Input("routing-label", "value"), poll_input(PAGE),
)(polled(update))  # fmt: skip
callback(
    Output("routing-tokens", "children"),
    Output("routing-grid", "figure"), Output("routing-grid", "style"), Output("routing-grid-msg", "children"),
    Output("routing-query", "data"),
    Input("routing-run", "value"), Input("routing-label", "value"),
    Input("routing-prompt", "value"), Input("routing-layer", "value"),
)(update_tokens)  # fmt: skip
callback(
    Output("routing-nav", "href"),
    Input("routing-heatmap", "clickData"), Input("routing-grid", "clickData"), State("routing-run", "value"),
    prevent_initial_call=True,
)(open_card)  # fmt: skip
register_url_sync(PAGE)
register_poll(PAGE)
