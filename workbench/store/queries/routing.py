"""Named queries that count routing rows: tokens and selections per layer, label, prompt and expert,
top-1 choices, expert pairs, cross-layer transitions and matched-prompt overlap.

Where the run's per-prompt summaries are valid (:func:`workbench.store.summaries.usable`), the counts
per prompt, layer, label and expert are summed from ``summary_tokens`` / ``summary_experts`` instead of
the token rows: the same numbers (integers exactly, float sums to rounding), from a table the size of
prompts × layers × experts.

Part of :mod:`workbench.store.queries` (its docstring gives the rules every query keeps).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from workbench.store.matching import PAIRS_SQL
from workbench.store.queries.filters import (
    LABELLED,
    count_rows,
    in_layers,
)
from workbench.store.summaries import usable

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl

    from workbench.store.backend import Store


# -- routing counts ----------------------------------------------------------------------------
def n_logit_rows(store: Store, run_id: str, layers: Iterable[int] | None = None) -> int:
    """How many routing rows of ``layers`` carry router logits."""
    clause, values = in_layers(layers)
    if usable(store, run_id, "logits"):
        return count_rows(
            store,
            f"SELECT CAST(coalesce(sum(n), 0) AS BIGINT) AS n FROM summary_confidence WHERE run_id = ?{clause}",
            [run_id, *values],
        )
    return count_rows(
        store,
        f"SELECT count(*) AS n FROM routing WHERE run_id = ?{clause} AND logits IS NOT NULL",
        [run_id, *values],
    )


def tokens_per_layer(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, n``: routing rows (tokens) per layer."""
    clause, values = in_layers(layers)
    if usable(store, run_id):
        return store.sql(
            "SELECT layer, CAST(sum(n_tokens) AS BIGINT) AS n FROM summary_tokens"
            f" WHERE run_id = ?{clause} GROUP BY layer",
            [run_id, *values],
        )
    return store.sql(
        f"SELECT layer, count(*) AS n FROM routing WHERE run_id = ?{clause} GROUP BY layer", [run_id, *values]
    )


def tokens_per_prompt(
    store: Store, run_id: str, layers: Iterable[int] | None = None, *, labelled_only: bool = False
) -> pl.DataFrame:
    """``prompt_id, layer, n_tokens``: routing rows per (prompt, layer); only labelled prompts with ``labelled_only``."""
    clause, values = in_layers(layers)
    if usable(store, run_id):
        where = f" AND {LABELLED}" if labelled_only else ""
        return store.sql(
            f"SELECT prompt_id, layer, n_tokens FROM summary_tokens WHERE run_id = ?{clause}{where}",
            [run_id, *values, *([run_id] if labelled_only else [])],
        )
    if labelled_only:
        return store.sql(
            "SELECT prompt_id, layer, count(*) AS n_tokens FROM routing"
            f" WHERE run_id = ?{clause} AND {LABELLED} GROUP BY prompt_id, layer",
            [run_id, *values, run_id],
        )
    return store.sql(
        f"SELECT prompt_id, layer, count(*) AS n_tokens FROM routing WHERE run_id = ?{clause}"
        " GROUP BY prompt_id, layer",
        [run_id, *values],
    )


def selections_per_prompt(
    store: Store, run_id: str, layers: Iterable[int] | None = None, *, labelled_only: bool = False
) -> pl.DataFrame:
    """``prompt_id, layer, expert, n``: how often each expert id (shared ones too) was selected, per prompt and layer."""
    clause, values = in_layers(layers)
    if usable(store, run_id):
        where = f" AND {LABELLED}" if labelled_only else ""
        return store.sql(
            f"SELECT prompt_id, layer, expert, n FROM summary_experts WHERE run_id = ?{clause}{where} AND n > 0",
            [run_id, *values, *([run_id] if labelled_only else [])],
        )
    if labelled_only:
        return store.sql(
            "SELECT prompt_id, layer, CAST(expert AS INTEGER) AS expert, count(*) AS n FROM ("
            "  SELECT prompt_id, layer, unnest(experts) AS expert FROM routing"
            f"  WHERE run_id = ?{clause} AND {LABELLED}"
            ") GROUP BY prompt_id, layer, expert",
            [run_id, *values, run_id],
        )
    return store.sql(
        "SELECT prompt_id, layer, CAST(expert AS INTEGER) AS expert, count(*) AS n FROM ("
        f"  SELECT prompt_id, layer, unnest(experts) AS expert FROM routing WHERE run_id = ?{clause}"
        ") GROUP BY prompt_id, layer, expert",
        [run_id, *values],
    )


def selections_per_layer(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, expert, n``: how often each expert id (shared ones too) was selected, per layer."""
    clause, values = in_layers(layers)
    if usable(store, run_id):
        return store.sql(
            "SELECT layer, expert, CAST(sum(n) AS BIGINT) AS n FROM summary_experts"
            f" WHERE run_id = ?{clause} AND n > 0 GROUP BY layer, expert",
            [run_id, *values],
        )
    return store.sql(
        "SELECT layer, CAST(expert AS INTEGER) AS expert, count(*) AS n FROM ("
        f"  SELECT layer, unnest(experts) AS expert FROM routing WHERE run_id = ?{clause}"
        ") GROUP BY layer, expert",
        [run_id, *values],
    )


def label_token_counts(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, n_tokens``: routing rows of labelled prompts per (layer, label), by layer, label."""
    clause, values = in_layers(layers, "r.layer")
    if usable(store, run_id):
        return store.sql(
            "SELECT r.layer, pr.label, CAST(sum(r.n_tokens) AS BIGINT) AS n_tokens FROM summary_tokens r"
            " JOIN prompts pr ON pr.run_id = r.run_id AND pr.prompt_id = r.prompt_id"
            f" WHERE r.run_id = ?{clause} AND pr.label IS NOT NULL GROUP BY r.layer, pr.label"
            " ORDER BY r.layer, pr.label",
            [run_id, *values],
        )
    return store.sql(
        "SELECT r.layer, pr.label, count(*) AS n_tokens FROM routing r"
        " JOIN prompts pr ON pr.run_id = r.run_id AND pr.prompt_id = r.prompt_id"
        f" WHERE r.run_id = ?{clause} AND pr.label IS NOT NULL GROUP BY r.layer, pr.label"
        " ORDER BY r.layer, pr.label",
        [run_id, *values],
    )


def label_token_totals(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``label, n_tokens``: routing rows of labelled prompts per label, summed over ``layers``."""
    clause, values = in_layers(layers, "r.layer")
    if usable(store, run_id):
        return store.sql(
            "SELECT p.label, CAST(sum(r.n_tokens) AS BIGINT) AS n_tokens FROM summary_tokens r"
            " JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id"
            f" WHERE r.run_id = ? AND p.label IS NOT NULL{clause} GROUP BY p.label",
            [run_id, *values],
        )
    return store.sql(
        "SELECT p.label, count(*) AS n_tokens FROM routing r"
        " JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id"
        f" WHERE r.run_id = ? AND p.label IS NOT NULL{clause} GROUP BY p.label",
        [run_id, *values],
    )


def labelled_selections(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, expert, n``: selections of each expert id by labelled prompts, per (layer, label)."""
    clause, values = in_layers(layers, "r.layer")
    if usable(store, run_id):
        return store.sql(
            "SELECT r.layer, p.label, r.expert, CAST(sum(r.n) AS BIGINT) AS n FROM summary_experts r"
            " JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id"
            f" WHERE r.run_id = ? AND p.label IS NOT NULL{clause} AND r.n > 0 GROUP BY r.layer, p.label, r.expert",
            [run_id, *values],
        )
    return store.sql(
        "SELECT layer, label, CAST(expert AS INTEGER) AS expert, count(*) AS n FROM ("
        "  SELECT r.layer, p.label, unnest(r.experts) AS expert FROM routing r"
        "  JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id"
        f"  WHERE r.run_id = ? AND p.label IS NOT NULL{clause}"
        ") GROUP BY layer, label, expert",
        [run_id, *values],
    )


def labelled_gate_mass(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``prompt_id, layer, label, expert, mass``: gate weight summed per (labelled prompt, layer, expert id)."""
    clause, values = in_layers(layers, "r.layer")
    if usable(store, run_id):
        return store.sql(
            "SELECT r.prompt_id, r.layer, p.label, r.expert, r.w_sum AS mass FROM summary_experts r"
            " JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id"
            f" WHERE r.run_id = ? AND p.label IS NOT NULL{clause}",
            [run_id, *values],
        )
    return store.sql(
        "SELECT prompt_id, layer, label, CAST(expert AS INTEGER) AS expert, sum(weight) AS mass FROM ("
        "  SELECT r.prompt_id, r.layer, p.label, unnest(r.experts) AS expert, unnest(r.weights) AS weight"
        "  FROM routing r JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id"
        f"  WHERE r.run_id = ? AND p.label IS NOT NULL{clause}"
        ") GROUP BY prompt_id, layer, label, expert",
        [run_id, *values],
    )


def label_gate_sums(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, expert, w, n``: per (layer, label, routed expert) of labelled prompts, Σ gate weight and selections."""
    clause, values = in_layers(layers, "r.layer")
    if usable(store, run_id):
        return store.sql(
            "SELECT r.layer, pr.label, r.expert, sum(r.w_sum) AS w, CAST(sum(r.n) AS BIGINT) AS n"
            " FROM summary_experts r JOIN prompts pr ON pr.run_id = r.run_id AND pr.prompt_id = r.prompt_id"
            " JOIN layers l ON l.run_id = r.run_id AND l.layer = r.layer"
            f" WHERE r.run_id = ?{clause} AND pr.label IS NOT NULL AND r.expert < l.n_experts"
            " GROUP BY r.layer, pr.label, r.expert",
            [run_id, *values],
        )
    return store.sql(
        "SELECT u.layer, pr.label, CAST(u.expert AS INTEGER) AS expert, sum(u.w) AS w, count(*) AS n FROM ("
        "  SELECT r.layer, r.prompt_id, unnest(r.experts) AS expert, unnest(r.weights) AS w FROM routing r"
        f"  WHERE r.run_id = ?{clause} AND r.{LABELLED}"
        ") u JOIN prompts pr ON pr.run_id = ? AND pr.prompt_id = u.prompt_id"
        " JOIN layers l ON l.run_id = ? AND l.layer = u.layer"
        " WHERE u.expert < l.n_experts GROUP BY u.layer, pr.label, u.expert",
        [run_id, *values, run_id, run_id, run_id],
    )


def prompt_expert_counts(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, prompt_id, expert, n``: selections of each routed expert per labelled prompt and layer.

    The label is left out (``prompt_labels`` gives it once per prompt): a string on each of the
    prompts × layers × experts rows costs more to hand over than the counts themselves.
    """
    clause, values = in_layers(layers)
    if usable(store, run_id):
        return store.sql(
            "SELECT u.layer, u.prompt_id, u.expert, u.n FROM summary_experts u"
            " JOIN layers l ON l.run_id = u.run_id AND l.layer = u.layer"
            f" WHERE u.run_id = ?{in_layers(layers, 'u.layer')[0]} AND u.{LABELLED}"
            " AND u.expert < l.n_experts AND u.n > 0",
            [run_id, *values, run_id],
        )
    return store.sql(
        "SELECT u.layer, u.prompt_id, CAST(u.expert AS INTEGER) AS expert, count(*) AS n FROM ("
        f"  SELECT layer, prompt_id, unnest(experts) AS expert FROM routing WHERE run_id = ?{clause} AND {LABELLED}"
        ") u JOIN layers l ON l.run_id = ? AND l.layer = u.layer"
        " WHERE u.expert < l.n_experts GROUP BY ALL",
        [run_id, *values, run_id, run_id],
    )


#: A row's top-1 *routed* expert: the first entry below n_experts (the lambda only runs when the
#: first entry is a shared pseudo-expert); NULL when no entry is routed.
_TOP1 = (
    "CASE WHEN r.experts[1] < l.n_experts THEN r.experts[1]"
    " ELSE list_filter(r.experts, lambda x: x < l.n_experts)[1] END"
)


def top1_label_counts(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, expert, n``: tokens of labelled prompts per (layer, label, top-1 routed expert)."""
    clause, values = in_layers(layers, "r.layer")
    if usable(store, run_id):
        return store.sql(
            "SELECT r.layer, pr.label, r.expert, CAST(sum(r.n_top1) AS BIGINT) AS n FROM summary_experts r"
            " JOIN prompts pr ON pr.run_id = r.run_id AND pr.prompt_id = r.prompt_id"
            f" WHERE r.run_id = ?{clause} AND pr.label IS NOT NULL AND r.n_top1 > 0"
            " GROUP BY r.layer, pr.label, r.expert",
            [run_id, *values],
        )
    return store.sql(
        f"SELECT r.layer, pr.label, CAST({_TOP1} AS INTEGER) AS expert, count(*) AS n"
        " FROM routing r JOIN prompts pr ON pr.run_id = r.run_id AND pr.prompt_id = r.prompt_id"
        " JOIN layers l ON l.run_id = r.run_id AND l.layer = r.layer"
        f" WHERE r.run_id = ?{clause} AND pr.label IS NOT NULL"
        " GROUP BY ALL HAVING expert IS NOT NULL",
        [run_id, *values],
    )


def top1_token_maxima(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, token_id, n_max, n_x``: per (layer, token id) its tokens ``n_x`` and the largest top-1 expert count ``n_max``.

    Sorted by layer, token id.

    Top-1 is the first routed expert (rows with none are left out); the (layer, token id,
    expert) counts are reduced in DuckDB, so only vocabulary-sized rows come back.
    """
    clause, values = in_layers(layers, "r.layer")
    return store.sql(
        "WITH t AS (SELECT prompt_id, position, token_id FROM tokens WHERE run_id = ?),"
        " c AS (SELECT r.layer, t.token_id, count(*) AS n FROM routing r JOIN t USING (prompt_id, position)"
        "   JOIN layers l ON l.run_id = r.run_id AND l.layer = r.layer"
        f"   WHERE r.run_id = ?{clause} AND ({_TOP1}) IS NOT NULL GROUP BY r.layer, t.token_id, {_TOP1})"
        " SELECT layer, token_id, max(n) AS n_max, CAST(sum(n) AS BIGINT) AS n_x FROM c GROUP BY layer, token_id"
        " ORDER BY layer, token_id",
        [run_id, run_id, *values],
    )


def top1_token_table(store: Store, run_id: str, first_prompt: int, last_prompt: int) -> pl.DataFrame:
    """``layer, token_id, expert, n``: tokens per (layer, token id, top-1 routed expert) of the prompts
    ``first_prompt..last_prompt``, every layer.

    What the run's ``vocab`` summary keeps; the same counts as :func:`top1_token_counts` per layer.
    The prompt range bounds the join's memory: DuckDB hashes the routing side.
    """
    where = "run_id = ? AND prompt_id BETWEEN ? AND ?"
    span = [run_id, int(first_prompt), int(last_prompt)]
    return store.sql(
        f"WITH t AS (SELECT prompt_id, position, token_id FROM tokens WHERE {where})"
        f" SELECT r.layer, t.token_id, CAST({_TOP1} AS INTEGER) AS expert, count(*) AS n"
        " FROM (SELECT * FROM routing WHERE " + where + ") r JOIN t USING (prompt_id, position)"
        " JOIN layers l ON l.run_id = r.run_id AND l.layer = r.layer"
        f" WHERE ({_TOP1}) IS NOT NULL GROUP BY r.layer, t.token_id, {_TOP1}",
        [*span, *span],
    )


def top1_token_counts(store: Store, run_id: str, layer: int, n_experts: int) -> pl.DataFrame:
    """``token_id, expert, n``: tokens per (token id, top-1 expert below ``n_experts``) at one layer."""
    return store.sql(
        "SELECT t.token_id, CAST(r.top1 AS INTEGER) AS expert, count(*) AS n FROM ("
        "  SELECT prompt_id, position, list_filter(experts, lambda x: x < ?)[1] AS top1 FROM routing"
        "  WHERE run_id = ? AND layer = ?"
        ") r JOIN tokens t ON t.run_id = ? AND t.prompt_id = r.prompt_id AND t.position = r.position"
        " WHERE r.top1 IS NOT NULL GROUP BY t.token_id, r.top1",
        [int(n_experts), run_id, int(layer), run_id],
    )


def pair_counts(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, a, b, n_ab, n_a, n_b, n_tokens``: co-selection counts of routed experts ``a ≠ b``, by layer, a, b.

    ``n_ab`` counts tokens whose (deduplicated) routed top-k set holds both, ``n_a``/``n_b`` the
    tokens holding each, ``n_tokens`` the layer's tokens. Works for any expert ids, negative too.
    """
    clause, values = in_layers(layers, "r.layer")
    sel = (
        "SELECT r.layer, r.prompt_id, r.position,"
        "  list_filter(r.experts, lambda x: x < l.n_experts) AS experts"
        " FROM routing r JOIN layers l ON l.run_id = r.run_id AND l.layer = r.layer"
        f" WHERE r.run_id = ?{clause}"
    )
    return store.sql(
        f"WITH sel AS ({sel}),"
        " tok AS (SELECT layer, count(*) AS n_tokens FROM sel GROUP BY layer),"
        " single AS (SELECT layer, CAST(e AS INTEGER) AS e, count(*) AS n FROM"
        "   (SELECT layer, unnest(list_distinct(experts)) AS e FROM sel) GROUP BY layer, e),"
        " pairs AS (SELECT layer, CAST(a AS INTEGER) AS a, CAST(b AS INTEGER) AS b, count(*) AS n_ab FROM"
        "   (SELECT layer, a, unnest(list_filter(ex, lambda x: x <> a)) AS b FROM"
        "     (SELECT layer, list_distinct(experts) AS ex, unnest(list_distinct(experts)) AS a FROM sel))"
        "   GROUP BY layer, a, b)"
        " SELECT p.layer, p.a, p.b, p.n_ab, sa.n AS n_a, sb.n AS n_b, t.n_tokens"
        " FROM pairs p JOIN single sa ON sa.layer = p.layer AND sa.e = p.a"
        " JOIN single sb ON sb.layer = p.layer AND sb.e = p.b JOIN tok t ON t.layer = p.layer"
        " ORDER BY p.layer, p.a, p.b",
        [run_id, *values],
    )


def top1_transitions(store: Store, run_id: str) -> pl.DataFrame:
    """``layer_from, layer_to, expert_from, expert_to, n``: tokens per top-1 expert pair of consecutive MoE layers.

    Consecutive = the next layer in the run's ``layers`` table; both top-1 experts must be routed.
    """
    # t reads the run's top-1 experts once (a CTE used twice is materialised) and the self-join has its
    # whole key (prompt, position, layer) in its own condition: given part of it, DuckDB may join on
    # (prompt, position) first, one row per pair of layers, since it cannot estimate the
    # Parquet-backed view's key counts
    return store.sql(
        "WITH nxt AS (SELECT layer, n_experts, lead(layer) OVER (ORDER BY layer) AS layer_to,"
        "   lead(n_experts) OVER (ORDER BY layer) AS e_to FROM layers WHERE run_id = $1),"
        " t AS (SELECT prompt_id, position, layer, experts[1] AS top1 FROM routing WHERE run_id = $1)"
        " SELECT x.layer AS layer_from, nxt.layer_to, CAST(x.top1 AS INTEGER) AS expert_from,"
        "   CAST(y.top1 AS INTEGER) AS expert_to, count(*) AS n"
        " FROM t x JOIN nxt ON nxt.layer = x.layer"
        " JOIN t y ON y.prompt_id = x.prompt_id AND y.position = x.position AND y.layer = nxt.layer_to"
        " WHERE x.top1 < nxt.n_experts AND y.top1 < nxt.e_to"
        " GROUP BY ALL",
        [run_id],
    )


def matched_overlap(
    store: Store, run_a: str, run_b: str, layers: Iterable[int] | None = None
) -> pl.DataFrame:
    """``layer, prompt_id, n, overlap`` per (layer, prompt of A): matched tokens and Σ ``|S ∩ S'| / k``.

    Prompts of the two runs are paired on content hash (:data:`~workbench.store.matching.PAIRS_SQL`),
    tokens on (position, layer); ``k = max(|S|, |S'|, 1)``. By layer, prompt_id.
    """
    clause, values = in_layers(layers, "a.layer")
    # am carries each row of A with its partner prompt in B, so the join with B has its whole key in
    # its own condition: given only (position, layer) there, DuckDB may join A and B on those first,
    # every prompt with every prompt, because it cannot estimate the Parquet-backed view's key counts
    return store.sql(
        f"WITH m AS ({PAIRS_SQL}),"
        " am AS MATERIALIZED (SELECT m.pid_b, a.prompt_id, a.position, a.layer, a.experts"
        f"   FROM m JOIN routing a ON a.run_id = ? AND a.prompt_id = m.pid_a WHERE TRUE{clause})"
        " SELECT am.layer, am.prompt_id, count(*) AS n,"
        " sum(len(list_intersect(am.experts, b.experts)) / greatest(len(am.experts), len(b.experts), 1))"
        " AS overlap"
        " FROM am JOIN routing b ON b.run_id = ? AND b.prompt_id = am.pid_b"
        " AND b.position = am.position AND b.layer = am.layer"
        " GROUP BY am.layer, am.prompt_id ORDER BY am.layer, am.prompt_id",
        [run_a, run_b, run_a, *values, run_b],
    )


def has_gate_weights(store: Store, run_id: str) -> bool:
    """Whether the run has a routing row with gate weights (a run imported from a serving engine has none)."""
    if usable(store, run_id):
        found = store.sql(
            "SELECT 1 AS x FROM summary_tokens WHERE run_id = ? AND n_weights > 0 LIMIT 1", [run_id]
        )
        return found.height > 0
    return (
        store.sql(
            "SELECT 1 AS x FROM routing WHERE run_id = ? AND weights IS NOT NULL LIMIT 1", [run_id]
        ).height
        > 0
    )
