"""Polling for results computed in the background, so that no callback waits for an analysis.

A page whose callback shows analyses puts :func:`poller` (a disabled ``dcc.Interval`` and two
small stores) in its layout, registers its main callback through :func:`polled` with
:func:`poll_outputs` last among its outputs and :func:`poll_input` last among its inputs, and calls
:func:`register_poll`. Then:

1. the main callback runs its views in :func:`dashboards.data.nonblocking` mode: a table not yet
   computed starts computing in the background and its slot shows "computing <analysis> for run
   R…"; the callback returns the pending computations' tokens and switches the interval on;
2. each tick runs only the tiny poll callback, which asks the data layer whether any of those
   computations has finished (no rendering, a few ms);
3. when one has, the poll callback bumps ``<page>-ready``, an input of the main callback, which
   renders again (finished tables now come from the cache) — and, with nothing left pending,
   switches the interval off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dash
from dash import Input, Output, State, callback, dcc

from dashboards import data

__all__ = ["POLL_MS", "poll_input", "poll_outputs", "polled", "poller", "register_poll"]

POLL_MS = 300
"""How often a page with pending results asks whether any has finished."""


def poller(page: str) -> list[Any]:
    """The page's polling parts: the interval (off until something is pending) and its two stores."""
    return [
        dcc.Interval(id=f"{page}-poll", interval=POLL_MS, disabled=True),
        dcc.Store(id=f"{page}-pending"),
        dcc.Store(id=f"{page}-ready"),
    ]


def poll_input(page: str) -> Input:
    """The extra, last input of a :func:`polled` callback: "something you waited for is ready"."""
    return Input(f"{page}-ready", "data")


def poll_outputs(page: str) -> list[Output]:
    """The extra, last outputs of a :func:`polled` callback: the pending tokens, and whether the interval is off."""
    return [Output(f"{page}-pending", "data"), Output(f"{page}-poll", "disabled")]


def polled(fn: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
    """``fn`` as a non-blocking callback: takes the ready signal last; returns (pending tokens, interval off) last."""

    def main(*args: Any) -> tuple[Any, ...]:
        with data.nonblocking() as pending:
            out = fn(*args[:-1])
        return (*out, pending or None, not pending)

    # not functools.wraps: its __wrapped__ would show Dash fn's signature, one input short
    main.__name__ = getattr(fn, "__name__", "polled")
    main.__doc__ = fn.__doc__
    return main


def check(n_intervals: int | None, tokens: list[str] | None) -> tuple[Any, Any]:
    """A tick: (new ready signal, cleared tokens) once any pending computation has finished, else no update."""
    if not tokens or not data.any_ready(tokens):
        return dash.no_update, dash.no_update
    return n_intervals, None


def register_poll(page: str) -> None:
    """Register the page's tick callback (:func:`check`)."""
    callback(
        Output(f"{page}-ready", "data"),
        Output(f"{page}-pending", "data", allow_duplicate=True),
        Input(f"{page}-poll", "n_intervals"),
        State(f"{page}-pending", "data"),
        prevent_initial_call=True,
    )(check)
