"""Shared dashboard pieces: messages, tables, figures, URL state and the error guard."""

from dashboards.components.common import (
    choices,
    expert_href,
    figure,
    fill,
    guarded,
    message,
    query_string,
    slot,
    table,
    to_int,
)

__all__ = [
    "choices",
    "expert_href",
    "figure",
    "fill",
    "guarded",
    "message",
    "query_string",
    "slot",
    "table",
    "to_int",
]
