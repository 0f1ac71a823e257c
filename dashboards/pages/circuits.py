"""Circuits (``/circuits``, needs ``serve --model M``): pick a suite with gold answers and two of its
labels (default: ``tasks``, brackets vs arithmetic) and a prompt count; a background job finds
both circuits on the attached model and shows their overlap, the importance scatter and the
cross-ablation table. The choices live in the address; the job starts only on the button."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html

from dashboards.components import guarded, message, query_string, to_int
from dashboards.components.common import HIDDEN
from dashboards.components.pickers import Choice
from dashboards.components.url import register_url_sync, url_components
from dashboards.data import attached, current_db, current_model
from dashboards.jobs import JobCancelled, job_progress
from dashboards.views import circuits as view
from dashboards.views.bounds import CIRCUIT_PROMPTS

dash.register_page(__name__, path="/circuits", name="Circuits", title="moe-workbench · circuits", order=8)
PAGE = "circuits"


def _suites() -> Choice:
    from workbench.data.suites import suite_names

    return Choice([{"label": name, "value": name} for name in suite_names()])


def _labels(suite: str | None) -> Choice:
    """The suite's labels with gold answers (none when there is no suite or it cannot be read)."""
    found = guarded(view.suite_labels, suite) if suite else []
    return Choice([{"label": lab, "value": lab} for lab in found] if isinstance(found, list) else [])


def _no_model() -> html.Div:
    model = attached()
    if model.error:
        return message(f"Circuits are off: {model.error}", "warning")
    return message(
        "Circuits need a model: restart the dashboard with one attached, e.g. "
        f"`moe-workbench serve --db {current_db()} --model tiny-ref`."
    )


def layout(
    suite: str | None = None,
    a: str | None = None,
    b: str | None = None,
    n: str | None = None,
    run: str | None = None,
    **_: Any,
) -> html.Div:
    """Suite, two labels and a prompt count (from the query string; default tasks: brackets vs arithmetic).

    ``run`` is not used here but kept in the address, so the navigation links keep pointing at it.
    """
    loaded = current_model()
    suites = _suites().pick(suite or view.DEFAULT_SUITE)
    labels = _labels(suites.value)
    return html.Div(
        [
            *url_components(PAGE),
            dcc.Store(id="circ-run", data=run),
            html.H2("Circuits"),
            html.P(
                "Each expert's importance for a label is the change of the gold answer's log-prob when it "
                "alone is ablated; a circuit is the fewest experts whose joint ablation removes ≥ 80% of the "
                "full drop. One ablation per expert and label: about a minute for tiny-ref with 16 prompts per "
                "label on a busy CPU, far longer on big models.",
                className="wb-muted",
            ),
            _no_model() if loaded is None else None,
            html.Div(
                [
                    suites.dropdown("circ-suite"),
                    labels.pick(a or view.DEFAULT_LABELS[0]).dropdown("circ-a"),
                    html.Span("vs", className="wb-muted"),
                    labels.pick(b or view.DEFAULT_LABELS[1], 1).dropdown("circ-b"),
                    html.Span("prompts per label", className="wb-muted"),
                    dcc.Input(id="circ-n", type="number", min=CIRCUIT_PROMPTS[0], max=CIRCUIT_PROMPTS[1], step=1,
                              value=to_int(n) or 16, debounce=True, className="wb-number"),
                    html.Button("Find circuits", id="circ-go", n_clicks=0, disabled=loaded is None),
                    html.Button("Cancel", id="circ-cancel", n_clicks=0, disabled=True,
                                title="stop the job after its current step"),
                    html.Progress(id="circ-progress", value="0", max="3"),
                    html.Span(id="circ-status", className="wb-muted"),
                ],
                className="wb-controls",
                style=HIDDEN if loaded is None else {},
            ),
            html.Div(id="circ-output"),
        ]
    )  # fmt: skip


def labels_of(suite: str | None, a: Any, b: Any) -> tuple[list[Any], Any, list[Any], Any]:
    """The suite's gold-answer labels for both pickers, keeping the chosen ones it has."""
    labels = _labels(suite)
    return (*labels.pick(a).update(), *labels.pick(b, 1).update())


def query(suite: Any, a: Any, b: Any, n: Any, run: Any) -> str:
    """The view's query string (with the run the user came from)."""
    return query_string(suite=suite, a=a, b=b, n=n, run=run)


def run_job(set_progress: Any, _clicks: int, suite: str, a: str, b: str, n: Any) -> Any:
    """Background job: the circuit comparison on the attached model, rendered."""
    loaded = current_model()
    if loaded is None:
        return _no_model()

    try:
        return guarded(view.circuits_job, loaded, suite, a, b, n, progress=job_progress(set_progress))
    except JobCancelled:
        return message("Cancelled.")


callback(
    Output("circ-a", "options"), Output("circ-a", "value"), Output("circ-b", "options"), Output("circ-b", "value"),
    Input("circ-suite", "value"), State("circ-a", "value"), State("circ-b", "value"),
    prevent_initial_call=True,
)(labels_of)  # fmt: skip
callback(
    Output("circuits-query", "data"),
    Input("circ-suite", "value"), Input("circ-a", "value"), Input("circ-b", "value"), Input("circ-n", "value"),
    Input("circ-run", "data"),
)(query)  # fmt: skip
callback(
    Output("circ-output", "children"),
    Input("circ-go", "n_clicks"),
    State("circ-suite", "value"), State("circ-a", "value"), State("circ-b", "value"), State("circ-n", "value"),
    background=True,
    progress=[Output("circ-progress", "value"), Output("circ-progress", "max"), Output("circ-status", "children")],
    running=[(Output("circ-go", "disabled"), True, False), (Output("circ-cancel", "disabled"), False, True)],
    cancel=[Input("circ-cancel", "n_clicks")],
    interval=500,
    prevent_initial_call=True,
)(run_job)  # fmt: skip
register_url_sync(PAGE)
