"""The shared pieces of the named queries: layer filters from an allow-list, the labelled-prompt
restriction, token spans as users write them, and a row count.

Part of :mod:`workbench.store.queries` (its docstring gives the rules every query keeps).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    from workbench.store.backend import Store


#: Layer columns a filter may name (table aliases used by the queries below); anything else is refused.
LAYER_COLUMNS = frozenset({"layer", "r.layer", "s.layer", "a.layer", "u.layer"})

#: Restricts a ``routing``/``expert_stats`` row (unaliased ``prompt_id``) to labelled prompts; parameter: run id.
LABELLED = "prompt_id IN (SELECT prompt_id FROM prompts WHERE run_id = ? AND label IS NOT NULL)"

#: The grammar of a token span, as users write it (CLI ``--span``, the dashboard, the notebook).
SPAN_HELP = "all | last:N | first:N | positions:A-B"


def in_layers(layers: Iterable[int] | None, column: str = "layer") -> tuple[str, list[int]]:
    """An ``AND column IN (?, ...)`` clause and its parameters; empty for all layers, FALSE for none."""
    if column not in LAYER_COLUMNS:
        raise ValueError(f"layer column {column!r} is not one of {sorted(LAYER_COLUMNS)}")
    if layers is None:
        return "", []
    values = [int(x) for x in layers]
    if not values:
        return " AND FALSE", []
    return f" AND {column} IN ({', '.join('?' for _ in values)})", values


@dataclass(frozen=True)
class TokenSpan:
    """Which positions of each prompt count: ``all``, the ``first``/``last`` ``n``, or ``positions`` lo..hi.

    :meth:`parse` reads the user grammar :data:`SPAN_HELP`; :meth:`condition` is the SQL
    condition on a routing row ``r`` joined to its prompt ``p``, with its parameters.
    """

    kind: Literal["all", "first", "last", "positions"] = "all"
    lo: int = 0
    hi: int = 0

    @classmethod
    def parse(cls, span: str | None) -> TokenSpan:
        """``None``/``"all"``, ``"last:N"``, ``"first:N"`` or ``"positions:A-B"``; ``ValueError`` otherwise."""
        if span is None or span == "all":
            return cls()
        match = re.fullmatch(r"(last|first):(\d+)|positions:(\d+)-(\d+)", span.strip())
        if match is None:
            raise ValueError(f"span {span!r} not understood; use {SPAN_HELP}")
        if match.group(1) in ("last", "first"):
            return cls(match.group(1), hi=int(match.group(2)))  # type: ignore[arg-type]
        lo, hi = int(match.group(3)), int(match.group(4))
        if hi < lo:
            raise ValueError(f"span {span!r}: the end position is before the start")
        return cls("positions", lo, hi)

    def condition(self, segmented: bool = False) -> tuple[str, list[int]]:
        """SQL condition on ``r.position`` (and ``p.n_tokens`` for ``last``) and its parameters.

        ``segmented``: the prompts are a segment view's (:mod:`workbench.store.segments`), whose
        ``p.seg_start`` is where the segment starts; positions then count from there, so ``first:5`` of
        the response segment is the first five generated tokens.
        """
        start = "p.seg_start + " if segmented else ""
        if self.kind == "last":
            return f"r.position >= {start}p.n_tokens - ?", [self.hi]
        if self.kind == "first":
            return f"r.position < {start}?", [self.hi]
        if self.kind == "positions":
            return f"r.position BETWEEN {start}? AND {start}?", [self.lo, self.hi]
        return "TRUE", []


def count_rows(store: Store, sql: str, params: list[Any]) -> int:
    """The single ``n`` of a ``SELECT count(*) AS n`` query."""
    return int(store.sql(sql, params)["n"][0])
