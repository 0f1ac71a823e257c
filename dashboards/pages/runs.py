"""Runs page (``/``): the store's runs; pick one to see its layers and labels and open its views,
and a second one to see the routing drift between them. The second picker offers only runs that
share at least one prompt (text and token ids) with the first, and says so when none does."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, html

from dashboards.components import guarded, message, query_string
from dashboards.components.pending import poll_input, poll_outputs, polled, poller, register_poll
from dashboards.components.pickers import Choice, compare_choice, run_choice
from dashboards.components.url import register_url_sync, url_components
from dashboards.data import attached, current_db
from dashboards.views import runs as view

dash.register_page(__name__, path="/", name="Runs", title="moe-workbench · runs", order=0)
PAGE = "runs"


def layout(run: str | None = None, compare: str | None = None, **_: Any) -> html.Div:
    """Runs table, a run picker (``?run=``; default the newest run), its details and a comparison run (``?compare=``)."""
    db = current_db()
    runs = run_choice(db, run)
    others = compare_with(runs.value, compare)
    model = attached().name
    return html.Div(
        [
            *url_components(PAGE),
            *poller(PAGE),
            html.H2("Runs"),
            html.P(f"Store: {db}" + (f" · model attached: {model}" if model else ""), className="wb-muted"),
            runs.problem or guarded(view.runs_table, db),
            html.Label("Run", htmlFor="runs-run"),
            runs.dropdown("runs-run", class_name=None),
            html.Div(id="runs-detail"),
            html.H3("Compare with another run", className="wb-section"),
            others.dropdown(
                "runs-compare",
                clearable=True,
                class_name="wb-pick-wide",
                placeholder="second run (sharing prompts with this one)",
            ),
            html.Div(others.problem, id="runs-compare-note"),
            html.Div(id="runs-drift"),
        ]
    )


def compare_with(run: str | None, current: str | None) -> Choice:
    """The compare picker for ``run``: runs sharing prompts with it, ``current`` kept when it is one of them;
    its ``problem`` says why there are none."""
    others = compare_choice(current_db(), run, current)
    if run and others.problem is None and not others.options:
        return Choice(
            problem=message(
                f"No other run shares a prompt with {run} (prompts are matched by text and token ids), so "
                "there is nothing to compare it with: capture the same probe file again (another checkpoint, "
                "backend or dtype) to compare routing."
            )
        )
    return others


def update_compare(run: str | None, current: str | None) -> tuple[list[dict[str, Any]], str | None, Any]:
    """The compare picker for a new ``run``: its options, the kept choice (if still compatible) and the note."""
    others = compare_with(run, current)
    return (*others.update(), others.problem)


callback(
    Output("runs-compare", "options"), Output("runs-compare", "value"), Output("runs-compare-note", "children"),
    Input("runs-run", "value"), State("runs-compare", "value"),
)(update_compare)  # fmt: skip


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
