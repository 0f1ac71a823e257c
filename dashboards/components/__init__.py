"""Shared dashboard pieces: messages, tables, figures, URL state and the error guard.

Submodules: ``nav`` (the navigation bar, from the page registry), ``pickers`` (the run, label,
layer and compare-run choices every page starts with), ``url`` (the address bar) and ``pending``
(polling for results computed in the background).
"""

from dashboards.components.common import (
    choices,
    expert_href,
    figure,
    fill,
    guarded,
    message,
    of_segment,
    query_string,
    slot,
    table,
    to_float,
    to_int,
)

__all__ = [
    "choices",
    "expert_href",
    "figure",
    "fill",
    "guarded",
    "message",
    "of_segment",
    "query_string",
    "slot",
    "table",
    "to_float",
    "to_int",
]
