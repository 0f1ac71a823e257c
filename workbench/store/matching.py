"""Which prompts two runs share: matching on ``prompts.content_hash`` (text and token ids), never row index.

Every comparison of two runs (routing drift, the report's compare section, the dashboard's compare
views) pairs prompt ``i`` of run A with the prompt of run B that has the same content hash. A hash
that occurs several times in one run (a suite that repeats a prompt) is paired occurrence by
occurrence, in prompt_id order. Prompts without a hash (stored before schema v3 with tokens that
could not be read back) are *unknown*: a comparison involving them is refused, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

from workbench.store.errors import StoreError
from workbench.store.sqlutil import first

if TYPE_CHECKING:
    import polars as pl

__all__ = ["PAIRS_SQL", "PromptMatch", "PromptMismatchError", "compatible_runs", "coverage", "match_prompts"]


class PromptMismatchError(StoreError, ValueError):
    """Two runs cannot be compared: they share no prompts, or a run's prompts have no content hash."""


#: ``(pid_a, pid_b)`` pairs of prompts with equal content hash; parameters: run A, run B.
PAIRS_SQL = (
    "SELECT a.prompt_id AS pid_a, b.prompt_id AS pid_b FROM"
    " (SELECT prompt_id, content_hash, row_number() OVER (PARTITION BY content_hash ORDER BY prompt_id) AS occ"
    "  FROM prompts WHERE run_id = ? AND content_hash IS NOT NULL) a"
    " JOIN"
    " (SELECT prompt_id, content_hash, row_number() OVER (PARTITION BY content_hash ORDER BY prompt_id) AS occ"
    "  FROM prompts WHERE run_id = ? AND content_hash IS NOT NULL) b"
    " ON a.content_hash = b.content_hash AND a.occ = b.occ"
)


def coverage(run_a: str, run_b: str, n_shared: int, n_a: int, n_b: int) -> str:
    """The sentence every comparison prints: how many prompts it was computed on."""
    if n_shared == n_a == n_b:
        return (
            f"compared on all {n_shared} prompts, shared by {run_a} and {run_b} (matched by text and tokens)"
        )
    return (
        f"compared on {n_shared} shared prompts of {n_a} in {run_a} and {n_b} in {run_b} "
        "(matched by text and tokens; the others are left out)"
    )


@dataclass(frozen=True)
class PromptMatch:
    """The prompts two runs share: counts, and whether the pairing is the identity on prompt ids."""

    run_a: str
    run_b: str
    n_a: int
    n_b: int
    n_shared: int
    identical: bool  # every prompt of both runs is shared under the same prompt_id

    def describe(self) -> str:
        return coverage(self.run_a, self.run_b, self.n_shared, self.n_a, self.n_b)


def _hash_counts(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[int, int]:
    row = first(
        con,
        "SELECT count(*), count(*) FILTER (WHERE content_hash IS NULL) FROM prompts WHERE run_id = ?",
        [run_id],
    )
    return (int(row[0]), int(row[1])) if row else (0, 0)


def match_prompts(
    con: duckdb.DuckDBPyConnection, run_a: str, run_b: str, *, require: bool = True
) -> PromptMatch:
    """Match ``run_a``'s prompts with ``run_b``'s on content hash (the runs must exist).

    With ``require`` (the default), raises :class:`PromptMismatchError` when a run has prompts
    without a hash (say to re-capture) or when the runs share no prompt (say what to compare).
    """
    n_a, unknown_a = _hash_counts(con, run_a)
    n_b, unknown_b = _hash_counts(con, run_b)
    unknown = [(r, u, n) for r, u, n in ((run_a, unknown_a, n_a), (run_b, unknown_b, n_b)) if u]
    if require and unknown:
        which = "; ".join(f"run {r!r}: {u} of {n} prompts" for r, u, n in unknown)
        raise PromptMismatchError(
            f"cannot match the prompts of runs {run_a!r} and {run_b!r}: some have no content hash ({which}), "
            "so it is unknown which prompts the runs share (stored before store schema v3 with tokens that "
            "could not be read back, or stored without all their tokens). Re-capture the run(s) with this moe-workbench and compare the new runs."
        )
    row = first(
        con, f"SELECT count(*), count(*) FILTER (WHERE pid_a <> pid_b) FROM ({PAIRS_SQL})", [run_a, run_b]
    )
    n_shared, moved = (int(row[0]), int(row[1])) if row else (0, 0)
    if require and n_shared == 0:
        raise PromptMismatchError(
            f"runs {run_a!r} and {run_b!r} share no prompts (0 of {n_a} / 0 of {n_b} match by text and tokens); "
            "compare two captures of the same probe file (with the same tokenizer)"
        )
    identical = n_shared == n_a == n_b and moved == 0 and not unknown
    return PromptMatch(run_a, run_b, n_a, n_b, n_shared, identical)


def compatible_runs(con: duckdb.DuckDBPyConnection, run_id: str) -> pl.DataFrame:
    """Other runs sharing at least one prompt (by content hash) with ``run_id``: ``run_id, n_shared, n_prompts``.

    Counts distinct shared hashes; runs with most shared prompts first, then by run id.
    """
    from workbench.store.readers import frame

    return frame(
        con,
        "WITH mine AS (SELECT DISTINCT content_hash FROM prompts WHERE run_id = ? AND content_hash IS NOT NULL)"
        " SELECT p.run_id, count(DISTINCT p.content_hash) FILTER (WHERE p.content_hash IN (SELECT * FROM mine))"
        " AS n_shared, count(*) AS n_prompts"
        " FROM prompts p WHERE p.run_id <> ? GROUP BY p.run_id"
        " HAVING count(*) FILTER (WHERE p.content_hash IN (SELECT * FROM mine)) > 0"
        " ORDER BY n_shared DESC, p.run_id",
        [run_id, run_id],
    )
