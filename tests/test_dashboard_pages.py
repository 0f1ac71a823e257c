"""The app shell and the pages' pickers, on the synthetic run of ``test_dashboard.py``.

* The navigation bar is the page registry: its links are the registered pages, in their ``order``,
  with the names and paths their ``dash.register_page`` calls declare; a page registered later joins
  the navigation of the next app (and the run page's links) with no other edit.
* Every page draws its run, label and layer pickers with :mod:`dashboards.components.pickers`: the
  ids, defaults and "keep the choice the new run still offers" rules the pages' callbacks rely on.

The app is created once for the module (creating it imports the pages) and asked for its layout
once, which binds the pages' callbacks to it, as a first request does.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dash
import pytest
from dash import dcc, html
from test_dashboard import PLANT, RUN, _is_message, _text, dashboard_db

from dashboards import data
from dashboards.components.nav import nav_hrefs, nav_pages, navbar
from dashboards.components.pickers import (
    ALL,
    Choice,
    compare_choice,
    label_choice,
    layer_choice,
    run_choice,
)
from dashboards.views import runs as runs_view

pytestmark = pytest.mark.unit

PAGES_DIR = Path(__file__).resolve().parents[1] / "dashboards" / "pages"
NAV = [
    ("nav-runs", "/", "Runs"),
    ("nav-routing", "/routing", "Routing"),
    ("nav-specialisation", "/specialisation", "Specialisation"),
    ("nav-health", "/health", "Health"),
    ("nav-coactivation", "/coactivation", "Co-activation"),
    ("nav-resonance", "/resonance", "Resonance"),
    ("nav-expert", "/expert", "Expert card"),
    ("nav-lab", "/lab", "Lab"),
    ("nav-circuits", "/circuits", "Circuits"),
]
"""The navigation bar as the pages declare it today: (link id, path, text), in order."""


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    data.clear_cache()
    return str(dashboard_db(tmp_path_factory.mktemp("dash-pages") / "dash.duckdb"))


def _get(app: dash.Dash, url: str) -> Any:
    """The JSON the app answers ``url`` with.

    In a context of its own: Dash sets its current-app context variable in the caller's context on
    each request, which would make ``dash.get_app()`` return this app in later tests of this thread.
    """
    response = contextvars.copy_context().run(app.server.test_client().get, url)
    assert response.status_code == 200
    return response.get_json()


def _served_layout(app: dash.Dash) -> dict[str, Any]:
    """The app's layout as the browser gets it (the first request also binds the pages' callbacks)."""
    layout: dict[str, Any] = _get(app, "/_dash-layout")
    return layout


def _served_nav(app: dash.Dash) -> list[tuple[str, str, str]]:
    """(id, href, text) of the served navigation bar's links."""
    (nav,) = [c for c in _served_layout(app)["props"]["children"] if c["type"] == "Nav"]
    links = [c["props"] for c in nav["props"]["children"] if c["type"] == "Link"]
    return [(p["id"], p["href"], p["children"]) for p in links]


@pytest.fixture(scope="module")
def app(db: str) -> Iterator[dash.Dash]:
    from dashboards.app import create_app

    created = create_app(db)
    served = _served_nav(created)  # binds the callbacks to this app, as a first request does
    assert served
    yield created
    created.server.config["WORKBENCH_CLEANUP"]()
    data.clear_cache()


def _walk(component: Any) -> Iterator[Any]:
    """Every component of a layout tree."""
    stack = [component]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
            continue
        yield item
        children = getattr(item, "children", None)
        if children is not None and not isinstance(children, str):
            stack.append(children)


def _by_id(component: Any) -> dict[str, Any]:
    """Every component with an id in a layout tree, by id."""
    return {c.id: c for c in _walk(component) if getattr(c, "id", None) is not None}


def _layout(app: dash.Dash, page: str, **query: str) -> dict[str, Any]:
    """A page's layout for ``query`` (as its address would render it), its components by id."""
    module = dash.page_registry[f"dashboards.pages.{page}"]
    with app.server.test_request_context():
        return _by_id(module["layout"](**query))


def _values(dropdown: dcc.Dropdown) -> list[Any]:
    return [o["value"] for o in dropdown.options]


def _clearable(dropdown: dcc.Dropdown) -> bool:
    """Whether the user can clear the dropdown (Dash's default when the prop is not set)."""
    return bool(dropdown.to_plotly_json()["props"].get("clearable", True))


# -- navigation ----------------------------------------------------------------------------------
def test_nav_is_the_page_registry(app: dash.Dash) -> None:
    registry = list(dash.page_registry.values())
    from_registry = [(f"nav-{p['module'].rsplit('.', 1)[-1]}", p["path"], p["name"]) for p in registry]
    assert _served_nav(app) == from_registry == NAV
    orders = [p["order"] for p in registry]
    assert orders == sorted(orders)  # declared once, in each page's register_page call
    modules = {p["module"].rsplit(".", 1)[-1] for p in registry}
    assert modules == {f.stem for f in PAGES_DIR.glob("*.py") if not f.name.startswith("_")}
    # The app's one navigation callback writes every link (and only them) from the chosen run.
    deps = _get(app, "/_dash-dependencies")
    (nav_callback,) = [d for d in deps if d["inputs"] == [{"id": "wb-run", "property": "data"}]]
    assert nav_callback["output"].strip(".").split("...") == [f"{i}.href" for i, _, _ in NAV]
    pages = nav_pages()
    assert nav_hrefs(pages, "r 1")[:2] == ["/?run=r+1", "/routing?run=r+1"]
    assert nav_hrefs(pages, None) == [path for _, path, _ in NAV]


# -- the shared pickers ------------------------------------------------------------------------
def test_choices_keep_what_is_offered_and_fall_back_to_the_default(db: str, tmp_path: Path) -> None:
    runs = run_choice(db)
    assert runs.value == RUN and runs.problem is None and [o["value"] for o in runs.options] == [RUN]
    assert run_choice(db, "no-such-run").value == RUN  # an unknown run: the newest one
    missing = run_choice(str(tmp_path / "nope.duckdb"), RUN)
    assert missing.options == [] and missing.value is None and _is_message(missing.problem)
    labels = label_choice(db, RUN)
    assert labels.options[0] == {"label": "all labels", "value": ALL} and labels.value == ALL
    assert label_choice(db, RUN, "math", with_all=False).value == "math"
    assert label_choice(db, RUN, "nope", with_all=False).value == "code"
    typed = {"label": "typed", "value": "__typed__"}
    led = label_choice(db, RUN, None, with_all=False, lead=[typed])
    assert led.options[:2] == [typed, {"label": "code", "value": "code"}] and led.value == "__typed__"
    assert layer_choice(db, RUN, "1").value == 1 and layer_choice(db, RUN, 9).value == 0
    assert layer_choice(db, None, 1) == Choice()
    alone = compare_choice(db, RUN, RUN)  # the store's only run has nothing to be compared with
    assert alone.options == [] and alone.value is None and alone.problem is None
    pair = Choice([{"label": "a", "value": "a"}, {"label": "b", "value": "b"}])
    assert pair.keep("b").value == "b" and pair.keep("z", "a").value == "a" and pair.keep("z").value is None
    assert pair.pick("z", 1).update() == (pair.options, "b")
    drop = pair.pick("a").dropdown("x-pick")
    assert (drop.id, drop.value, _clearable(drop), drop.className) == ("x-pick", "a", False, "wb-pick")
    wide = pair.dropdown("y-pick", clearable=True, class_name=None, placeholder="p")
    assert _clearable(wide) and wide.placeholder == "p"
    assert "className" not in wide.to_plotly_json()["props"]


RUN_PICKERS = {
    "runs": "runs-run", "routing": "routing-run", "specialisation": "spec-run", "health": "health-run",
    "coactivation": "coact-run", "resonance": "res-run", "expert": "expert-run", "lab": "lab-run",
}  # fmt: skip


def test_every_page_draws_its_pickers_with_their_ids_and_defaults(app: dash.Dash, db: str) -> None:
    from dashboards.views import coactivation, lab

    for page, picker in RUN_PICKERS.items():
        found = _layout(app, page, run="no-such-run")[picker]
        assert found.value == RUN and _values(found) == [RUN], page  # an unknown run: the newest
        assert _clearable(found) is (page == "lab"), page
    runs = _layout(app, "runs", run=RUN, compare=RUN)
    assert "className" not in runs["runs-run"].to_plotly_json()["props"]  # full width
    assert runs["runs-compare"].options == [] and runs["runs-compare"].value is None
    assert "No other run shares a prompt with" in _text(runs["runs-compare-note"])

    routing = _layout(app, "routing", run=RUN)
    assert routing["routing-label"].value == ALL and routing["routing-layer"].value == 0
    assert len(routing["routing-prompt"].options) == 24 and _clearable(routing["routing-prompt"])
    second = _values(_layout(app, "routing", run=RUN, label="math")["routing-prompt"])[1]
    routing = _layout(app, "routing", run=RUN, label="math", layer="1", prompt=str(second))
    assert (routing["routing-label"].value, routing["routing-prompt"].value, routing["routing-layer"].value) == (
        "math", second, 1,
    )  # fmt: skip

    spec = _layout(app, "specialisation", run=RUN)
    assert _values(spec["spec-label"]) == ["code", "math", "prose"] and spec["spec-label"].value == "code"
    assert _layout(app, "specialisation", run=RUN, label="prose")["spec-label"].value == "prose"
    for page, picker in (("specialisation", "spec-segment"), ("health", "health-segment")):
        asked = _layout(app, page, run=RUN, segment="response")[picker]  # a run without responses
        assert (_values(asked), asked.value) == (["all", "prompt"], "all"), page
        assert _layout(app, page, run=RUN, segment="prompt")[picker].value == "prompt", page

    coact = _layout(app, "coactivation", run=RUN)
    assert (
        coact["coact-layer"].value == coactivation.default_layer(db, RUN)
        and coact["coact-metric"].value == "lift"
    )
    coact = _layout(app, "coactivation", run=RUN, layer="1", metric="count")
    assert (coact["coact-layer"].value, coact["coact-metric"].value) == (1, "count")

    res = _layout(app, "resonance", run=RUN)
    assert (res["res-target"].value, res["res-control"].value) == ("code", "math")  # the run's contrast set
    res = _layout(app, "resonance", run=RUN, target="prose", control="nope", method="nope")
    assert (res["res-target"].value, res["res-control"].value) == ("prose", "math")
    assert res["res-method"].value == _values(res["res-method"])[0]

    card = _layout(app, "expert", run=RUN, layer=str(PLANT[0]), expert=str(PLANT[1]))
    assert (card["expert-layer"].value, card["expert-expert"].value) == PLANT
    assert _layout(app, "expert", run=RUN, layer="7")["expert-layer"].value == 0

    bench = _layout(app, "lab", run=RUN)
    assert _values(bench["lab-labels"]) == [lab.TYPED, "code", "math", "prose"]
    assert (
        bench["lab-labels"].value == lab.TYPED
        and bench["lab-semantics"].value == _values(bench["lab-semantics"])[2]
    )
    assert (bench["lab-text"].disabled, bench["lab-n"].disabled) == (False, True)  # the typed prompt: its box
    on_label = _layout(app, "lab", run=RUN, labels="math")
    assert on_label["lab-labels"].value == "math"
    assert (on_label["lab-text"].disabled, on_label["lab-n"].disabled) == (True, False)  # a label: its count


def test_pickers_follow_the_run_in_the_pages_callbacks(app: dash.Dash, db: str) -> None:
    import importlib

    page = {name: importlib.import_module(f"dashboards.pages.{name}") for name in RUN_PICKERS}
    with app.server.test_request_context():
        assert page["specialisation"].labels_of(RUN, "nope") == (
            label_choice(db, RUN, with_all=False).options,
            "code",
        )
        labels, label, prompts, prompt, layers, layer = page["routing"].options(RUN, "math", None, 1)
        assert (label, len(prompts), prompt, layer) == ("math", 8, prompts[0]["value"], 1)
        assert page["routing"].options(None, "math", 3, 1) == ([labels[0]], ALL, [], None, [], None)
        from dashboards.views.coactivation import default_layer

        # a layer the run lacks (or none): the layer the figures draw, never a blank picker
        assert page["coactivation"].layers_of(RUN, 5)[1] == default_layer(db, RUN) is not None
        assert page["coactivation"].layers_of(RUN, None)[1] == default_layer(db, RUN)
        assert (
            page["coactivation"].layers_of(RUN, 1)[1] == 1 and page["coactivation"].layers_of(RUN, 0)[1] == 0
        )
        assert page["expert"].layers_of(RUN) == layers
        assert page["resonance"].labels_of(RUN, "prose", "code")[1::2] == ("prose", "code")
        assert page["resonance"].labels_of(RUN, None, "nope")[1::2] == ("code", "math")
        assert [o["value"] for o in page["lab"].labels_of(RUN)][1:] == ["code", "math", "prose"]
        assert page["lab"].typed_only("math") == (True, False)
        assert page["lab"].typed_only(page["lab"].view.TYPED) == (False, True)
        assert page["lab"].query(RUN, 0, [1, 3], "zero", None, "code", 8, "x") == (
            f"?run={RUN}&layer=0&experts=1%2C3&semantics=zero&labels=code&n=8"
        )
        assert "experts" not in page["lab"].query(RUN, 0, 0.5, "zero", None, "code", 8, None)  # not a list
        options, keep, note = page["runs"].update_compare(RUN, "other")
        assert options == [] and keep is None and "No other run shares a prompt" in _text(note)


def test_the_coactivation_layer_picker_names_the_layer_drawn(app: dash.Dash, db: str) -> None:
    """The picker was blank while the default layer was still being computed and then drawn: now the
    picker and the figures agree at every step (both waiting, then both the default layer)."""
    from dashboards.pages import coactivation as page
    from dashboards.views.coactivation import default_layer

    data.clear_cache()
    with app.server.test_request_context():
        with data.nonblocking() as pending:
            options, shown, *_, matrix_msg = page.update(RUN, None, "lift", None, None, None)[:5]
        assert [o["value"] for o in options] == [0, 1]
        assert pending and shown is None and "computing coactivation" in _text(matrix_msg)
        data.clear_cache()  # (not waiting for the background workers: they start slowly on a busy machine)
        data.analysis(db, RUN, "coactivation")  # computed here, blocking: now the table is ready
        with data.nonblocking():
            out = page.update(RUN, None, "lift", None, None, None)
    expected = default_layer(db, RUN)
    shown, matrix, network = out[1], out[2], out[5]
    assert shown == expected is not None
    assert (
        f"layer {expected}" in matrix.layout.title.text and f"layer {expected}" in network.layout.title.text
    )
    assert out[11] == f"?run={RUN}&layer={expected}"  # the address names it too


def test_the_resonance_page_shows_a_stored_map_with_its_own_contrast(app: dash.Dash, db: str) -> None:
    from dashboards.pages import resonance as page
    from dashboards.views.resonance import LIVE

    map_id = data.stored_resonance(db, RUN)["map_id"][0]
    with app.server.test_request_context():
        options, value = page.maps_of(RUN)
        assert [o["value"] for o in options] == [LIVE, map_id] and value == LIVE
        assert page.maps_choice(db, RUN, map_id).value == map_id
        assert page.maps_choice(db, RUN, "rm-of-another-run").value == LIVE
        laid = _by_id(page.layout(run=RUN, span="last:2", map=map_id))
        assert laid["res-span"].value == "last:2" and laid["res-map"].value == map_id
        # a stored map: drawn with its own labels (here prose vs code are ignored), pickers disabled
        fig, _, note, tokens, *fixed, query = page.update(RUN, "prose", "code", "rd", [1, 5], "", map_id)
        assert map_id in fig.layout.title.text and note is None and fixed == [True] * 5
        assert "on 'code' vs 'math'" in _text(tokens)
        assert query == f"?run={RUN}&target=prose&control=code&method=rd&map={map_id}&layer=1&expert=5"
        fig, _, _, _, *fixed, query = page.update(RUN, "code", "math", "ftri", None, "first:3", LIVE)
        assert fixed == [False] * 5 and fig.layout.title.text.endswith("span first:3")
        assert query == f"?run={RUN}&target=code&control=math&method=ftri&span=first%3A3"


def test_a_registered_page_joins_the_nav(app: dash.Dash, db: str) -> None:
    from dashboards.app import create_app

    module = "dashboards.pages.extra_page"
    dash.register_page(module, path="/extra", name="Extra", order=4.5, layout=html.Div("extra"))
    second = None
    try:
        pages = nav_pages()
        assert [p.link_id for p in pages].index("nav-extra_page") == 5  # between Co-activation and Resonance
        links = [c for c in navbar(pages).children if isinstance(c, dcc.Link)]
        assert [(c.id, c.href, c.children) for c in links][5] == ("nav-extra_page", "/extra", "Extra")
        second = create_app(db)  # a new app over the same pages: the page is in its navigation bar
        served = _served_nav(second)
        assert served == [*NAV[:5], ("nav-extra_page", "/extra", "Extra"), *NAV[5:]]
        with second.server.test_request_context():
            detail = runs_view.run_detail(db, RUN)
        hrefs = [c.href for c in _walk(detail) if isinstance(c, dcc.Link)]
        assert (
            f"/extra?run={RUN}" in hrefs and f"/?run={RUN}" not in hrefs
        )  # the run page links to the others
    finally:
        dash.page_registry.pop(module, None)
        if second is not None:
            second.server.config["WORKBENCH_CLEANUP"]()
    assert "nav-extra_page" not in [p.link_id for p in nav_pages()]
