"""Fuzzing the dashboard's URL state and page callbacks with hypothesis (issue 15, item 7); no browser.

Every page's ``layout`` is what an address renders (its query parameters become keyword
arguments), and its callbacks are plain functions of the inputs a browser sends. Both are called
here with random values: run ids, labels, layers and experts as anything a URL or a tampered
request can carry (markup, SQL, huge numbers, NaN, lists, click data of any shape). The property:
a component, a value or ``no_update``; the page explains a bad choice in a message and never
raises. The synthetic store of ``test_dashboard.py`` serves (no model: the lab and circuits pages
show their "no model" state).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
from collections.abc import Iterator
from typing import Any

import dash
import pytest
from dash.exceptions import MissingCallbackContextException
from fuzz_support import budget
from hypothesis import example, given
from hypothesis import strategies as st
from test_dashboard import PLANT, RUN, dashboard_db

from dashboards import data
from dashboards.components.common import expert_href, query_string, to_int
from dashboards.components.pickers import pick
from dashboards.components.url import clicked_expert
from dashboards.views.lab import make_spec

pytestmark = pytest.mark.unit

PAGES = [
    "runs",
    "routing",
    "specialisation",
    "health",
    "coactivation",
    "resonance",
    "expert",
    "lab",
    "circuits",
]
SKIP = {"layout", "run_job"}
"""Page functions not called as callbacks here: layout (tested through addresses) and the background
jobs (they need an attached model and the job manager; tests/test_dashboard_lab.py runs them)."""

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=16)
NUMBER = st.one_of(
    st.integers(-3, 9),
    st.integers(),
    st.floats(allow_infinity=False),
    st.sampled_from([math.nan, 2**70]),
)
"""Numbers a request can carry. Infinities have their own cases (:func:`test_infinite_numbers_are_refused_or_ignored`,
:func:`test_tampered_callback_inputs_get_a_message`); letting the fuzzer draw them everywhere is still to do."""
QUERY_VALUE = st.one_of(
    st.sampled_from([RUN, "code", "math", "prose", "__all__", "__typed__", str(PLANT[0]), str(PLANT[1])]),
    NUMBER.map(str),
    TEXT,
    st.sampled_from(["a[/]b", "<script>alert(1)</script>", "x' OR 1=1; --", "", "-1", "1e999"]),
)
"""What a query string can hold: always text, anything at all."""
CLICK = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "points": st.lists(
                st.dictionaries(
                    st.sampled_from(["x", "y", "customdata", "z"]),
                    st.one_of(NUMBER, TEXT, st.lists(NUMBER, max_size=2)),
                ),
                max_size=2,
            )
        }
    ),
    st.dictionaries(TEXT, NUMBER, max_size=2),
)
CALLBACK_VALUE = st.one_of(
    st.none(), QUERY_VALUE, NUMBER, st.booleans(), st.lists(st.one_of(NUMBER, QUERY_VALUE), max_size=3), CLICK
)
"""What a tampered callback request can send for any input: JSON of any type."""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dash.Dash]:
    from dashboards.app import create_app

    data.clear_cache()
    created = create_app(dashboard_db(tmp_path_factory.mktemp("fuzz-dash") / "dash.duckdb"))
    response = contextvars.copy_context().run(created.server.test_client().get, "/_dash-layout")
    assert response.status_code == 200  # binds the pages' callbacks, as a first request does
    yield created
    created.server.config["WORKBENCH_CLEANUP"]()
    data.clear_cache()


def _page(name: str) -> Any:
    return dash.page_registry[f"dashboards.pages.{name}"]


def _callbacks(name: str) -> list[tuple[str, Any, int]]:
    """(name, function, number of inputs) of a page module's own public functions, but :data:`SKIP`."""
    module = inspect.getmodule(_page(name)["layout"])
    found = []
    for attr, fn in vars(module).items():
        if (
            attr.startswith("_")
            or attr in SKIP
            or not inspect.isfunction(fn)
            or fn.__module__ != module.__name__
        ):
            continue
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
        if (
            params and params[0].name == "db"
        ):  # a helper the layout calls with the app's store, not a callback
            continue
        found.append((attr, fn, len(params)))
    return found


def test_every_page_has_callbacks_to_fuzz(app: dash.Dash) -> None:
    """The discovery below finds each page's callbacks (a renamed module would silently fuzz nothing)."""
    counts = {name: len(_callbacks(name)) for name in PAGES}
    assert all(counts[name] >= 1 for name in PAGES), counts


@budget(60, 20)
@given(
    page=st.sampled_from(PAGES),
    query=st.dictionaries(
        st.sampled_from(
            [
                "run",
                "label",
                "layer",
                "expert",
                "prompt",
                "compare",
                "target",
                "control",
                "method",
                "metric",
                "top",
                "paths",
                "experts",
                "semantics",
                "value",
                "labels",
                "n",
                "text",
                "suite",
                "a",
                "b",
                "x",
            ]
        ),
        QUERY_VALUE,
        max_size=5,
    ),
)
@example(page="expert", query={"run": RUN, "layer": "99999999999999999999", "expert": "nan"})
@example(page="coactivation", query={"run": RUN, "top": "1e999", "layer": "-1"})
@example(page="lab", query={"run": RUN, "value": "nan", "n": "-5", "experts": "1,x,99"})
def test_any_address_renders(app: dash.Dash, page: str, query: dict[str, str]) -> None:
    with app.server.test_request_context():
        layout = _page(page)["layout"](**query)
    assert layout is not None and hasattr(layout, "to_plotly_json")


@budget(120, 20)
@given(
    page=st.sampled_from(PAGES),
    pick_=st.integers(0, 50),
    values=st.lists(CALLBACK_VALUE, min_size=8, max_size=8),
)
def test_any_callback_input_is_answered(app: dash.Dash, page: str, pick_: int, values: list[Any]) -> None:
    callbacks = _callbacks(page)
    _name, fn, arity = callbacks[pick_ % len(callbacks)]
    with app.server.test_request_context():
        try:
            fn(*values[:arity])
        except MissingCallbackContextException:
            pass  # reads which input fired (dash.ctx), which only a real request has: dispatch tests cover it


# -- the URL-state helpers -----------------------------------------------------------------------


@budget(200, 2)
@given(click=CLICK, source=st.sampled_from(["x", "customdata"]))
@example(click={"points": [{"x": 1, "y": math.nan}]}, source="x")
def test_clicked_expert(click: Any, source: str) -> None:
    """A click is a (layer, expert) pair of ints, or None: never an exception, whatever the browser sent."""
    cell = clicked_expert(click, source)
    assert cell is None or (isinstance(cell, tuple) and all(type(v) is int for v in cell))


@budget(200, 2)
@given(
    params=st.dictionaries(TEXT, st.one_of(st.none(), QUERY_VALUE, NUMBER), max_size=4),
    value=st.one_of(QUERY_VALUE, NUMBER, st.none()),
)
def test_query_helpers(params: dict[str, Any], value: Any) -> None:
    from urllib.parse import parse_qs

    query = query_string(**params)
    kept = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    assert {k: v[0] for k, v in parse_qs(query.lstrip("?"), keep_blank_values=True).items()} == kept
    number = to_int(value)
    assert number is None or type(number) is int
    href = expert_href(RUN, value, value)
    assert href.startswith("/expert?run=")
    assert pick(value, [{"value": 1}, {"value": 2}]) in (1, 2)


@budget(200, 2)
@given(
    semantics=st.one_of(st.sampled_from(["zero", "zero-renorm", "reroute", "force", "bias", "scale"]), TEXT),
    layer=st.one_of(st.none(), st.integers(-2, 10), QUERY_VALUE),  # a list or inf: test_infinite_numbers...
    experts=st.one_of(st.none(), st.lists(st.one_of(st.integers(-2, 10), QUERY_VALUE, NUMBER), max_size=3)),
    value=CALLBACK_VALUE,
)
@example(semantics="bias", layer=0, experts=[1], value="nan")  # a NaN bias was accepted
@example(semantics="scale", layer=0, experts=[1], value=math.inf)
def test_lab_spec_from_its_controls(semantics: str, layer: Any, experts: Any, value: Any) -> None:
    """The lab's controls become a spec or a ValueError the page shows (guarded), never another exception."""
    try:
        spec = make_spec(semantics, layer, experts, value)
    except ValueError as exc:  # InterventionSpecError is one
        assert str(exc)
        return
    for number in (getattr(spec, "delta", 0.0), getattr(spec, "s", 1.0)):
        assert math.isfinite(number)


# -- failures found in dashboards/, left to its owner -------------------------------------------


class _Errors(logging.Handler):
    """Collects the dashboard's "view failed" log lines: an internal error shown instead of a message."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize(
    ("page", "function", "inputs"),
    [
        pytest.param(
            "resonance", "update", [RUN, "code", "math", "rd", "__typed__"], id="resonance-cell-text"
        ),
        pytest.param("health", "open_card", ["20152897", RUN], id="health-click-text"),
        pytest.param("runs", "update", [{"a": 1.0}, "5"], id="runs-run-object"),
        pytest.param("specialisation", "labels_of", [{"a": 1}, "x"], id="specialisation-run-object"),
        pytest.param("expert", "update", [RUN, math.inf, 1], id="expert-layer-inf"),
    ],
)
def test_tampered_callback_inputs_get_a_message(
    app: dash.Dash, page: str, function: str, inputs: list[Any]
) -> None:
    """Inputs the fuzzing found that raised, or showed an internal error, in dashboards/: now a message or nothing."""
    fn = dict((name, f) for name, f, _ in _callbacks(page))[function]
    errors = _Errors()
    logging.getLogger("dashboards").addHandler(errors)
    try:
        with app.server.test_request_context():
            fn(*inputs)
    finally:
        logging.getLogger("dashboards").removeHandler(errors)
    assert not errors.lines, errors.lines


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: to_int(math.inf), id="to_int-inf"),
        pytest.param(lambda: make_spec("zero", math.inf, [1]), id="lab-layer-inf"),
        pytest.param(lambda: make_spec("zero", [], [1]), id="lab-layer-list"),
        pytest.param(lambda: clicked_expert({"points": [{"x": math.inf, "y": 1}]}), id="click-inf"),
        pytest.param(
            lambda: clicked_expert({"points": [{"y": 1, "customdata": []}]}, "customdata"), id="click-empty"
        ),
    ],
)
def test_infinite_numbers_are_refused_or_ignored(call: Any) -> None:
    """Infinities and odd shapes once raised OverflowError/TypeError/IndexError in dashboards/.

    Correct: ``to_int`` and ``clicked_expert`` give None, ``make_spec`` a ValueError the page shows.
    """
    try:
        call()
    except ValueError:
        pass
