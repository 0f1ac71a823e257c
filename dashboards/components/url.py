"""URL state: each page keeps its choices in the address bar so every view can be shared.

A page's callback returns its query string (``?run=R&label=code``) into a ``<page>-query``
store; a small clientside callback writes it into the address with ``history.replaceState``
(no reload, no re-render) and passes the run on to ``wb-run``, which keeps the navigation
links pointing at the same run. Loading an address renders the page with its query
parameters (Dash pages hand them to ``layout(**params)``). Clicks that open another view
(a heatmap cell → the expert card) set the ``<page>-nav`` Location, which navigates inside
the app without reloading it.
"""

from __future__ import annotations

from typing import Any

from dash import Input, Output, clientside_callback, dcc, html

__all__ = ["RUN_STORE", "clicked_expert", "register_url_sync", "url_components"]

RUN_STORE = "wb-run"
"""Id of the app-level store holding the run the user is looking at (drives the nav links)."""

_SYNC_JS = """
function(query) {
    if (typeof query !== 'string') { return window.dash_clientside.no_update; }
    var target = window.location.pathname + query;
    if (target !== window.location.pathname + window.location.search) {
        window.history.replaceState(window.history.state, '', target);
    }
    var run = new URLSearchParams(query).get('run');
    return run === null ? window.dash_clientside.no_update : run;
}
"""


def url_components(page: str) -> list[Any]:
    """The hidden parts of a page's URL state: its query store and its navigation Location."""
    return [
        dcc.Store(id=f"{page}-query"),
        dcc.Location(id=f"{page}-nav", refresh="callback-nav"),
        html.Div(id=f"{page}-sync", hidden=True),
    ]


def register_url_sync(page: str) -> None:
    """Register the clientside callback that mirrors ``<page>-query`` into the address bar."""
    clientside_callback(
        _SYNC_JS,
        Output(RUN_STORE, "data", allow_duplicate=True),
        Input(f"{page}-query", "data"),
        prevent_initial_call=True,
    )


def clicked_expert(click: dict[str, Any] | None, expert_from: str = "x") -> tuple[int, int] | None:
    """(layer, expert) of a heatmap click: layer is the y value; expert the x value or ``customdata[0]``.

    Layer × expert heatmaps have the expert on x; views whose x is something else (token
    positions, partner experts) put the expert in ``customdata`` and pass ``"customdata"``.
    None when there is no usable click (no points, a gap cell).
    """
    if not click or not click.get("points"):
        return None
    point = click["points"][0]
    try:
        layer = int(point["y"])
        if expert_from == "customdata":
            custom = point.get("customdata")
            value = custom[0] if isinstance(custom, list) else custom
            return layer, int(value)
        return layer, int(point["x"])
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):  # a gap, an empty list, inf
        return None
