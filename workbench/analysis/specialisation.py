"""Domain specialisation (docs/methods.md §2, OLMoE): which experts a label over-uses, relative to the other labels.

``share[l, e, t] = n(e ∈ S, label t) / N_t`` — the fraction of label-t tokens at layer l whose
top-k set contains expert e (sums to k over e). ``share_rest`` is the same ratio over the tokens
of every *other* label at that layer.

**Specialised** (the one definition the CLI, report, demo summary, notebook and dashboard use):
expert e is specialised for label t at layer l when t over-uses e relative to the other labels —
``q < alpha`` (default 0.05) in a one-sided label-permutation test of ``share > share_rest`` *and*
``share > share_rest``. Lift over uniform plays no part in it. See :func:`specialised_cells`.

Effect sizes (per row):

* ``specificity = share / share_rest`` — how many times more often a label-t token picks e than
  another label's token does (equal to the ratio of slot shares).
* ``log_odds`` — log odds ratio of the expert's *slot* share for t against the rest: with
  ``a = n(e, t)``, ``b = k·N_t − a``, ``c = n(e, rest)``, ``d = k·N_rest − c``,
  ``log((a + ½)/(b + ½)) − log((c + ½)/(d + ½))`` (Haldane–Anscombe ½ correction, so it stays
  finite for unused experts). ``lo_low``/``lo_high``: its 95% percentile bootstrap CI, label
  prompts resampled within each label (the label sizes stay as observed).
* ``lift = share / (k / E)`` — secondary: over uniform routing, not over the other labels; a
  generalist expert has a high lift for every label without being specialised for any.

Statistics (over prompts, the clusters; :mod:`workbench.analysis.stats`): ``ci_low``/``ci_high``
is the bootstrap CI of ``share``; ``p`` the one-sided permutation p of ``share − share_rest > 0``
(labels shuffled across prompts, +1 correction; NaN with a single label); ``q`` Benjamini–Hochberg
over all (layer, expert, label) rows. **Power**: by default (``n_perm_max="auto"``) cells that none
of the ``n_perm`` shuffles reached get more shuffles, as many as the map's number of tests needs
for them to reach ``q < alpha/2`` (a lone effect among 192 tests: 7,679 shuffles; see
:func:`_refine_floor` and :func:`~workbench.analysis.stats.auto_n_perm_max`). Without it, one true
specialist among 192 tests has q ≥ 192/1001 ≈ 0.19 at the 1,000-shuffle floor.

Prompts with a NULL label are left out (they belong to no domain), as are expert ids
``>= n_experts`` (shared pseudo-experts are never mixed into E). The per-prompt counting is
done in DuckDB (unnest the top-k lists, group by prompt, layer, expert); numpy does the
resampling on the resulting (prompts × experts) count matrices. Layers with the same prompts and
tokens per prompt (every layer of a capture) are resampled together: one set of label shuffles and
one set of within-label bootstrap draws serves all their experts (:class:`_DrawGroup`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from workbench.analysis.stats import (
    BLOCK,
    MIN_CI_PROMPTS,
    auto_n_perm_max,
    benjamini_hochberg,
    bootstrap_weights,
    cluster_permutation_pvalue,
    fits_float32,
    one_blas_thread,
    percentile_interval,
)
from workbench.store import Store, queries

__all__ = [
    "SPECIALISATION_COLUMNS",
    "domain_share_polars",
    "domain_specialisation",
    "is_specialised",
    "specialised_cells",
    "specialised_set",
]

SPECIALISATION_COLUMNS: tuple[str, ...] = (
    "layer", "expert", "label", "share", "share_rest", "specificity", "log_odds", "lo_low", "lo_high",
    "lift", "ci_low", "ci_high", "p", "q", "specialised", "n_tokens", "n_prompts",
)  # fmt: skip

_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32,
    "expert": pl.Int32,
    "label": pl.Utf8,
    "share": pl.Float64,
    "share_rest": pl.Float64,
    "specificity": pl.Float64,
    "log_odds": pl.Float64,
    "lo_low": pl.Float64,
    "lo_high": pl.Float64,
    "lift": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "p": pl.Float64,
    "q": pl.Float64,
    "specialised": pl.Boolean,
    "n_tokens": pl.Int64,
    "n_prompts": pl.Int64,
}


def is_specialised(alpha: float = 0.05) -> pl.Expr:
    """The definition, as a polars expression over the table: over-use relative to the other labels.

    ``q < alpha`` (one-sided permutation test of ``share > share_rest``, BH over the map) and
    ``share > share_rest``. NaN q (a single label) is never specialised. Every surface — the
    ``specialised`` column, the report, ``make demo``'s summary, the dashboard's stars and
    ``Run.specialists`` — goes through this expression.
    """
    q = pl.col("q").fill_nan(None).fill_null(1.0)
    return ((q < alpha) & (pl.col("share") > pl.col("share_rest"))).fill_null(False)


def specialised_cells(df: pl.DataFrame, alpha: float = 0.05) -> pl.DataFrame:
    """The specialised rows of a :func:`domain_specialisation` table, strongest effect first.

    Ranked by ``log_odds`` (then specificity, then q) — never by lift over uniform.
    """
    return df.filter(is_specialised(alpha)).sort(
        ["log_odds", "specificity", "q"], descending=[True, True, False], nulls_last=True
    )


def specialised_set(df: pl.DataFrame, alpha: float = 0.05) -> set[tuple[int, int, str]]:
    """``{(layer, expert, label)}`` of the specialised cells (what the surfaces must agree on)."""
    cells = df.filter(is_specialised(alpha)).select("layer", "expert", "label")
    return {(int(a), int(b), str(c)) for a, b, c in cells.iter_rows()}


def _n_tests(n_experts: Iterable[int], n_labels: int) -> int:
    return int(sum(int(e) for e in n_experts)) * max(n_labels, 1)


def _resolve_n_perm_max(n_perm_max: int | str | None, n_tests: int, n_perm: int, alpha: float) -> int | None:
    """``"auto"`` (default) → :func:`auto_n_perm_max`; ``None``/``"off"`` → no refinement; digits → int."""
    if isinstance(n_perm_max, str):
        text = n_perm_max.strip().lower()
        if text == "auto":
            return auto_n_perm_max(n_tests, n_perm, alpha) if n_perm > 0 else None
        if text in ("", "none", "off", "0"):
            return None
        n_perm_max = int(text)
    return None if n_perm_max is None else max(int(n_perm_max), n_perm)


def domain_specialisation(
    store: Store,
    run_id: str,
    *,
    layers: Iterable[int] | None = None,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    n_perm_max: int | str | None = "auto",
    alpha: float = 0.05,
) -> pl.DataFrame:
    """Share, share in the other labels, specificity, log-odds, lift, CIs, p, q and ``specialised`` per cell.

    One row per (layer, expert, label) for every routed expert ``0..E-1`` of each selected
    layer (unused experts get share 0) and every non-null label with tokens in that layer,
    sorted by layer, expert, label. ``n_tokens`` is N_t (label-t tokens at that layer),
    ``n_prompts`` the number of label-t prompts contributing. ``E`` and ``k`` come from the
    run's ``layers`` table. Deterministic for a given ``seed`` (p and q do not depend on
    ``n_boot``). ``n_perm_max``: ``"auto"`` sizes the floor refinement from the number of tests
    (see the module docstring), an int sets it, ``None`` turns it off (p floor ``1/(n_perm + 1)``).
    ``specialised`` is :func:`is_specialised` at ``alpha``.
    """
    layer_info = store.layers(run_id)  # raises UnknownRunError for an unknown run
    if layers is not None:
        wanted = {int(x) for x in layers}
        layer_info = layer_info.filter(pl.col("layer").is_in(sorted(wanted)))
    labels_df = queries.prompt_labels(store, run_id, labelled_only=True)
    layer_list = layer_info["layer"].to_list()
    selections = queries.selections_per_prompt(store, run_id, layer_list, labelled_only=True)
    tokens = queries.tokens_per_prompt(store, run_id, layer_list, labelled_only=True)
    label_names = sorted(set(labels_df["label"].to_list()))
    label_code = {name: i for i, name in enumerate(label_names)}
    prompt_ids = labels_df["prompt_id"].to_numpy().astype(np.int64)
    prompt_codes = np.array([label_code[x] for x in labels_df["label"].to_list()], dtype=np.int64)
    n_tests = _n_tests(layer_info["n_experts"].to_list(), len(label_names))
    auto = isinstance(n_perm_max, str) and n_perm_max.strip().lower() == "auto"
    refine = None if auto else _resolve_n_perm_max(n_perm_max, n_tests, n_perm, alpha)

    layers_data = [
        _layer_data(
            int(layer), int(n_experts), int(top_k),
            selections.filter(pl.col("layer") == layer), tokens.filter(pl.col("layer") == layer),
        )
        for layer, n_experts, top_k in layer_info.select("layer", "n_experts", "top_k").iter_rows()
    ]  # fmt: skip
    groups = [
        _DrawGroup(first, members, prompt_ids, prompt_codes, seed)
        for first, members in _same_prompt_groups(layers_data)
    ]

    def all_pvalues() -> list[np.ndarray]:
        if auto and n_perm > 0 and len(groups) == 1:
            # One set of shuffles covers the whole map: size the refinement from its cells at the floor.
            def sized(at_floor: int) -> int:
                return auto_n_perm_max(-(-n_tests // at_floor), n_perm, alpha)

            return [groups[0].pvalues(n_perm, sized)]
        ps = [g.pvalues(n_perm, refine) for g in groups]
        return _refine_floor(ps, groups, n_tests, n_perm, alpha) if auto and n_perm > 0 else ps

    # The bootstrap and the shuffles draw from separate streams: they run on two threads (numpy's
    # draws and products release the GIL) with the same results as one after the other.
    with one_blas_thread(), ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(lambda: [g.bootstrap(n_boot) for g in groups])
        ps = all_pvalues()
        boots = pending.result()
    frames = [
        frame
        for group, p, boot in zip(groups, ps, boots, strict=True)
        for frame in group.rows(p, boot, label_names)
    ]
    if not frames:
        return pl.DataFrame(schema=_SCHEMA)
    out = pl.concat(frames)
    out = out.with_columns(pl.Series("q", benjamini_hochberg(out["p"].to_numpy())))
    out = out.with_columns(is_specialised(alpha).alias("specialised"))
    return out.select(list(SPECIALISATION_COLUMNS)).cast(_SCHEMA).sort("layer", "expert", "label")  # type: ignore[arg-type]


def _refine_floor(
    ps: list[np.ndarray], groups: list[_DrawGroup], n_tests: int, n_perm: int, alpha: float
) -> list[np.ndarray]:
    """``n_perm_max="auto"`` when layers differ in their prompts: more shuffles for the cells at the floor.

    With R cells of the whole map at the floor ``1/(n_perm + 1)``, BH gives them
    ``q = n_tests / ((n + 1)·R)``; the floor is refined to ``n = auto_n_perm_max(n_tests / R)``
    shuffles, so that q is at most α/2 — for a lone specialist (R = 1) that is ``2·n_tests/α``; when
    many cells sit at the floor already (R·α/2 ≥ n_tests/(n_perm + 1)) nothing is rerun. Only groups
    with a floor cell are rerun, from their own seed, so the first ``n_perm`` shuffles and every
    other cell's p are the same bits. (When every layer has the same prompts — the usual case — one
    set of shuffles covers the map and :func:`~workbench.analysis.stats.cluster_permutation_pvalue`
    continues its stream instead of rerunning it.)
    """
    floor = 1.0 / (n_perm + 1.0)
    at_floor = [int((np.nan_to_num(p, nan=1.0) <= floor * (1 + 1e-9)).sum()) for p in ps]
    total = sum(at_floor)
    if total == 0:
        return ps
    n_max = auto_n_perm_max(int(np.ceil(n_tests / total)), n_perm, alpha)
    if n_max <= n_perm:
        return ps
    return [g.pvalues(n_perm, n_max) if n else p for g, p, n in zip(groups, ps, at_floor, strict=True)]


class _LayerData(NamedTuple):
    """One layer's dense per-prompt matrices over the labelled prompts that have tokens in it."""

    layer: int
    n_experts: int
    top_k: int
    pids: np.ndarray  # (n,) sorted prompt ids
    den: np.ndarray  # (n,) tokens per prompt
    counts: np.ndarray  # (n, E) selections of each expert per prompt


def _layer_data(
    layer: int, n_experts: int, top_k: int, selections: pl.DataFrame, tokens: pl.DataFrame
) -> _LayerData | None:
    if tokens.height == 0 or n_experts <= 0:
        return None
    tok_pid = tokens["prompt_id"].to_numpy().astype(np.int64)
    order = np.argsort(tok_pid)
    tok_pid = tok_pid[order]
    den = tokens["n_tokens"].to_numpy().astype(np.float64)[order]
    counts = np.zeros((tok_pid.size, n_experts))
    sel = selections.filter((pl.col("expert") >= 0) & (pl.col("expert") < n_experts))
    rows = np.searchsorted(tok_pid, sel["prompt_id"].to_numpy().astype(np.int64))
    counts[rows, sel["expert"].to_numpy().astype(np.int64)] = sel["n"].to_numpy()
    return _LayerData(layer, n_experts, top_k, tok_pid, den, counts)


def _same_prompt_groups(layers_data: list[_LayerData | None]) -> list[tuple[int, list[_LayerData]]]:
    """Layers that share their prompts and token counts, as ``(index of the first, [their data])``.

    Such layers share their shuffles and bootstrap draws (one draw serves every layer's experts):
    in a capture every prompt has the same tokens at every layer, so there is one group.
    """
    groups: list[tuple[int, list[_LayerData]]] = []
    for i, data in enumerate(layers_data):
        if data is None:
            continue
        for _, members in groups:
            if np.array_equal(members[0].pids, data.pids) and np.array_equal(members[0].den, data.den):
                members.append(data)
                break
        else:
            groups.append((i, [data]))
    return groups


class _DrawGroup:
    """Layers with the same prompts, tested and bootstrapped together with one stream per group.

    The stream is seeded by ``(seed, index of the group's first selected layer)`` and split into a
    permutation stream and a bootstrap stream, so p-values do not depend on ``n_boot``.
    """

    def __init__(
        self,
        first: int,
        layers: list[_LayerData],
        prompt_ids: np.ndarray,
        prompt_codes: np.ndarray,
        seed: int,
    ) -> None:
        self.layers = layers
        base = layers[0]
        self.den = base.den
        self.codes = prompt_codes[np.searchsorted(prompt_ids, base.pids)]
        self.present = np.unique(self.codes)
        self.counts = np.hstack([d.counts for d in layers])  # (n, Σ E) every layer's experts side by side
        self.offsets = np.cumsum([0] + [d.n_experts for d in layers])
        self.boot_seed, self.perm_seed = np.random.SeedSequence([seed, first]).spawn(2)

    def pvalues(self, n_perm: int, n_perm_max: int | Callable[[int], int] | None) -> np.ndarray:
        """One-sided permutation p of ``share > share_rest``, ``(labels present, Σ E)``."""
        _, p = cluster_permutation_pvalue(
            self.counts, self.den, np.searchsorted(self.present, self.codes), n_perm=n_perm,
            seed=np.random.default_rng(self.perm_seed), alternative="greater", n_perm_max=n_perm_max,
        )  # fmt: skip
        if self.present.size < 2:
            p = np.full_like(p, np.nan)
        return p

    def bootstrap(self, n_boot: int) -> tuple[np.ndarray, np.ndarray] | None:
        if n_boot <= 0:
            return None
        return _label_bootstrap(
            self.counts, self.den, self.codes, self.present, n_boot, np.random.default_rng(self.boot_seed)
        )

    def rows(
        self, p: np.ndarray, boot: tuple[np.ndarray, np.ndarray] | None, label_names: list[str]
    ) -> list[pl.DataFrame]:
        out = []
        for data, lo, hi in zip(self.layers, self.offsets[:-1], self.offsets[1:], strict=True):
            part = None if boot is None else (boot[0][:, :, lo:hi], boot[1])
            out.append(_layer_frame(data, self.codes, self.present, p[:, lo:hi], part, label_names))
        return out


def _label_bootstrap(
    counts: np.ndarray,
    den: np.ndarray,
    codes: np.ndarray,
    present: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Per label, ``n_boot`` replicate sums of ``counts`` ``(G, n_boot, m)`` and of ``den`` ``(G, n_boot)``.

    Each label's prompts are resampled with replacement within the label
    (:func:`~workbench.analysis.stats.bootstrap_weights`, in blocks), label after label from one
    stream: the same draws, and so the same share CIs, as
    :func:`~workbench.analysis.stats.cluster_bootstrap` run label by label. Every column (every
    layer's experts) shares the draws of its label.
    """
    n_e = counts.shape[1]
    sums = np.empty((present.size, n_boot, n_e))
    dens = np.empty((present.size, n_boot))
    both = np.hstack([counts, den[:, None]])  # whole numbers: the products are exact
    for gi, code in enumerate(present):
        rows = both[codes == code]
        n = rows.shape[0]
        dtype: type[np.floating[Any]] = np.float32 if fits_float32(rows, n, n) else np.float64
        rows = rows.astype(dtype)
        for start in range(0, n_boot, BLOCK):
            b = min(BLOCK, n_boot - start)
            block = (bootstrap_weights(rng, n, b, dtype) @ rows).astype(np.float64)
            sums[gi, start : start + b], dens[gi, start : start + b] = block[:, :n_e], block[:, n_e]
    return sums, dens


def _log_odds(a: np.ndarray, slots: np.ndarray, c: np.ndarray, slots_rest: np.ndarray) -> np.ndarray:
    """Haldane–Anscombe log odds ratio of ``a`` of ``slots`` against ``c`` of ``slots_rest``."""
    odds: np.ndarray = np.log((a + 0.5) / (slots - a + 0.5)) - np.log((c + 0.5) / (slots_rest - c + 0.5))
    return odds


def _label_intervals(reps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval ``(G, E)`` of every label's replicates ``(G, n_boot, E)``, in one call."""
    g, n_boot, e = reps.shape
    low, high = percentile_interval(reps.transpose(1, 0, 2).reshape(n_boot, g * e), 0.025)
    return np.asarray(low).reshape(g, e), np.asarray(high).reshape(g, e)


def _layer_frame(
    data: _LayerData,
    codes: np.ndarray,
    present: np.ndarray,
    p_all: np.ndarray,
    boot: tuple[np.ndarray, np.ndarray] | None,
    label_names: list[str],
) -> pl.DataFrame:
    """Rows for one layer, without q (BH runs over all layers together)."""
    layer, n_experts, top_k, den, counts = data.layer, data.n_experts, data.top_k, data.den, data.counts
    # Per-label totals: selections of each expert (G, E) and tokens (G,); "rest" = all other labels.
    member = (codes[None, :] == present[:, None]).astype(np.float64)
    hits, n_tok = member @ counts, member @ den
    rest_hits, rest_tok = hits.sum(axis=0) - hits, n_tok.sum() - n_tok
    with np.errstate(divide="ignore", invalid="ignore"):
        share = hits / n_tok[:, None]
        share_rest = np.where(rest_tok[:, None] > 0, rest_hits / np.maximum(rest_tok, 1)[:, None], np.nan)
        specificity = share / share_rest
    log_odds = _log_odds(hits, top_k * n_tok[:, None], rest_hits, top_k * rest_tok[:, None])
    if present.size < 2:
        log_odds = np.full_like(log_odds, np.nan)
    nan = np.full(share.shape, np.nan)
    ci_low, ci_high, lo_low, lo_high = nan, nan.copy(), nan.copy(), nan.copy()
    if boot is not None:
        sums, dens = boot
        with np.errstate(divide="ignore", invalid="ignore"):
            rep_share = sums / dens[:, :, None]
        ci_low, ci_high = _label_intervals(rep_share)
        if present.size >= 2:
            rep_lo = _log_odds(
                sums,
                top_k * dens[:, :, None],
                sums.sum(axis=0) - sums,
                top_k * (dens.sum(axis=0) - dens)[:, :, None],
            )
            lo_low, lo_high = _label_intervals(rep_lo)
        few = member.sum(axis=1) < MIN_CI_PROMPTS  # one prompt: every replicate equals the estimate
        ci_low[few], ci_high[few], lo_low[few], lo_high[few] = np.nan, np.nan, np.nan, np.nan
    uniform = top_k / n_experts
    g, e = present.size, n_experts
    return pl.DataFrame(
        {
            "layer": np.full(g * e, layer, np.int32),
            "expert": np.tile(np.arange(e, dtype=np.int32), g),
            "label": [label_names[int(code)] for code in present for _ in range(e)],
            "share": share.ravel(),
            "share_rest": share_rest.ravel(),
            "specificity": specificity.ravel(),
            "log_odds": log_odds.ravel(),
            "lo_low": lo_low.ravel(),
            "lo_high": lo_high.ravel(),
            "lift": (share / uniform).ravel(),
            "ci_low": ci_low.ravel(),
            "ci_high": ci_high.ravel(),
            "p": p_all.ravel(),
            "q": np.full(g * e, np.nan),
            "n_tokens": np.repeat(n_tok.astype(np.int64), e),
            "n_prompts": np.repeat(member.sum(axis=1).astype(np.int64), e),
        }
    )


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
