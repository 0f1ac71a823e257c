"""Building blocks every page uses, so pages look alike and fail alike.

* :func:`message` — the explanatory box shown instead of a figure when data is missing or a
  choice is invalid (a page never shows a traceback);
* :func:`guarded` — runs a view function and turns the errors a user can cause or meet
  (unknown run, locked store, an analysis that needs what the run lacks) into a message;
* :func:`table` / :func:`figure` — a DataTable from a polars frame (numbers right-aligned, text
  left), a Graph from a figure (every figure shown gets the workbench plotly template,
  :mod:`workbench.plots.theme`, whoever built it);
* :func:`query_string` / :func:`expert_href` / :func:`to_int` / :func:`to_float` — the URL state: every view is
  described by its query string, so any view can be shared by copying the address.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

import duckdb
import plotly.graph_objects as go
import polars as pl
from dash import dcc, html
from dash.dash_table.DataTable import DataTable

from workbench.plots.theme import themed
from workbench.store import StoreError

__all__ = [
    "choices",
    "expert_href",
    "figure",
    "fill",
    "guarded",
    "is_pending",
    "message",
    "query_string",
    "slot",
    "table",
    "to_float",
    "to_int",
]

log = logging.getLogger("dashboards")
T = TypeVar("T")


def message(text: str, kind: str = "info") -> html.Div:
    """An explanatory box (``kind``: info, warning, error, pending) in place of missing content."""
    return html.Div(text, className=f"wb-message wb-{kind}", role="status")


def guarded(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | html.Div:
    """``fn(*args, **kwargs)``, or a :func:`message` saying why it could not be shown.

    A result still being computed in the background (``dashboards.data.Pending``) becomes a
    "computing … for run R…" placeholder (class ``wb-pending``), which the page's poller replaces.

    Expected failures (a missing or locked store, an unknown run, an analysis the run cannot
    support — they raise ``StoreError``/``ValueError``/``LookupError``) become a warning with
    the library's own explanation. Anything else is a bug: it is logged with its traceback
    on the server and the page shows a short error instead of the traceback.
    """
    from dashboards.data import Pending

    try:
        return fn(*args, **kwargs)
    except Pending as exc:  # computed in the background; the page polls until it is there
        return message(str(exc), "pending")
    except (StoreError, ValueError, LookupError) as exc:
        return message(str(exc), "warning")
    except duckdb.Error as exc:
        return message(f"the store could not answer: {exc}", "error")
    except Exception as exc:  # the UI boundary: log it, never show a traceback
        log.exception("dashboard view %s failed", getattr(fn, "__name__", fn))
        return message(
            f"internal error in {getattr(fn, '__name__', 'view')}: {exc} (details in the server log)", "error"
        )


def is_pending(component: Any) -> bool:
    """Whether ``component`` is the placeholder :func:`guarded` shows for a result still being computed."""
    return isinstance(component, html.Div) and "wb-pending" in str(getattr(component, "className", "") or "")


def to_int(value: Any) -> int | None:
    """``value`` as an int (from a query string or a dropdown), or None when absent or not a number."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        return None


def to_float(value: Any) -> float | None:
    """``value`` as a finite float (a query string, a number input), or None: absent, not a number, NaN or ±inf."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def query_string(**params: Any) -> str:
    """``?a=1&b=x`` of the parameters that are set (None and "" are left out), URL-encoded."""
    kept = {k: v for k, v in params.items() if v is not None and v != ""}
    return f"?{urlencode(kept)}" if kept else ""


def expert_href(run: str | None, layer: Any, expert: Any) -> str:
    """The expert card's address for (``layer``, ``expert``) of ``run``."""
    return "/expert" + query_string(run=run, layer=to_int(layer), expert=to_int(expert))


def _cell(value: Any) -> Any:
    """A table cell: floats rounded for reading, lists joined, everything else as is."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(_cell(v)) for v in value)
    return value


def table(
    df: pl.DataFrame,
    table_id: str | None = None,
    columns: Sequence[str] | None = None,
    page_size: int = 15,
    empty: str = "no rows",
) -> DataTable | html.Div:
    """A sortable, filterable DataTable of ``df`` (``columns`` to pick and order), or a message if empty.

    Numeric columns are right-aligned (digits line up), every other column left-aligned (text reads
    from its start).
    """
    if df.height == 0:
        return message(empty)
    shown = df.select(list(columns)) if columns else df
    numeric = [name for name, dtype in shown.schema.items() if dtype.is_numeric()]
    records = [{k: _cell(v) for k, v in row.items()} for row in shown.iter_rows(named=True)]
    kwargs: dict[str, Any] = {"id": table_id} if table_id else {}
    kwargs["data"] = records  # cells are str/number/bool/None; the stub's Sequence[dict] is narrower
    return DataTable(
        columns=[{"name": c, "id": c} for c in shown.columns],
        page_size=page_size,
        sort_action="native",
        filter_action="native" if shown.height > page_size else "none",
        style_table={"overflowX": "auto"},
        style_cell={
            "fontFamily": "monospace",
            "fontSize": "12px",
            "padding": "2px 6px",
            "textAlign": "left",
        },
        style_cell_conditional=[{"if": {"column_id": name}, "textAlign": "right"} for name in numeric],
        style_header={"fontWeight": "bold"},
        **kwargs,
    )


def figure(fig: go.Figure, graph_id: str | None = None, height: int | None = None) -> dcc.Graph:
    """A Graph of ``fig`` in the workbench template (``graph_id`` when a callback listens to its clicks)."""
    themed(fig)
    if height is not None:
        fig.update_layout(height=height)
    kwargs: dict[str, Any] = {"id": graph_id} if graph_id else {}
    return dcc.Graph(figure=fig, config={"displaylogo": False}, **kwargs)


def of_segment(fig: go.Figure, segment: str | None) -> go.Figure:
    """``fig`` with ``, <segment> tokens`` after its title when it was drawn from one segment (prompt or
    response), so a figure never passes for one of every token; as it is for all tokens (None or ``all``)."""
    if segment in (None, "all"):
        return fig
    title = fig.layout.title.text
    return fig.update_layout(title=f"{title}, {segment} tokens" if title else f"{segment} tokens")


HIDDEN = {"display": "none"}


def slot(graph_id: str) -> html.Div:
    """A figure slot: a Graph (hidden until filled) and a message area, both with fixed ids.

    The Graph is part of the page layout from the start, so callbacks may listen to its
    clicks; :func:`fill` either shows a figure in it or hides it and shows a message.
    """
    return html.Div(
        [
            dcc.Graph(id=graph_id, figure=themed(go.Figure()), style=HIDDEN, config={"displaylogo": False}),
            html.Div(id=f"{graph_id}-msg"),
        ],
        className="wb-slot",
    )


def fill(fn: Callable[..., go.Figure], *args: Any, **kwargs: Any) -> tuple[go.Figure, dict[str, str], Any]:
    """(figure, graph style, message) for a :func:`slot`: the figure ``fn`` draws (in the workbench
    template), or why there is none."""
    result = guarded(fn, *args, **kwargs)
    if isinstance(result, go.Figure):
        return themed(result), {}, None
    return themed(go.Figure()), HIDDEN, result


def choices(fn: Callable[..., list[dict[str, Any]]], *args: Any) -> tuple[list[dict[str, Any]], Any]:
    """(dropdown options, message): the options ``fn`` lists, or none and why (the controls stay in place)."""
    result = guarded(fn, *args)
    if isinstance(result, list):
        return result, None
    return [], result
