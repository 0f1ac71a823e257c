"""Intervention lab (``/lab``, needs ``serve --model M``): pick experts of a layer and a semantics,
a typed prompt or a label set of the run, and run; the result (what changed at each position of a
chosen prompt, every prompt's generations, effects with CIs, behaviour, routing shift) is computed in a
background job and saved to the store.

Every control keeps its value in the address, so a lab setup is shared by copying the URL;
the run itself starts only on the button (a model run is never triggered by loading a page).
"""

from __future__ import annotations

from typing import Any

import dash
from dash import MATCH, Input, Output, State, callback, dcc, html

from dashboards.components import guarded, message, query_string, to_float, to_int
from dashboards.components.common import HIDDEN
from dashboards.components.pickers import Choice, label_choice, run_choice
from dashboards.components.url import register_url_sync, url_components
from dashboards.data import attached, current_db, current_model
from dashboards.jobs import JobCancelled, job_progress
from dashboards.views import lab as view
from dashboards.views import lab_positions
from dashboards.views.bounds import LAB_PROMPTS, MAX_PROMPT_CHARS

dash.register_page(__name__, path="/lab", name="Lab", title="moe-workbench · lab", order=7)
PAGE = "lab"
DEFAULT_TEXT = "The capital of France is"
INTRO = (
    "Switch experts of one layer off, force them on, bias their router logit or scale their output, and see "
    "what changes on the attached model: the run reads each prompt without and with the intervention. It "
    "shows what changed at each position of a prompt you pick, every prompt's greedy continuation both ways, "
    "the effect on the text's own next-token loss per label (with 95% intervals over prompts when a label "
    "has 2 or more), how the touched layers' routing moved, and how the same intervention on random experts "
    "of the same shape compares. It measures this model on these prompts only: a change shows that the "
    "intervention matters here, not what the experts are for, and the random sets show whether any experts "
    "treated the same way would change as much."
)
"""What the lab does and what its numbers do not show (shown under the title)."""
TEXT_TITLE = (
    "the prompt to run on when the label set is 'the typed prompt' (a label set uses the run's prompts)"
)


def _no_model() -> html.Div:
    """Why the lab is off, and how to turn it on."""
    model = attached()
    if model.error:
        return message(f"The lab is off: {model.error}", "warning")
    return message(
        "The lab needs a model: restart the dashboard with one attached, e.g. "
        f"`moe-workbench serve --db {current_db()} --model tiny-ref` (the model the run was captured "
        "from, as a zoo name or path). The other pages work without it."
    )


def _label_choice(db: str, run: str | None, labels: Any = None) -> Choice:
    """What the lab runs on: "the typed prompt" (the default) or one of the run's labels."""
    return label_choice(
        db, run, labels, with_all=False, lead=[{"label": "the typed prompt", "value": view.TYPED}]
    )


def layout(
    run: str | None = None,
    layer: str | None = None,
    experts: str | None = None,
    semantics: str | None = None,
    value: str | None = None,
    labels: str | None = None,
    n: str | None = None,
    text: str | None = None,
    **_: Any,
) -> html.Div:
    """The lab's controls, initialised from the query string; off (with the reason) without a model."""
    db = current_db()
    loaded = current_model()
    runs = run_choice(db, run)
    layers = Choice(view.layer_options(loaded) if loaded is not None else []).pick(to_int(layer))
    expert_opts = view.expert_options(loaded, layers.value) if loaded is not None else []
    wanted = [to_int(x) for x in (experts or "").split(",")]
    chosen: list[int] = [e for e in wanted if e is not None and e in {o["value"] for o in expert_opts}] or [
        o["value"] for o in expert_opts[:1]
    ]
    label_set = _label_choice(db, runs.value, labels)
    typed = label_set.value == view.TYPED
    semantics_choice = Choice([{"label": v, "value": k} for k, v in view.SEMANTICS.items()]).pick(
        semantics, 2
    )
    return html.Div(
        [
            *url_components(PAGE),
            html.H2("Intervention lab"),
            html.P(INTRO, className="wb-muted"),
            runs.problem,
            _no_model() if loaded is None else None,
            html.Div(
                [
                    html.Div(
                        [
                            runs.dropdown("lab-run", clearable=True),
                            layers.dropdown("lab-layer"),
                            dcc.Dropdown(id="lab-experts", options=expert_opts, value=chosen, multi=True,
                                         className="wb-pick", placeholder="experts"),
                            semantics_choice.dropdown("lab-semantics"),
                            dcc.Input(id="lab-value", type="number", value=to_float(value), debounce=True,
                                      placeholder="δ or s", className="wb-number"),
                        ],
                        className="wb-controls",
                    ),
                    html.Div(
                        [
                            label_set.dropdown("lab-labels"),
                            html.Span("prompts per label", className="wb-muted"),
                            dcc.Input(id="lab-n", type="number", min=LAB_PROMPTS[0], max=LAB_PROMPTS[1], step=1,
                                      debounce=True, value=to_int(n) or 8, className="wb-number",
                                      disabled=typed),
                        ],
                        className="wb-controls",
                    ),
                    dcc.Textarea(id="lab-text", value=DEFAULT_TEXT if text is None else text,
                                 maxLength=MAX_PROMPT_CHARS, style={"width": "40em", "height": "3.5em"},
                                 disabled=not typed, title=TEXT_TITLE),
                    html.Div(
                        [
                            html.Button("Run intervention", id="lab-go", n_clicks=0, disabled=loaded is None),
                            html.Button("Cancel", id="lab-cancel", n_clicks=0, disabled=True,
                                        title="stop the running job after its current step"),
                            html.Progress(id="lab-progress", value="0", max=str(view.STEPS)),
                            html.Span(id="lab-status", className="wb-muted"),
                            html.Span(id="lab-cancelled", className="wb-muted"),
                        ],
                        className="wb-controls",
                    ),
                ],
                style=HIDDEN if loaded is None else {},
            ),
            html.Div(id="lab-output"),
        ]
    )  # fmt: skip


def experts_of(layer: Any) -> list[dict[str, Any]]:
    """The chosen layer's experts (from the attached model)."""
    loaded = current_model()
    return [] if loaded is None else view.expert_options(loaded, layer)


def labels_of(run: str | None) -> list[dict[str, Any]]:
    """The run's labels, after "the typed prompt" (the chosen one is left as it is)."""
    return _label_choice(current_db(), run).options


def query(
    run: Any, layer: Any, experts: Any, semantics: Any, value: Any, labels: Any, n: Any, text: Any
) -> str:
    """The lab setup as a query string (the address shares the setup, not the result); experts that are
    not a list (a tampered request) are left out."""
    chosen = experts if isinstance(experts, (list, tuple)) else []
    return query_string(
        run=run, layer=layer, experts=",".join(str(e) for e in chosen) or None,
        semantics=semantics, value=value, labels=labels, n=n, text=text if labels == view.TYPED else None,
    )  # fmt: skip


def run_job(set_progress: Any, _clicks: int, *choices_: Any) -> Any:
    """Background job: the lab run on the attached model, its rendering and the store write."""
    loaded = current_model()
    if loaded is None:
        return _no_model()

    try:
        return guarded(view.lab_job, current_db(), loaded, *choices_, progress=job_progress(set_progress))
    except JobCancelled:
        return message("Cancelled: nothing was saved.")


def typed_only(labels: Any) -> tuple[bool, bool]:
    """(text box disabled, prompts-per-label disabled): the box is read only for the typed prompt, the count only for a label."""
    typed = labels in (None, view.TYPED)
    return not typed, typed


def pick_prompt(prompt_id: Any, stored: Any) -> Any:
    """Another prompt's per-token view, from the table the result keeps in the page (no model run)."""
    return guarded(lab_positions.pick_prompt, prompt_id, stored)


def cancel_note(_go: int, cancels: int) -> str:
    """What the Cancel button did (cleared when a new run starts)."""
    if dash.ctx.triggered_id == "lab-cancel" and cancels:
        return "cancelled: the job stops after its current step; nothing is saved"
    return ""


callback(Output("lab-experts", "options"), Input("lab-layer", "value"), prevent_initial_call=True)(experts_of)
callback(Output("lab-labels", "options"), Input("lab-run", "value"), prevent_initial_call=True)(labels_of)
callback(
    Output("lab-text", "disabled"), Output("lab-n", "disabled"), Input("lab-labels", "value"),
    prevent_initial_call=True,
)(typed_only)  # fmt: skip
callback(
    Output({**lab_positions.PER_TOKEN, "result": MATCH}, "children"),
    Input({**lab_positions.PICK, "result": MATCH}, "value"),
    State({**lab_positions.POSITIONS, "result": MATCH}, "data"),
    prevent_initial_call=True,
)(pick_prompt)  # fmt: skip
callback(
    Output("lab-query", "data"),
    Input("lab-run", "value"), Input("lab-layer", "value"), Input("lab-experts", "value"),
    Input("lab-semantics", "value"), Input("lab-value", "value"), Input("lab-labels", "value"),
    Input("lab-n", "value"), Input("lab-text", "value"),
)(query)  # fmt: skip
callback(
    Output("lab-output", "children"),
    Input("lab-go", "n_clicks"),
    State("lab-run", "value"), State("lab-layer", "value"), State("lab-experts", "value"),
    State("lab-semantics", "value"), State("lab-value", "value"), State("lab-labels", "value"),
    State("lab-n", "value"), State("lab-text", "value"),
    background=True,
    progress=[Output("lab-progress", "value"), Output("lab-progress", "max"), Output("lab-status", "children")],
    running=[(Output("lab-go", "disabled"), True, False), (Output("lab-cancel", "disabled"), False, True)],
    cancel=[Input("lab-cancel", "n_clicks")],
    interval=400,
    prevent_initial_call=True,
)(run_job)  # fmt: skip
callback(
    Output("lab-cancelled", "children"), Input("lab-go", "n_clicks"), Input("lab-cancel", "n_clicks"),
    prevent_initial_call=True,
)(cancel_note)  # fmt: skip
register_url_sync(PAGE)
