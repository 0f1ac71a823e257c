"""Agreement between expert-relevance scorers (docs/methods.md §2, last bullet).

Spearman rank correlation, per label, between the per-(layer, expert) scores of domain
specialisation (``lift``), ESFT (``gs``, ``tsr``) and TCESS (``tcess``) on the same run, each
with a Fisher z 95% CI and a permutation p (+1 correction) over the (layer, expert) rows
(:func:`workbench.analysis.rank.rank_correlation`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from workbench.analysis.common import layer_info
from workbench.analysis.rank import rank_correlation
from workbench.analysis.relevance import esft_scores, tcess
from workbench.store import Store

_KEYS = ["layer", "expert", "label"]
AGREEMENT_COLUMNS = (
    "label",
    "scorer_a",
    "scorer_b",
    "spearman",
    "n",
    "note",
    "ci_low",
    "ci_high",
    "p",
    "p_floor",
)
#: shuffles behind each agreement p (floor 1/1000)
AGREEMENT_PERMUTATIONS = 999
_SCHEMA = {
    "label": pl.Utf8,
    "scorer_a": pl.Utf8,
    "scorer_b": pl.Utf8,
    "spearman": pl.Float64,
    "n": pl.Int64,
    "note": pl.Utf8,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "p": pl.Float64,
    "p_floor": pl.Float64,
}


def _with_lift(esft: pl.DataFrame, info: pl.DataFrame) -> pl.DataFrame:
    """ESFT's rows with domain specialisation's ``lift`` added, from the same counts.

    Over the label's tokens N at a layer, ESFT's ``tsr = n / (N·k)`` and specialisation's
    ``share = Σ_p n_p / Σ_p N_p = n / N`` count the same selections n of the same tokens, so
    ``n = round(tsr·N·k)`` exactly (an integer far below 2^52) and ``lift = (n / N) / (k / E)``
    is computed as :func:`~workbench.analysis.specialisation.domain_specialisation` does, to
    the same bits, without its second grouped pass over the routing table.
    """
    frame = esft.join(info.select("layer", "n_experts", "top_k"), on="layer", how="left")
    n_tokens = frame["n_tokens"].to_numpy().astype(np.float64)
    top_k = frame["top_k"].to_numpy().astype(np.float64)
    uniform = top_k / frame["n_experts"].to_numpy().astype(np.float64)
    selected = np.round(frame["tsr"].to_numpy() * n_tokens * top_k)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(n_tokens > 0, selected / np.where(n_tokens > 0, n_tokens, 1.0), np.nan) / uniform
    return frame.with_columns(pl.Series("lift", lift)).drop("n_experts", "top_k")


def scorer_scores(
    store: Store, run_id: str, *, layers: Iterable[int] | None = None, n_boot: int = 0, n_perm: int = 0
) -> tuple[pl.DataFrame, str | None]:
    """Joined per-(layer, expert, label) scores ``lift, gs, tsr[, tcess]`` and a note (or None).

    ``tcess`` is left out, with a note saying why, when the run has no router logits. ``lift``
    is domain specialisation's point estimate, derived from ESFT's counts (:func:`_with_lift`);
    it does not depend on ``n_boot`` / ``n_perm``, which are kept for compatibility.
    """
    layer_list = None if layers is None else [int(x) for x in layers]
    # TCESS streams the logits (numpy, its own DuckDB cursor) while ESFT groups in DuckDB:
    # running it on a second thread overlaps the two.
    with ThreadPoolExecutor(max_workers=1) as pool:
        tc_future = pool.submit(tcess, store, run_id, layers=layer_list)
        esft = esft_scores(store, run_id, layers=layer_list)
        info = layer_info(store, run_id, layer_list)
    joined = _with_lift(esft, info).select(*_KEYS, "lift", "gs", "tsr")
    note: str | None = None
    try:
        tc = tc_future.result()
    except ValueError as exc:
        note = f"tcess skipped: {exc}"
    else:
        joined = joined.join(tc.select(*_KEYS, "tcess"), on=_KEYS, how="inner")
    return joined.sort(_KEYS), note


def scorer_agreement(
    store: Store, run_id: str, *, layers: Iterable[int] | None = None, n_boot: int = 0, n_perm: int = 0
) -> pl.DataFrame:
    """Spearman rank correlation between each pair of scorers, per label, over (layer, expert) rows.

    Columns ``label, scorer_a, scorer_b, spearman, n, note, ci_low, ci_high, p, p_floor`` (Fisher z
    95% CI; permutation p over the rows with :data:`AGREEMENT_PERMUTATIONS` shuffles, and its floor). Scorers are ``lift`` (domain
    specialisation), ``gs`` and ``tsr`` (ESFT) and ``tcess`` (PreMoe; only when the run has
    router logits, otherwise absent and ``note`` says why). ``n`` is the number of (layer,
    expert) rows correlated; ``spearman`` is NaN where a score is constant within the label.
    ``n_boot`` / ``n_perm`` are accepted for compatibility: the lift is a point estimate.
    """
    scores, note = scorer_scores(store, run_id, layers=layers, n_boot=n_boot, n_perm=n_perm)
    scorers = [c for c in ("lift", "gs", "tsr", "tcess") if c in scores.columns]
    rows: list[dict[str, object]] = []
    for label in sorted(set(scores["label"].to_list())):
        part = scores.filter(pl.col("label") == label)
        for a, b in itertools.combinations(scorers, 2):
            x = part[a].to_numpy().astype(np.float64)
            y = part[b].to_numpy().astype(np.float64)
            rho = float("nan")
            if x.size >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rho = float(spearmanr(x, y).statistic)
            stats = rank_correlation(x, y, n_perm=AGREEMENT_PERMUTATIONS)
            rows.append(
                {
                    "label": label,
                    "scorer_a": a,
                    "scorer_b": b,
                    "spearman": rho,
                    "n": int(x.size),
                    "note": note,
                    **{k: stats[k] for k in ("ci_low", "ci_high", "p", "p_floor")},
                }
            )
    if not rows:
        return pl.DataFrame(schema=_SCHEMA)
    return pl.DataFrame(rows, schema=_SCHEMA)
