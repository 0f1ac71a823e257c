"""Specialisation (``/specialisation``): per label, log-odds against the other labels with a star on
the specialised cells and CIs on hover (click a cell for the expert card); vocabulary
specialisation and scorer agreement below; all over the token segment picked (prompt, response or all,
kept in the address as ``?segment=``)."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, html

from dashboards.components import expert_href, fill, guarded, query_string, slot
from dashboards.components.pending import poll_input, poll_outputs, polled, poller, register_poll
from dashboards.components.pickers import label_choice, run_choice, segment_choice, segments_of
from dashboards.components.url import clicked_expert, register_url_sync, url_components
from dashboards.data import current_db, scoped
from dashboards.views import specialisation as view

dash.register_page(
    __name__, path="/specialisation", name="Specialisation", title="moe-workbench · specialisation", order=2
)
PAGE = "specialisation"


def layout(
    run: str | None = None, label: str | None = None, segment: str | None = None, **_: Any
) -> html.Div:
    """Run, label and token segment pickers (from ``?run=&label=&segment=``), the heatmap, the vocabulary
    and agreement views."""
    db = current_db()
    runs = run_choice(db, run)
    return html.Div(
        [
            *url_components(PAGE),
            *poller(PAGE),
            html.H2("Domain specialisation"),
            runs.problem,
            html.Div(
                [
                    runs.dropdown("spec-run"),
                    label_choice(db, runs.value, label, with_all=False).dropdown("spec-label"),
                    segment_choice(db, runs.value, segment).dropdown(
                        "spec-segment", class_name="wb-pick-small"
                    ),
                ],
                className="wb-controls",
            ),
            slot("spec-heatmap"),
            html.H3("Vocabulary specialisation"),
            slot("spec-vocab"),
            html.H3("Scorer agreement"),
            html.Div(id="spec-agreement"),
        ]
    )


def labels_of(run: str | None, label: str | None) -> tuple[list[Any], Any]:
    """The run's labels, keeping the chosen one when the run has it."""
    return label_choice(current_db(), run, label, with_all=False).update()


def update(run: str | None, label: str | None, segment: str | None = None) -> tuple[Any, ...]:
    """Lift heatmap, vocabulary figure and agreement for the choices (over the segment's tokens), and
    the view's query string."""
    db = current_db()
    return (
        *fill(view.lift_heatmap, db, run, label, segment),
        *fill(view.vocab, db, run, segment),
        guarded(view.agreement, db, run, segment),
        query_string(run=run, label=label, **scoped(segment)),
    )


def open_card(click: Any, run: str | None) -> Any:
    """The expert card of the clicked (layer, expert) cell."""
    cell = clicked_expert(click)
    return dash.no_update if cell is None else expert_href(run, *cell)


callback(
    Output("spec-label", "options"), Output("spec-label", "value"),
    Input("spec-run", "value"), State("spec-label", "value"), prevent_initial_call=True,
)(labels_of)  # fmt: skip
callback(
    Output("spec-segment", "options"), Output("spec-segment", "value"),
    Input("spec-run", "value"), State("spec-segment", "value"), prevent_initial_call=True,
)(segments_of)  # fmt: skip
callback(
    Output("spec-heatmap", "figure"), Output("spec-heatmap", "style"), Output("spec-heatmap-msg", "children"),
    Output("spec-vocab", "figure"), Output("spec-vocab", "style"), Output("spec-vocab-msg", "children"),
    Output("spec-agreement", "children"), Output("specialisation-query", "data"),
    *poll_outputs(PAGE),
    Input("spec-run", "value"), Input("spec-label", "value"), Input("spec-segment", "value"), poll_input(PAGE),
)(polled(update))  # fmt: skip
callback(
    Output("specialisation-nav", "href"), Input("spec-heatmap", "clickData"), State("spec-run", "value"),
    prevent_initial_call=True,
)(open_card)  # fmt: skip
register_url_sync(PAGE)
register_poll(PAGE)
