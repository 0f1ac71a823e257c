"""Domain specialisation (METHODS.md §2, OLMoE): the share of a label's tokens routed to each expert.

``share[l, e, t] = n(e ∈ S, label t) / N_t`` — the fraction of label-t tokens at layer l
whose top-k set contains expert e. Over e it sums to k (every token selects k experts).
``lift = share / (k / E)``: 1 is what uniform routing gives, 5 means five times uniform.

Statistics (all over prompts, the clusters; see :mod:`workbench.analysis.stats`):

* 95% CI: percentile bootstrap of the share, resampling label-t prompts with replacement.
* p: one-sided label-permutation test of ``share_t > share_rest``, where ``share_rest`` is
  the same ratio over the tokens of all *other* labels; labels are shuffled across prompts
  (each prompt keeps its tokens), with the +1 correction. A small p says "this expert is
  used more by label t than by the others", which is what "specialised for t" means;
  under-use is not reported as specialisation. With a single label there is nothing to
  compare against and p, q are NaN.
* q: Benjamini–Hochberg over all (layer, expert, label) rows of the result.

Prompts with a NULL label are left out (they belong to no domain), as are expert ids
``>= n_experts`` (shared pseudo-experts are never mixed into E). The per-prompt counting is
done in DuckDB (unnest the top-k lists, group by prompt, layer, expert); numpy does the
resampling on the resulting (prompts × experts) count matrices, one layer at a time.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from workbench.analysis.common import layer_filter, map_ordered
from workbench.analysis.stats import (
    benjamini_hochberg,
    cluster_bootstrap,
    cluster_permutation_pvalue,
    one_blas_thread,
)
from workbench.store import Store

__all__ = ["SPECIALISATION_COLUMNS", "domain_share_polars", "domain_specialisation"]

SPECIALISATION_COLUMNS: tuple[str, ...] = (
    "layer", "expert", "label", "share", "lift", "ci_low", "ci_high", "p", "q", "n_tokens", "n_prompts",
)  # fmt: skip

_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32,
    "expert": pl.Int32,
    "label": pl.Utf8,
    "share": pl.Float64,
    "lift": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "p": pl.Float64,
    "q": pl.Float64,
    "n_tokens": pl.Int64,
    "n_prompts": pl.Int64,
}


def _per_prompt_counts(
    store: Store, run_id: str, layers: Iterable[int] | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(prompt_id, layer, expert, n) selections and (prompt_id, layer, n_tokens), labelled prompts only."""
    clause, values = layer_filter(layers)
    labelled = "prompt_id IN (SELECT prompt_id FROM prompts WHERE run_id = ? AND label IS NOT NULL)"
    selections = store.sql(
        "SELECT prompt_id, layer, CAST(expert AS INTEGER) AS expert, count(*) AS n FROM ("
        "  SELECT prompt_id, layer, unnest(experts) AS expert FROM routing"
        f"  WHERE run_id = ?{clause} AND {labelled}"
        ") GROUP BY prompt_id, layer, expert",
        [run_id, *values, run_id],
    )
    tokens = store.sql(
        "SELECT prompt_id, layer, count(*) AS n_tokens FROM routing"
        f" WHERE run_id = ?{clause} AND {labelled} GROUP BY prompt_id, layer",
        [run_id, *values, run_id],
    )
    return selections, tokens


def domain_specialisation(
    store: Store,
    run_id: str,
    *,
    layers: Iterable[int] | None = None,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    n_perm_max: int | None = None,
) -> pl.DataFrame:
    """Share, lift, prompt-bootstrap CI, permutation p and BH q per (layer, expert, label).

    One row per (layer, expert, label) for every routed expert ``0..E-1`` of each selected
    layer (unused experts get share 0) and every non-null label with tokens in that layer,
    sorted by layer, expert, label. ``n_tokens`` is N_t (label-t tokens at that layer),
    ``n_prompts`` the number of label-t prompts contributing. ``E`` and ``k`` come from the
    run's ``layers`` table. Deterministic for a given ``seed``. ``n_perm_max`` continues the
    shuffles up to that many for the cells no shuffle reached (their p falls below the
    ``1/(n_perm + 1)`` floor, which on a large map keeps BH from finding a lone specialist);
    see :func:`~workbench.analysis.stats.cluster_permutation_pvalue`. Other cells are unchanged.
    """
    layer_info = store.layers(run_id)  # raises UnknownRunError for an unknown run
    if layers is not None:
        wanted = {int(x) for x in layers}
        layer_info = layer_info.filter(pl.col("layer").is_in(sorted(wanted)))
    labels_df = store.sql(
        "SELECT prompt_id, label FROM prompts WHERE run_id = ? AND label IS NOT NULL ORDER BY prompt_id",
        [run_id],
    )
    selections, tokens = _per_prompt_counts(store, run_id, layer_info["layer"].to_list())
    label_names = sorted(set(labels_df["label"].to_list()))
    label_code = {name: i for i, name in enumerate(label_names)}
    prompt_ids = labels_df["prompt_id"].to_numpy().astype(np.int64)
    prompt_codes = np.array([label_code[x] for x in labels_df["label"].to_list()], dtype=np.int64)

    def layer_rows(item: tuple[int, tuple[int, int, int]]) -> pl.DataFrame | None:
        """:func:`_one_layer` for the li-th selected layer (seeded by ``(seed, li)``)."""
        li, (layer, n_experts, top_k) = item
        return _one_layer(
            int(layer), int(n_experts), int(top_k),
            selections.filter(pl.col("layer") == layer), tokens.filter(pl.col("layer") == layer),
            prompt_ids, prompt_codes, label_names,
            n_boot=n_boot, n_perm=n_perm, n_perm_max=n_perm_max, seed=np.random.SeedSequence([seed, li]),
        )  # fmt: skip

    # Each layer resamples from its own seed, so the layers can run on two threads (numpy's
    # draws and products release the GIL) with the same results in the same order.
    items = list(enumerate(layer_info.select("layer", "n_experts", "top_k").iter_rows()))
    with one_blas_thread():
        frames = [f for f in map_ordered(layer_rows, items) if f is not None]
    if not frames:
        return pl.DataFrame(schema=_SCHEMA)
    out = pl.concat(frames)
    out = out.with_columns(pl.Series("q", benjamini_hochberg(out["p"].to_numpy())))
    return out.select(list(SPECIALISATION_COLUMNS)).cast(_SCHEMA).sort("layer", "expert", "label")  # type: ignore[arg-type]


def _one_layer(
    layer: int,
    n_experts: int,
    top_k: int,
    selections: pl.DataFrame,
    tokens: pl.DataFrame,
    prompt_ids: np.ndarray,
    prompt_codes: np.ndarray,
    label_names: list[str],
    *,
    n_boot: int,
    n_perm: int,
    seed: np.random.SeedSequence,
    n_perm_max: int | None = None,
) -> pl.DataFrame | None:
    """Rows for one layer, without q (BH runs over all layers together)."""
    if tokens.height == 0 or n_experts <= 0:
        return None
    # Dense per-prompt matrices over the prompts that have tokens in this layer.
    tok_pid = tokens["prompt_id"].to_numpy().astype(np.int64)
    order = np.argsort(tok_pid)
    tok_pid = tok_pid[order]
    den = tokens["n_tokens"].to_numpy().astype(np.float64)[order]
    codes = prompt_codes[np.searchsorted(prompt_ids, tok_pid)]
    counts = np.zeros((tok_pid.size, n_experts))
    sel = selections.filter((pl.col("expert") >= 0) & (pl.col("expert") < n_experts))
    rows = np.searchsorted(tok_pid, sel["prompt_id"].to_numpy().astype(np.int64))
    counts[rows, sel["expert"].to_numpy().astype(np.int64)] = sel["n"].to_numpy()

    boot_seed, perm_seed = seed.spawn(2)
    present = np.unique(codes)
    _, p_all = cluster_permutation_pvalue(
        counts, den, np.searchsorted(present, codes), n_perm=n_perm,
        seed=np.random.default_rng(perm_seed), alternative="greater", n_perm_max=n_perm_max,
    )  # fmt: skip
    if present.size < 2:
        p_all = np.full_like(p_all, np.nan)
    boot_rng = np.random.default_rng(boot_seed)
    uniform = top_k / n_experts
    parts: list[pl.DataFrame] = []
    for gi, code in enumerate(present):
        mask = codes == code
        share, low, high = cluster_bootstrap(counts[mask], den[mask], n_boot=n_boot, seed=boot_rng)
        parts.append(
            pl.DataFrame(
                {
                    "layer": np.full(n_experts, layer, np.int32),
                    "expert": np.arange(n_experts, dtype=np.int32),
                    "label": [label_names[int(code)]] * n_experts,
                    "share": share,
                    "lift": share / uniform,
                    "ci_low": low,
                    "ci_high": high,
                    "p": p_all[gi],
                    "q": np.full(n_experts, np.nan),
                    "n_tokens": np.full(n_experts, int(den[mask].sum()), np.int64),
                    "n_prompts": np.full(n_experts, int(mask.sum()), np.int64),
                }
            )
        )
    return pl.concat(parts)


def domain_share_polars(routing_df: pl.DataFrame, prompts_df: pl.DataFrame) -> pl.DataFrame:
    """Straightforward polars implementation of the share alone (a cross-check of the SQL path).

    ``routing_df`` needs ``prompt_id, layer, experts``; ``prompts_df`` needs ``prompt_id,
    label``. Returns ``layer, expert, label, share`` for the (layer, expert, label) triples
    that occur (unused experts are absent rather than 0), null labels excluded.
    """
    labelled = routing_df.select("prompt_id", "layer", "experts").join(
        prompts_df.select("prompt_id", "label").filter(pl.col("label").is_not_null()), on="prompt_id"
    )
    totals = labelled.group_by("layer", "label").agg(pl.len().alias("n_tokens"))
    hits = (
        labelled.explode("experts")
        .rename({"experts": "expert"})
        .group_by("layer", "label", "expert")
        .agg(pl.len().alias("n"))
    )
    return (
        hits.join(totals, on=["layer", "label"])
        .select(
            pl.col("layer").cast(pl.Int32),
            pl.col("expert").cast(pl.Int32),
            pl.col("label"),
            (pl.col("n").cast(pl.Float64) / pl.col("n_tokens").cast(pl.Float64)).alias("share"),
        )
        .sort("layer", "expert", "label")
    )
