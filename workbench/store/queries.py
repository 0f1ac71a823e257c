"""Named read queries over the store's tables, one small function per question an analysis asks.

Why: the analyses (``workbench.analysis``) compute statistics; which rows of ``routing``,
``prompts``, ``tokens``, ``layers`` and ``expert_stats`` they read, and how DuckDB groups them,
is the store's business. Keeping that SQL here means a schema change touches one module, each
query has a name that says what it fetches, and each is tested on its own
(tests/test_store_queries.py). Every function takes the :class:`~workbench.store.Store`, the
run id(s) and filters, and returns a polars DataFrame (or a count / a label list where that
is the whole answer).

Rules kept by every query: user values (run ids, labels, layers, experts, span bounds) reach
SQL only as ``?`` parameters; the few identifiers spliced into SQL (the layer column of a
filter) come from the fixed :data:`_LAYER_COLUMNS` allow-list. ``layers`` is ``None`` for
every layer of the run and an empty list for none. "Routed" experts are ids ``< n_experts``
of the row's layer (ids ``>= n_experts`` are shared pseudo-experts); "labelled" prompts are
those whose ``label`` is not NULL. No query checks that the run exists: callers that need
``UnknownRunError`` call ``store.layers(run_id)`` first. Rows come in no particular order
unless the docstring gives one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from workbench.store.matching import PAIRS_SQL

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl

    from workbench.store.backend import Store

__all__ = [
    "SPAN_HELP",
    "TokenSpan",
    "contrast_prompts",
    "distinct_labels",
    "expert_norm_maxima",
    "expert_stats_means",
    "label_gate_sums",
    "label_token_counts",
    "label_token_totals",
    "labelled_gate_mass",
    "labelled_selections",
    "matched_overlap",
    "n_expert_stats_rows",
    "n_logit_rows",
    "pair_counts",
    "pair_first_labels",
    "paired_labels",
    "prompt_expert_counts",
    "prompt_labels",
    "selections_per_layer",
    "selections_per_prompt",
    "shared_norm_mass",
    "shared_norm_totals",
    "span_selections",
    "span_token_counts",
    "span_token_selections",
    "token_nll",
    "token_strings",
    "tokens_per_layer",
    "tokens_per_prompt",
    "top1_label_counts",
    "top1_token_counts",
    "top1_token_maxima",
    "top1_transitions",
]

#: Layer columns a filter may name (table aliases used by the queries below); anything else is refused.
_LAYER_COLUMNS = frozenset({"layer", "r.layer", "s.layer", "a.layer", "u.layer"})

#: Restricts a ``routing``/``expert_stats`` row (unaliased ``prompt_id``) to labelled prompts; parameter: run id.
_LABELLED = "prompt_id IN (SELECT prompt_id FROM prompts WHERE run_id = ? AND label IS NOT NULL)"

#: The grammar of a token span, as users write it (CLI ``--span``, the dashboard, the notebook).
SPAN_HELP = "all | last:N | first:N | positions:A-B"


def _in_layers(layers: Iterable[int] | None, column: str = "layer") -> tuple[str, list[int]]:
    """An ``AND column IN (?, ...)`` clause and its parameters; empty for all layers, FALSE for none."""
    if column not in _LAYER_COLUMNS:
        raise ValueError(f"layer column {column!r} is not one of {sorted(_LAYER_COLUMNS)}")
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

    def condition(self) -> tuple[str, list[int]]:
        """SQL condition on ``r.position`` (and ``p.n_tokens`` for ``last``) and its parameters."""
        if self.kind == "last":
            return "r.position >= p.n_tokens - ?", [self.hi]
        if self.kind == "first":
            return "r.position < ?", [self.hi]
        if self.kind == "positions":
            return "r.position BETWEEN ? AND ?", [self.lo, self.hi]
        return "TRUE", []


def _count(store: Store, sql: str, params: list[Any]) -> int:
    """The single ``n`` of a ``SELECT count(*) AS n`` query."""
    return int(store.sql(sql, params)["n"][0])


# -- prompts and tokens ----------------------------------------------------------------------
def prompt_labels(store: Store, run_id: str, *, labelled_only: bool = False) -> pl.DataFrame:
    """``prompt_id, label`` of the run's prompts (only labelled ones with ``labelled_only``), by prompt_id."""
    where = " AND label IS NOT NULL" if labelled_only else ""
    return store.sql(
        f"SELECT prompt_id, label FROM prompts WHERE run_id = ?{where} ORDER BY prompt_id", [run_id]
    )


def distinct_labels(store: Store, run_id: str) -> list[str | None]:
    """The run's distinct prompt labels, sorted (a NULL label, if any, last as ``None``)."""
    df = store.sql("SELECT DISTINCT label FROM prompts WHERE run_id = ? ORDER BY label", [run_id])
    return list(df["label"].to_list())


def paired_labels(store: Store, run_id: str) -> list[str]:
    """The distinct non-NULL labels of the run's paired prompts (``pair_id`` set), in no particular order."""
    df = store.sql(
        "SELECT DISTINCT label FROM prompts WHERE run_id = ? AND pair_id IS NOT NULL AND label IS NOT NULL",
        [run_id],
    )
    return list(df["label"].to_list())


def pair_first_labels(store: Store, run_id: str) -> pl.DataFrame:
    """``label, n``: how many pairs have each label on their first member (lowest prompt_id), most first."""
    return store.sql(
        "SELECT label, count(*) AS n FROM ("
        "  SELECT pair_id, arg_min(label, prompt_id) AS label FROM prompts"
        "  WHERE run_id = ? AND pair_id IS NOT NULL GROUP BY pair_id"
        ") GROUP BY label ORDER BY n DESC",
        [run_id],
    )


def contrast_prompts(store: Store, run_id: str, target: str, control: str) -> pl.DataFrame:
    """``prompt_id, is_target, pair_id`` of the prompts labelled ``target`` or ``control``, by prompt_id."""
    return store.sql(
        "SELECT prompt_id, label = ? AS is_target, pair_id FROM prompts "
        "WHERE run_id = ? AND label IN (?, ?) ORDER BY prompt_id",
        [target, run_id, target, control],
    )


def token_nll(store: Store, run_id: str) -> pl.DataFrame:
    """``prompt_id, position, nll`` of every token of the run."""
    return store.sql("SELECT prompt_id, position, nll FROM tokens WHERE run_id = ?", [run_id])


def token_strings(store: Store, run_id: str) -> pl.DataFrame:
    """``token_id, token``: one string per token id seen in the run."""
    return store.sql(
        "SELECT token_id, any_value(token) AS token FROM tokens WHERE run_id = ? GROUP BY token_id", [run_id]
    )


# -- routing counts ----------------------------------------------------------------------------
def n_logit_rows(store: Store, run_id: str, layers: Iterable[int] | None = None) -> int:
    """How many routing rows of ``layers`` carry router logits."""
    clause, values = _in_layers(layers)
    return _count(
        store,
        f"SELECT count(*) AS n FROM routing WHERE run_id = ?{clause} AND logits IS NOT NULL",
        [run_id, *values],
    )


def tokens_per_layer(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, n``: routing rows (tokens) per layer."""
    clause, values = _in_layers(layers)
    return store.sql(
        f"SELECT layer, count(*) AS n FROM routing WHERE run_id = ?{clause} GROUP BY layer", [run_id, *values]
    )


def tokens_per_prompt(
    store: Store, run_id: str, layers: Iterable[int] | None = None, *, labelled_only: bool = False
) -> pl.DataFrame:
    """``prompt_id, layer, n_tokens``: routing rows per (prompt, layer); only labelled prompts with ``labelled_only``."""
    clause, values = _in_layers(layers)
    if labelled_only:
        return store.sql(
            "SELECT prompt_id, layer, count(*) AS n_tokens FROM routing"
            f" WHERE run_id = ?{clause} AND {_LABELLED} GROUP BY prompt_id, layer",
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
    clause, values = _in_layers(layers)
    if labelled_only:
        return store.sql(
            "SELECT prompt_id, layer, CAST(expert AS INTEGER) AS expert, count(*) AS n FROM ("
            "  SELECT prompt_id, layer, unnest(experts) AS expert FROM routing"
            f"  WHERE run_id = ?{clause} AND {_LABELLED}"
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
    clause, values = _in_layers(layers)
    return store.sql(
        "SELECT layer, CAST(expert AS INTEGER) AS expert, count(*) AS n FROM ("
        f"  SELECT layer, unnest(experts) AS expert FROM routing WHERE run_id = ?{clause}"
        ") GROUP BY layer, expert",
        [run_id, *values],
    )


def label_token_counts(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, n_tokens``: routing rows of labelled prompts per (layer, label), by layer, label."""
    clause, values = _in_layers(layers, "r.layer")
    return store.sql(
        "SELECT r.layer, pr.label, count(*) AS n_tokens FROM routing r"
        " JOIN prompts pr ON pr.run_id = r.run_id AND pr.prompt_id = r.prompt_id"
        f" WHERE r.run_id = ?{clause} AND pr.label IS NOT NULL GROUP BY r.layer, pr.label"
        " ORDER BY r.layer, pr.label",
        [run_id, *values],
    )


def label_token_totals(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``label, n_tokens``: routing rows of labelled prompts per label, summed over ``layers``."""
    clause, values = _in_layers(layers, "r.layer")
    return store.sql(
        "SELECT p.label, count(*) AS n_tokens FROM routing r"
        " JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id"
        f" WHERE r.run_id = ? AND p.label IS NOT NULL{clause} GROUP BY p.label",
        [run_id, *values],
    )


def labelled_selections(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, expert, n``: selections of each expert id by labelled prompts, per (layer, label)."""
    clause, values = _in_layers(layers, "r.layer")
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
    clause, values = _in_layers(layers, "r.layer")
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
    clause, values = _in_layers(layers, "r.layer")
    return store.sql(
        "SELECT u.layer, pr.label, CAST(u.expert AS INTEGER) AS expert, sum(u.w) AS w, count(*) AS n FROM ("
        "  SELECT r.layer, r.prompt_id, unnest(r.experts) AS expert, unnest(r.weights) AS w FROM routing r"
        f"  WHERE r.run_id = ?{clause} AND r.{_LABELLED}"
        ") u JOIN prompts pr ON pr.run_id = ? AND pr.prompt_id = u.prompt_id"
        " JOIN layers l ON l.run_id = ? AND l.layer = u.layer"
        " WHERE u.expert < l.n_experts GROUP BY u.layer, pr.label, u.expert",
        [run_id, *values, run_id, run_id, run_id],
    )


def prompt_expert_counts(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, prompt_id, label, expert, n``: selections of each routed expert per labelled prompt and layer."""
    clause, values = _in_layers(layers)
    return store.sql(
        "SELECT u.layer, u.prompt_id, pr.label, CAST(u.expert AS INTEGER) AS expert, count(*) AS n FROM ("
        f"  SELECT layer, prompt_id, unnest(experts) AS expert FROM routing WHERE run_id = ?{clause}"
        ") u JOIN prompts pr ON pr.run_id = ? AND pr.prompt_id = u.prompt_id"
        " JOIN layers l ON l.run_id = ? AND l.layer = u.layer"
        " WHERE pr.label IS NOT NULL AND u.expert < l.n_experts GROUP BY ALL",
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
    clause, values = _in_layers(layers, "r.layer")
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

    Top-1 is the first routed expert (rows with none are left out); the (layer, token id,
    expert) counts are reduced in DuckDB, so only vocabulary-sized rows come back.
    """
    clause, values = _in_layers(layers, "r.layer")
    return store.sql(
        "WITH t AS (SELECT prompt_id, position, token_id FROM tokens WHERE run_id = ?),"
        " c AS (SELECT r.layer, t.token_id, count(*) AS n FROM routing r JOIN t USING (prompt_id, position)"
        "   JOIN layers l ON l.run_id = r.run_id AND l.layer = r.layer"
        f"   WHERE r.run_id = ?{clause} AND ({_TOP1}) IS NOT NULL GROUP BY r.layer, t.token_id, {_TOP1})"
        " SELECT layer, token_id, max(n) AS n_max, CAST(sum(n) AS BIGINT) AS n_x FROM c GROUP BY layer, token_id",
        [run_id, run_id, *values],
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
    clause, values = _in_layers(layers, "r.layer")
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
    return store.sql(
        "WITH nxt AS (SELECT layer, n_experts, lead(layer) OVER (ORDER BY layer) AS layer_to,"
        "   lead(n_experts) OVER (ORDER BY layer) AS e_to FROM layers WHERE run_id = ?)"
        " SELECT x.layer AS layer_from, nxt.layer_to, CAST(x.experts[1] AS INTEGER) AS expert_from,"
        "   CAST(y.experts[1] AS INTEGER) AS expert_to, count(*) AS n"
        "   FROM routing x JOIN nxt ON nxt.layer = x.layer"
        "   JOIN routing y ON y.run_id = x.run_id AND y.layer = nxt.layer_to"
        "     AND y.prompt_id = x.prompt_id AND y.position = x.position"
        "   WHERE x.run_id = ? AND x.experts[1] < nxt.n_experts AND y.experts[1] < nxt.e_to"
        "   GROUP BY ALL",
        [run_id, run_id],
    )


def matched_overlap(
    store: Store, run_a: str, run_b: str, layers: Iterable[int] | None = None
) -> pl.DataFrame:
    """``layer, prompt_id, n, overlap`` per (layer, prompt of A): matched tokens and Σ ``|S ∩ S'| / k``.

    Prompts of the two runs are paired on content hash (:data:`~workbench.store.matching.PAIRS_SQL`),
    tokens on (position, layer); ``k = max(|S|, |S'|, 1)``. By layer, prompt_id.
    """
    clause, values = _in_layers(layers, "a.layer")
    return store.sql(
        "SELECT a.layer, a.prompt_id, count(*) AS n,"
        " sum(len(list_intersect(a.experts, b.experts)) / greatest(len(a.experts), len(b.experts), 1))"
        " AS overlap"
        f" FROM ({PAIRS_SQL}) m"
        " JOIN routing a ON a.run_id = ? AND a.prompt_id = m.pid_a"
        " JOIN routing b ON b.run_id = ? AND b.prompt_id = m.pid_b"
        " AND a.position = b.position AND a.layer = b.layer"
        f" WHERE TRUE{clause}"
        " GROUP BY a.layer, a.prompt_id ORDER BY a.layer, a.prompt_id",
        [run_a, run_b, run_a, run_b, *values],
    )


# -- contrast sets over a token span -------------------------------------------------------
def _span_base(
    run_id: str, target: str, control: str, span: TokenSpan | None, layers: Iterable[int] | None
) -> tuple[str, list[Any]]:
    """``FROM routing r JOIN prompts p ... WHERE`` the contrast set's rows in the span, and its parameters."""
    cond, cond_params = (span or TokenSpan()).condition()
    clause, values = _in_layers(layers, "r.layer")
    base = (
        "FROM routing r JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id "
        f"WHERE r.run_id = ? AND p.label IN (?, ?) AND {cond}{clause}"
    )
    return base, [run_id, target, control, *cond_params, *values]


def span_token_counts(
    store: Store,
    run_id: str,
    target: str,
    control: str,
    span: TokenSpan | None = None,
    layers: Iterable[int] | None = None,
) -> pl.DataFrame:
    """``prompt_id, layer, n``: tokens in ``span`` per (prompt, layer) of the ``target``/``control`` prompts."""
    base, params = _span_base(run_id, target, control, span, layers)
    return store.sql(f"SELECT r.prompt_id, r.layer, count(*) AS n {base} GROUP BY ALL", params)


def span_selections(
    store: Store,
    run_id: str,
    target: str,
    control: str,
    span: TokenSpan | None = None,
    layers: Iterable[int] | None = None,
) -> pl.DataFrame:
    """``prompt_id, layer, expert, n, g``: selections and Σ gate weight per (prompt, layer, expert id) in ``span``."""
    base, params = _span_base(run_id, target, control, span, layers)
    return store.sql(
        "SELECT prompt_id, layer, CAST(expert AS INTEGER) AS expert, count(*) AS n, sum(weight) AS g FROM ("
        f"  SELECT r.prompt_id, r.layer, unnest(r.experts) AS expert, unnest(r.weights) AS weight {base}"
        ") GROUP BY ALL",
        params,
    )


def span_token_selections(
    store: Store,
    run_id: str,
    *,
    layer: int,
    expert: int,
    target: str,
    control: str,
    span: TokenSpan | None = None,
) -> pl.DataFrame:
    """``token, is_target, n, n_sel``: per token string and class, tokens in ``span`` and how many selected ``expert``."""
    cond, cond_params = (span or TokenSpan()).condition()
    return store.sql(
        "SELECT t.token, p.label = ? AS is_target, count(*) AS n, "
        "  count(*) FILTER (WHERE list_contains(r.experts, ?)) AS n_sel "
        "FROM routing r "
        "JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id "
        "JOIN tokens t ON t.run_id = r.run_id AND t.prompt_id = r.prompt_id AND t.position = r.position "
        f"WHERE r.run_id = ? AND r.layer = ? AND p.label IN (?, ?) AND {cond} GROUP BY ALL",
        [target, expert, run_id, layer, target, control, *cond_params],
    )


# -- expert_stats ------------------------------------------------------------------------------
def n_expert_stats_rows(store: Store, run_id: str) -> int:
    """How many ``expert_stats`` rows the run has (0: captured without ``--expert-stats``)."""
    return _count(store, "SELECT count(*) AS n FROM expert_stats WHERE run_id = ?", [run_id])


def expert_norm_maxima(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, expert, max_out_norm, n_tokens``: the largest ``|out_norm|`` and row count per (layer, expert id)."""
    clause, values = _in_layers(layers)
    return store.sql(
        "SELECT layer, CAST(expert AS INTEGER) AS expert, max(abs(out_norm)) AS max_out_norm, count(*) AS n_tokens"
        f" FROM expert_stats WHERE run_id = ?{clause} GROUP BY layer, expert",
        [run_id, *values],
    )


def expert_stats_means(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, expert, mean_zero_frac, mean_out_norm, n_tokens`` per (layer, expert id) of ``expert_stats``."""
    clause, values = _in_layers(layers)
    return store.sql(
        "SELECT layer, CAST(expert AS INTEGER) AS expert, avg(zero_frac) AS mean_zero_frac,"
        " avg(out_norm) AS mean_out_norm, count(*) AS n_tokens"
        f" FROM expert_stats WHERE run_id = ?{clause} GROUP BY layer, expert",
        [run_id, *values],
    )


def shared_norm_mass(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``layer, label, expert, mass, n``: Σ out_norm and rows per (layer, label, shared expert) of labelled prompts."""
    clause, values = _in_layers(layers, "s.layer")
    return store.sql(
        "SELECT s.layer, p.label, CAST(s.expert AS INTEGER) AS expert, sum(s.out_norm) AS mass, count(*) AS n"
        " FROM expert_stats s JOIN prompts p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id"
        " JOIN layers l ON l.run_id = s.run_id AND l.layer = s.layer"
        f" WHERE s.run_id = ? AND p.label IS NOT NULL AND s.expert >= l.n_experts{clause}"
        " GROUP BY s.layer, p.label, s.expert",
        [run_id, *values],
    )


def shared_norm_totals(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``label, shared_norm, total_norm``: Σ out_norm of shared experts and of all experts, per label."""
    clause, values = _in_layers(layers, "s.layer")
    return store.sql(
        "SELECT p.label, sum(CASE WHEN s.expert >= l.n_experts THEN s.out_norm ELSE 0 END) AS shared_norm,"
        " sum(s.out_norm) AS total_norm"
        " FROM expert_stats s JOIN prompts p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id"
        " JOIN layers l ON l.run_id = s.run_id AND l.layer = s.layer"
        f" WHERE s.run_id = ? AND p.label IS NOT NULL{clause} GROUP BY p.label",
        [run_id, *values],
    )
