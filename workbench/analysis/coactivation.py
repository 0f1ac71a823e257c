"""Co-activation and pathways (METHODS.md §4): which experts fire together, within and across layers.

Within a layer ``l`` (N = tokens routed at l, ``S`` = a token's top-k set):

* ``n_a`` = tokens with ``a ∈ S``; ``n_ab`` = tokens with ``a ∈ S`` and ``b ∈ S``, counted
  over **all** ordered pairs ``a ≠ b`` of the top-k set (not only rank-adjacent pairs, as
  OLMoE's public script does), so ``n_ab == n_ba``.
* ``P(b | a) = n_ab / n_a``; ``P(b) = n_b / N``; ``lift = P(b | a) / P(b)`` (1 = independent).

Across layers (:func:`pathways`): for consecutive MoE layers ``l → l'`` of the run (the next
layer in the run's ``layers`` table, not necessarily ``l + 1``), ``n`` = tokens whose top-1
expert (first entry of ``experts``, the highest weight) is ``expert_from`` at ``l`` and
``expert_to`` at ``l'``; ``n_from`` = tokens with top-1 ``expert_from`` at ``l`` that are
also routed at ``l'``; ``p = n / n_from``.

Fixed partners (:func:`fixed_partners`, Dynamic-DINO): for expert ``a`` at layer ``l`` its
co-activations are ``C_a = Σ_b n_ab``; ``n_partners`` is the smallest ``m`` such that the
``m`` most frequent partners cover ``≥ coverage · C_a``. ``layer_mean`` is the mean of
``n_partners`` over the experts of that layer that have any co-activation.

Expert ids ``>= n_experts`` (shared pseudo-experts) are left out throughout. Counting runs in
DuckDB (unnest the top-k lists); only observed pairs/transitions get a row (``n > 0``).
These are descriptive counts with no CI: they are used to look at structure, not to test it.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from workbench.analysis.common import layer_filter
from workbench.store import Store

__all__ = [
    "COACTIVATION_COLUMNS",
    "FIXED_PARTNER_COLUMNS",
    "PATHWAY_COLUMNS",
    "coactivation",
    "fixed_partners",
    "pathways",
]

COACTIVATION_COLUMNS: tuple[str, ...] = (
    "layer", "a", "b", "n_ab", "n_a", "n_b", "n_tokens", "p_b_given_a", "p_b", "lift",
)  # fmt: skip
PATHWAY_COLUMNS: tuple[str, ...] = ("layer_from", "layer_to", "expert_from", "expert_to", "n", "n_from", "p")
FIXED_PARTNER_COLUMNS: tuple[str, ...] = (
    "layer", "expert", "n_partners", "n_distinct_partners", "n_coactivations", "layer_mean",
)  # fmt: skip

_COACT_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32, "a": pl.Int32, "b": pl.Int32, "n_ab": pl.Int64, "n_a": pl.Int64, "n_b": pl.Int64,
    "n_tokens": pl.Int64, "p_b_given_a": pl.Float64, "p_b": pl.Float64, "lift": pl.Float64,
}  # fmt: skip
_PATH_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer_from": pl.Int32, "layer_to": pl.Int32, "expert_from": pl.Int32, "expert_to": pl.Int32,
    "n": pl.Int64, "n_from": pl.Int64, "p": pl.Float64,
}  # fmt: skip
_FIXED_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32, "expert": pl.Int32, "n_partners": pl.Int64, "n_distinct_partners": pl.Int64,
    "n_coactivations": pl.Int64, "layer_mean": pl.Float64,
}  # fmt: skip


def coactivation(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """``n_ab``, ``P(b|a)``, ``P(b)`` and lift for every observed ordered pair ``a ≠ b`` per layer.

    Sorted by layer, a, b. ``n_tokens`` is N at that layer. Raises for an unknown run.
    """
    store.layers(run_id)  # raises UnknownRunError for an unknown run
    clause, values = layer_filter(layers, "r.layer")
    sel = (
        "SELECT r.layer, r.prompt_id, r.position,"
        "  list_filter(r.experts, lambda x: x < l.n_experts) AS experts"
        " FROM routing r JOIN layers l ON l.run_id = r.run_id AND l.layer = r.layer"
        f" WHERE r.run_id = ?{clause}"
    )
    out = store.sql(
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
    if out.height == 0:
        return pl.DataFrame(schema=_COACT_SCHEMA)
    out = out.with_columns(
        (pl.col("n_ab") / pl.col("n_a")).alias("p_b_given_a"),
        (pl.col("n_b") / pl.col("n_tokens")).alias("p_b"),
    ).with_columns((pl.col("p_b_given_a") / pl.col("p_b")).alias("lift"))
    return out.select(list(COACTIVATION_COLUMNS)).cast(_COACT_SCHEMA)  # type: ignore[arg-type]


def pathways(store: Store, run_id: str, top: int | None = 20) -> pl.DataFrame:
    """Top-1 transitions between consecutive MoE layers: ``n``, ``n_from`` and ``p = n / n_from``.

    Keeps the ``top`` most frequent transitions of each layer pair (``p`` is computed before
    truncating; ``None`` keeps all). Sorted by layer_from, descending n, expert_from, expert_to.
    """
    store.layers(run_id)
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1 or None, got {top}")
    keep = (
        ""
        if top is None
        else " QUALIFY row_number() OVER (PARTITION BY layer_from ORDER BY n DESC, expert_from, expert_to)"
        f" <= {int(top)}"
    )
    out = store.sql(
        "WITH nxt AS (SELECT layer, n_experts, lead(layer) OVER (ORDER BY layer) AS layer_to,"
        "   lead(n_experts) OVER (ORDER BY layer) AS e_to FROM layers WHERE run_id = ?),"
        " trans AS (SELECT x.layer AS layer_from, nxt.layer_to, CAST(x.experts[1] AS INTEGER) AS expert_from,"
        "   CAST(y.experts[1] AS INTEGER) AS expert_to, count(*) AS n"
        "   FROM routing x JOIN nxt ON nxt.layer = x.layer"
        "   JOIN routing y ON y.run_id = x.run_id AND y.layer = nxt.layer_to"
        "     AND y.prompt_id = x.prompt_id AND y.position = x.position"
        "   WHERE x.run_id = ? AND x.experts[1] < nxt.n_experts AND y.experts[1] < nxt.e_to"
        "   GROUP BY ALL),"
        " withp AS (SELECT *, sum(n) OVER (PARTITION BY layer_from, expert_from) AS n_from FROM trans)"
        f" SELECT *, n / n_from AS p FROM withp{keep}"
        " ORDER BY layer_from, n DESC, expert_from, expert_to",
        [run_id, run_id],
    )
    if out.height == 0:
        return pl.DataFrame(schema=_PATH_SCHEMA)
    return out.select(list(PATHWAY_COLUMNS)).cast(_PATH_SCHEMA)  # type: ignore[arg-type]


def fixed_partners(
    store: Store, run_id: str, coverage: float = 0.5, layers: Iterable[int] | None = None
) -> pl.DataFrame:
    """Per (layer, expert): the fewest partners covering ``≥ coverage`` of its co-activations.

    ``n_distinct_partners`` is how many partners it has at all, ``n_coactivations`` is
    ``C_a``; ``layer_mean`` repeats the layer's mean ``n_partners`` on each row. Experts with no
    co-activation (unused, or ``k = 1``) have no row. Sorted by layer, expert.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    pairs = coactivation(store, run_id, layers)
    if pairs.height == 0:
        return pl.DataFrame(schema=_FIXED_SCHEMA)
    ranked = pairs.select("layer", "a", "n_ab").sort(["layer", "a", "n_ab"], descending=[False, False, True])
    ranked = ranked.with_columns(
        pl.col("n_ab").sum().over("layer", "a").alias("total"),
        (pl.col("n_ab").cum_sum().over("layer", "a") - pl.col("n_ab")).alias("before"),
    )
    out = (
        ranked.group_by("layer", "a")
        .agg(
            (pl.col("before") < coverage * pl.col("total")).sum().alias("n_partners"),
            pl.len().alias("n_distinct_partners"),
            pl.col("n_ab").sum().alias("n_coactivations"),
        )
        .rename({"a": "expert"})
        .with_columns(pl.col("n_partners").mean().over("layer").alias("layer_mean"))
    )
    return out.select(list(FIXED_PARTNER_COLUMNS)).cast(_FIXED_SCHEMA).sort("layer", "expert")  # type: ignore[arg-type]
