"""Reading one segment of the tokens: the prompt the model read, or the response it generated.

``tokens.segment`` (schema v6) is ``'prompt'`` for a token read from a prompt and ``'response'`` for
one ``capture --generate`` generated. A *segment view* of a store (:meth:`Store.segment_view`) is the
same store on its own DuckDB cursor, on which temporary views of the same names shadow four tables:

* ``tokens``: only the segment's tokens;
* ``routing`` and ``expert_stats``: only the rows at those tokens' positions;
* ``prompts``: only the prompts with a token in the segment, ``n_tokens`` counting those tokens,
  and one more column, ``seg_start``, the segment's first position (token spans count from there:
  :class:`~workbench.store.queries.filters.TokenSpan`).

So every query, reader and analysis that reads these names through the view reads the segment
alone, with no change of its own. The per-prompt summaries sum over all of a prompt's tokens, so
a segment view never answers from them (:func:`workbench.store.summaries.usable` is False on it):
the analyses read the token rows (same definitions, slower on very large runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import duckdb

from workbench.store.sqlutil import first

if TYPE_CHECKING:
    from workbench.store.backend import Store

__all__ = [
    "SEGMENTS",
    "SEGMENT_CHOICES",
    "SEGMENT_HELP",
    "attach_segment_views",
    "check_segment",
    "parse_segment",
    "segment_counts",
    "segment_scope",
]

#: The values of ``tokens.segment``.
SEGMENTS: tuple[str, ...] = ("prompt", "response")

#: What a ``--segment`` option accepts: a segment, or ``all`` (no filter).
SEGMENT_CHOICES: tuple[str, ...] = (*SEGMENTS, "all")

SEGMENT_HELP = (
    "Which tokens to read: prompt (the text the model was given), response (what capture --generate "
    "generated) or all (default)."
)


def parse_segment(value: str | None) -> str | None:
    """``value`` as a segment to filter on, None for every token (``None`` or ``"all"``); ValueError otherwise."""
    if value is None or value == "all":
        return None
    if value not in SEGMENTS:
        raise ValueError(f"segment must be one of {', '.join(SEGMENT_CHOICES)}, got {value!r}")
    return value


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def attach_segment_views(con: duckdb.DuckDBPyConnection, segment: str) -> None:
    """Shadow ``tokens``, ``routing``, ``expert_stats`` and ``prompts`` on ``con`` with their ``segment`` rows.

    ``con`` must be a connection of its own (a cursor): temporary views belong to it alone.
    ``segment`` is one of :data:`SEGMENTS` (checked), the only value spliced into the views.
    """
    if segment not in SEGMENTS:
        raise ValueError(f"segment must be one of {', '.join(SEGMENTS)}, got {segment!r}")
    row = first(con, "SELECT current_database()")
    main = f"{_quoted(str(row[0] if row else 'memory'))}.main"
    keep = f"segment = '{segment}'"
    positions = f"SELECT run_id, prompt_id, position FROM {main}.tokens WHERE {keep}"
    at_positions = (
        f" SEMI JOIN ({positions}) k ON k.run_id = x.run_id AND k.prompt_id = x.prompt_id"
        " AND k.position = x.position"
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW tokens AS SELECT * FROM {main}.tokens WHERE {keep}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW routing AS SELECT x.* FROM {main}.routing x{at_positions}")
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW expert_stats AS SELECT x.* FROM {main}.expert_stats x{at_positions}"
    )
    con.execute(
        "CREATE OR REPLACE TEMP VIEW prompts AS SELECT p.* REPLACE (s.n AS n_tokens), s.seg_start"
        f" FROM {main}.prompts p JOIN (SELECT run_id, prompt_id, count(*) AS n, min(position) AS seg_start"
        f" FROM {main}.tokens WHERE {keep} GROUP BY run_id, prompt_id) s"
        " ON s.run_id = p.run_id AND s.prompt_id = p.prompt_id"
    )


def segment_counts(store: Store, run_id: str) -> dict[str, int]:
    """Tokens per segment of the run (segments it lacks are left out)."""
    frame = store.sql(
        "SELECT segment, count(*) AS n FROM tokens WHERE run_id = ? GROUP BY segment ORDER BY segment",
        [run_id],
    )
    return {str(s): int(n) for s, n in frame.iter_rows()}


def check_segment(store: Store, run_id: str, segment: str | None) -> None:
    """Refuse (``ValueError``) a segment the run has no token of, saying what it has."""
    chosen = parse_segment(segment)
    if chosen is None:
        return
    counts = segment_counts(store, run_id)
    if counts.get(chosen, 0) == 0:
        has = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no"
        hint = " (it was captured without --generate)" if chosen == "response" else ""
        raise ValueError(
            f"run {run_id!r} has no {chosen} tokens{hint}; it has {has} tokens: choose a segment it has, or all"
        )


@contextmanager
def segment_scope(store: Store, segment: str | None) -> Iterator[Store]:
    """``store`` restricted to ``segment`` for the block (its :meth:`~Store.segment_view`); itself for all."""
    chosen = parse_segment(segment)
    if chosen is None:
        yield store
        return
    view = store.segment_view(chosen)
    try:
        yield view
    finally:
        view.close()
