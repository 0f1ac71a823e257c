"""Correlational resonance maps (docs/methods.md §5; fTRI, MoTE, SteerMoE's detection).

Given a contrast set — *target* prompts that show a behaviour B and *control* prompts that do
not, by label — every routed expert (l, e) gets two scores:

* ``rd`` (SteerMoE's risk difference): ``a1/(a1+d1) − a0/(a0+d0)``, the rate at which target
  tokens select e minus the rate for control tokens (a = tokens where e ∈ S, d = where not).
  Tokens are pooled within a class, i.e. a ratio of sums over prompts.
* ``ftri``: a per-token *rate* of gate weight. Per prompt p, ``r[p, e] = Σ_i g[i, e] / n_p``,
  the mean gate weight on e over the prompt's ``n_p`` tokens in the span (0 on tokens that did
  not select e); ``ftri = mean_{p∈T} r[p, e] − mean_{p∈C} r[p, e]``, each prompt counting once
  in its class. It was the *summed* gate weight per prompt until issue 12: summed over experts
  that equals the mean length difference of the two classes (every token spends its whole
  gate mass somewhere), so long target prompts made every expert "resonate". As a rate,
  ``Σ_e ftri = 0`` whenever the model's gate weights sum to 1 per token (renormalised top-k),
  and prompts that differ only in length give ftri ≈ 0. Versus ``rd``: rd counts selections
  and pools tokens (long prompts weigh more); ftri weighs each selection by its gate weight
  and each prompt equally.

``ci_low``/``ci_high``, ``p`` and ``q`` refer to the score named in ``method`` (``rd`` by
default). The CI is a stratified prompt-cluster bootstrap (target and control prompts are
resampled separately, so both classes keep their size); p is a two-sided permutation test:
class labels are shuffled across prompts, or — when ``paired`` and the prompts carry
``pair_id`` — swapped within each (target, control) pair, which keeps the matching; q is
Benjamini–Hochberg over the whole L×E map.

``span`` restricts the tokens: ``"all"`` (default), ``"last:N"`` / ``"first:N"`` (the last or
first N tokens of each prompt) or ``"positions:A-B"`` (positions A..B inclusive). Prompts with
no token in the span drop out.

These scores are correlational: an expert can fire more on the target without causing the
behaviour. The causal map (``effect``) needs the model and lives in the interventions package;
always report the rank correlation between the two.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from workbench.analysis.common import layer_info
from workbench.analysis.contrast import contrast_test
from workbench.analysis.stats import benjamini_hochberg
from workbench.analysis.tokens import token_scheme, with_token_text
from workbench.store import Store, queries
from workbench.store.queries import SPAN_HELP, TokenSpan

__all__ = [
    "RESONANCE_COLUMNS", "SPAN_HELP", "TokenSpan", "default_contrast", "resonance", "resonance_map",
    "resonance_tokens",
]  # fmt: skip

RESONANCE_COLUMNS: tuple[str, ...] = (
    "layer", "expert", "rd", "ftri", "method", "ci_low", "ci_high", "p", "q",
    "rate_target", "rate_control", "n_target", "n_control",
)  # fmt: skip

_SCHEMA: dict[str, type[pl.DataType]] = {
    "layer": pl.Int32, "expert": pl.Int32, "rd": pl.Float64, "ftri": pl.Float64, "method": pl.Utf8,
    "ci_low": pl.Float64, "ci_high": pl.Float64, "p": pl.Float64, "q": pl.Float64,
    "rate_target": pl.Float64, "rate_control": pl.Float64, "n_target": pl.Int64, "n_control": pl.Int64,
}  # fmt: skip


def _classes(store: Store, run_id: str, target: str, control: str) -> pl.DataFrame:
    """(prompt_id, is_target, pair_id) of the contrast set's prompts; errors name the labels."""
    prompts = queries.contrast_prompts(store, run_id, target, control)
    if target == control:
        raise ValueError(f"target and control are the same label ({target!r}); pick two labels")
    have = prompts.group_by("is_target").len()
    counts = {bool(k): int(v) for k, v in have.iter_rows()}
    if not counts.get(True) or not counts.get(False):
        labels = queries.distinct_labels(store, run_id)
        missing = [lab for lab, flag in ((target, True), (control, False)) if not counts.get(flag)]
        raise ValueError(f"run {run_id!r} has no prompts labelled {missing}; its labels are {labels}")
    return prompts


def _pairs(classes: pl.DataFrame) -> np.ndarray | None:
    """(n_pairs, 2) row indices (target, control) of complete pairs, or None when there are none."""
    with_pair = classes.with_row_index("row").filter(pl.col("pair_id").is_not_null())
    wide = with_pair.group_by("pair_id").agg(
        pl.col("row").filter(pl.col("is_target")).first().alias("t"),
        pl.col("row").filter(~pl.col("is_target")).first().alias("c"),
        pl.len().alias("n"),
    )
    wide = wide.filter(pl.col("t").is_not_null() & pl.col("c").is_not_null() & (pl.col("n") == 2))
    if wide.height == 0:
        return None
    return wide.sort("pair_id").select("t", "c").to_numpy().astype(np.int64)


def resonance_map(
    store: Store,
    run_id: str,
    *,
    target: str,
    control: str,
    span: str | None = None,
    method: str = "rd",
    paired: bool = True,
    layers: Iterable[int] | None = None,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
) -> pl.DataFrame:
    """The L×E correlational resonance map of ``target`` vs ``control`` prompts (see module doc).

    One row per (layer, routed expert), sorted by layer and expert. Columns (public API, stored
    by ``resonate``): ``rd`` and ``ftri`` (see the module doc; ``ftri`` is the per-token gate-weight
    rate difference since issue 12, no longer a per-prompt gate-mass sum); ``method`` and the
    ``ci_low``/``ci_high``/``p``/``q`` of that method's score; ``rate_target`` and
    ``rate_control``, the two selection rates behind ``rd``; ``n_target``/``n_control``, the
    prompts that have tokens in the span. Deterministic for a given ``seed``.
    """
    if method not in ("rd", "ftri"):
        raise ValueError(f"method must be 'rd' or 'ftri' (the causal map needs the model), not {method!r}")
    classes = _classes(store, run_id, target, control)
    info = layer_info(store, run_id, layers)
    tokens_in = TokenSpan.parse(span)
    layer_list = info["layer"].to_list()
    # Per (prompt, layer): tokens in span; per (prompt, layer, expert): selections and gate mass.
    tokens = queries.span_token_counts(store, run_id, target, control, tokens_in, layer_list)
    picks = queries.span_selections(store, run_id, target, control, tokens_in, layer_list)
    # A run of expert ids only (imported from a serving engine) has no gate weights: no fTRI.
    ids_only = picks.height > 0 and picks["g"].null_count() == picks.height
    if ids_only and method == "ftri":
        raise ValueError(
            f"run {run_id!r} stores expert ids only (no gate weights), and fTRI needs them; use method='rd'"
        )
    row_of = {int(pid): i for i, pid in enumerate(classes["prompt_id"].to_list())}
    is_target_all = classes["is_target"].to_numpy().astype(bool)
    pairs = _pairs(classes) if paired else None
    frames = []
    for li, (layer, n_experts) in enumerate(info.select("layer", "n_experts").iter_rows()):
        tok = tokens.filter(pl.col("layer") == layer)
        if tok.height == 0:
            continue
        n_prompts = classes.height
        den = np.zeros(n_prompts)
        den[[row_of[int(x)] for x in tok["prompt_id"].to_list()]] = tok["n"].to_numpy()
        sel = picks.filter((pl.col("layer") == layer) & (pl.col("expert") < n_experts))
        rows = np.array([row_of[int(x)] for x in sel["prompt_id"].to_list()], dtype=np.int64)
        cols = sel["expert"].to_numpy().astype(np.int64)
        counts = np.zeros((n_prompts, int(n_experts)))
        mass = np.zeros((n_prompts, int(n_experts)))
        np.add.at(counts, (rows, cols), sel["n"].to_numpy())
        np.add.at(mass, (rows, cols), sel["g"].to_numpy())
        present = den > 0
        keep_pairs = None
        if pairs is not None:  # paired only when every participating prompt is in a complete pair
            complete = pairs[present[pairs[:, 0]] & present[pairs[:, 1]]]
            if len(complete) >= 2 and 2 * len(complete) == int(present.sum()):
                keep_pairs = complete
        ones = present.astype(np.float64)
        # fTRI: each prompt's per-token gate-weight rate (mass / its tokens in the span) over a
        # denominator of 1 per present prompt, so the "ratio of sums" is the class mean of rates.
        per_token = np.divide(mass, den[:, None], out=np.zeros_like(mass), where=present[:, None])
        rng_seed = np.random.SeedSequence([seed, li])
        # Resampling only for the score the CI, p and q refer to; the other needs its point estimate.
        rs = (n_boot, n_perm) if method == "rd" else (0, 0)
        fs = (n_boot, n_perm) if method == "ftri" else (0, 0)
        rd = contrast_test(
            counts, den, is_target_all, pairs=keep_pairs, n_boot=rs[0], n_perm=rs[1], seed=rng_seed
        )
        ftri = contrast_test(
            per_token, ones, is_target_all, pairs=keep_pairs, n_boot=fs[0], n_perm=fs[1], seed=rng_seed
        )
        chosen = rd if method == "rd" else ftri
        tgt, ctl = is_target_all & present, ~is_target_all & present
        frames.append(
            pl.DataFrame(
                {
                    "layer": np.full(int(n_experts), layer),
                    "expert": np.arange(int(n_experts)),
                    "rd": rd.diff,
                    "ftri": ftri.diff,
                    "method": [method] * int(n_experts),
                    "ci_low": chosen.low,
                    "ci_high": chosen.high,
                    "p": chosen.p,
                    "q": np.nan,
                    "rate_target": rd.rate_target,
                    "rate_control": rd.rate_control,
                    "n_target": np.full(int(n_experts), int(tgt.sum())),
                    "n_control": np.full(int(n_experts), int(ctl.sum())),
                }
            )
        )
    if not frames:
        raise ValueError(
            f"run {run_id!r}: no routed tokens of {target!r}/{control!r} in span {span or 'all'!r}"
        )
    out = pl.concat(frames, how="vertical_relaxed")
    out = out.with_columns(pl.Series("q", benjamini_hochberg(out["p"].to_numpy())))
    if ids_only:  # fTRI is unknown, not a number computed from missing weights
        out = out.with_columns(pl.lit(None, pl.Float64).alias("ftri"))
    return out.select(list(RESONANCE_COLUMNS)).cast(_SCHEMA).sort("layer", "expert")  # type: ignore[arg-type]


def default_contrast(store: Store, run_id: str) -> tuple[str, str] | None:
    """The run's contrast set (target, control) when it is unambiguous, else None.

    A run is a contrast set when its paired prompts (``pair_id``) carry exactly two labels;
    the label of the pair member that comes first in the probe file is the target (the
    convention of ``probes/refusal.jsonl``: harmful request, then its benign twin).
    """
    firsts = queries.pair_first_labels(store, run_id)
    labels = queries.paired_labels(store, run_id)
    if len(labels) != 2 or firsts.height == 0:
        return None
    target = str(firsts["label"][0])
    return target, next(str(x) for x in labels if x != target)


def resonance(
    store: Store, run_id: str, *, target: str | None = None, control: str | None = None, **options: object
) -> pl.DataFrame:
    """:func:`resonance_map`, with target/control defaulting to the run's contrast set (:func:`default_contrast`)."""
    if target is None or control is None:
        found = default_contrast(store, run_id)
        if found is None:
            labels = queries.distinct_labels(store, run_id)
            raise ValueError(
                f"run {run_id!r} is not a paired two-label contrast set: give target= and control= "
                f"(its labels are {labels})"
            )
        target = target or found[0]
        control = control or (found[1] if found[0] == target else found[0])
    return resonance_map(store, run_id, target=target, control=control, **options)  # type: ignore[arg-type]


def resonance_tokens(
    store: Store,
    run_id: str,
    *,
    layer: int,
    expert: int,
    target: str,
    control: str,
    span: str | None = None,
    top: int = 20,
    min_count: int = 2,
) -> pl.DataFrame:
    """Drill-down: the tokens that drive expert (``layer``, ``expert``) on the target prompts.

    Per token (id; ``token`` is its raw symbol, ``text`` what it reads as): how often it occurs in target and control prompts (within ``span``), how
    often e was selected on it there, the two selection rates, their difference, and
    ``excess`` = target selections beyond the control rate (``n_sel_target − n_target ×
    rate_control``, with rate_control falling back to the expert's overall control rate for
    tokens never seen in control). Sorted by excess: the top rows are what makes the expert
    resonate. Tokens seen fewer than ``min_count`` times in the target are left out.
    """
    _classes(store, run_id, target, control)
    frame = queries.span_token_selections(
        store, run_id, layer=layer, expert=expert, target=target, control=control, span=TokenSpan.parse(span)
    )
    tgt = frame.filter(pl.col("is_target")).drop("is_target")
    ctl = frame.filter(~pl.col("is_target")).drop("is_target")
    base_rate = float(ctl["n_sel"].sum()) / max(int(ctl["n"].sum()), 1)
    out = (
        tgt.rename({"n": "n_target", "n_sel": "n_sel_target"})
        .join(
            ctl.rename({"n": "n_control", "n_sel": "n_sel_control"}).drop("token"), on="token_id", how="left"
        )
        .with_columns(pl.col("n_control", "n_sel_control").fill_null(0))
        .filter(pl.col("n_target") >= min_count)
        .with_columns(
            (pl.col("n_sel_target") / pl.col("n_target")).alias("rate_target"),
            pl.when(pl.col("n_control") > 0)
            .then(pl.col("n_sel_control") / pl.col("n_control"))
            .otherwise(None)
            .alias("rate_control"),
        )
        .with_columns(
            (pl.col("n_sel_target") - pl.col("n_target") * pl.col("rate_control").fill_null(base_rate)).alias(
                "excess"
            ),
            (pl.col("rate_target") - pl.col("rate_control")).alias("rate_diff"),
        )
        .sort("excess", "n_target", "token_id", descending=[True, True, False])
        .head(top)
    )
    return with_token_text(out, token_scheme(store, run_id)).select(
        "token_id", "token", "text", "n_target", "n_sel_target", "rate_target", "n_control", "n_sel_control",
        "rate_control", "rate_diff", "excess",
    )  # fmt: skip
