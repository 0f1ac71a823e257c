"""Findings for how experts relate: co-activation (§4), resonance (§5), dynamic routing (§6),
scorer agreement (§2) and run comparison (§7)."""

from __future__ import annotations

from typing import Any

import polars as pl

from workbench.wording import (
    Context,
    Findings,
    correlation_words,
    finite,
    fmt_q,
    is_missing,
    label_name,
    num,
    pct,
    pct_ci,
    pct_decimals,
    pct_ref,
    rows_of,
)

# -- §4 co-activation -------------------------------------------------------------------------


def coactivation(df: pl.DataFrame, ctx: Context, top: int = 3, min_count: int = 10) -> Findings:
    """Pairs that co-activate most above independence (lift), with both conditionals and counts."""
    pairs = df.filter((pl.col("a") < pl.col("b")) & (pl.col("n_ab") >= min_count))
    if pairs.height == 0:
        return [f"No expert pair co-activates on {min_count} or more tokens (top-1 routing has no pairs)."]
    out: Findings = []
    for r in rows_of(pairs.sort("lift", descending=True).head(top)):
        out.append(
            f"At layer {r['layer']}, experts {r['a']} and {r['b']} co-activate {r['lift']:.1f}× as often as "
            f"independent choices would: P(e{r['b']} | e{r['a']}) = {pct(r['p_b_given_a'])}, "
            f"P(e{r['a']} | e{r['b']}) = {pct(r['n_ab'] / r['n_b'])} ({r['n_ab']:,} tokens together)."
        )
    low = pairs.sort("lift").row(0, named=True)
    out.append(
        f"The most avoided observed pair is layer {low['layer']} experts {low['a']} and {low['b']}: "
        f"lift {low['lift']:.2f} ({low['n_ab']:,} tokens together)."
    )
    return out


def pathways(df: pl.DataFrame, ctx: Context, top: int = 3, min_from: int = 20) -> Findings:
    """The most deterministic top-1 transitions between consecutive MoE layers."""
    part = df.filter(pl.col("n_from") >= min_from)
    if part.height == 0:
        return [
            "No top-1 expert is seen often enough (≥ 20 tokens) to report its pathway, or the run has one MoE layer."
        ]
    return [
        f"Layer {r['layer_from']} → {r['layer_to']}: {pct(r['p'])} of tokens whose top-1 expert is "
        f"{r['expert_from']} go to expert {r['expert_to']} ({r['n']:,} of {r['n_from']:,} tokens)."
        for r in rows_of(part.sort(["p", "n"], descending=True).head(top))
    ]


def fixed_partners(df: pl.DataFrame, ctx: Context) -> Findings:
    """Mean fixed partners per layer and how many experts have a single partner."""
    if df.height == 0:
        return ["No co-activations (top-1 routing or no tokens), so no fixed partners."]
    per_layer = df.group_by("layer").agg(pl.col("layer_mean").first()).sort("layer")
    listing = ", ".join(f"layer {r['layer']} {r['layer_mean']:.1f}" for r in rows_of(per_layer))
    out = [
        "Mean number of fixed partners (fewest partners covering ≥ 50% of an expert's co-activations): "
        f"{listing} (Dynamic-DINO reports ≈ 2–3 in deep layers)."
    ]
    single = df.filter(pl.col("n_partners") == 1).sort("n_coactivations", descending=True)
    if single.height:
        r = single.row(0, named=True)
        out.append(
            f"{single.height} expert(s) have one partner covering half their co-activations, e.g. layer "
            f"{r['layer']} expert {r['expert']} ({r['n_coactivations']:,} co-activations)."
        )
    return out


# -- §5 resonance ----------------------------------------------------------------------------


def resonance(df: pl.DataFrame, ctx: Context, top: int = 5) -> Findings:
    """Experts that fire most above control on the target prompts (rate difference or fTRI), with CIs."""
    target, control = ctx.extra.get("contrast") or ("target", "control")
    method = str(df["method"][0]) if df.height and "method" in df.columns else "rd"
    sig = df.filter((pl.col("q") < ctx.alpha) & (pl.col(method) > 0)).sort(method, descending=True)
    out = [
        f"{sig.height} of {df.height:,} (layer, expert) cells fire significantly more on {target} than on "
        f"{control} prompts at q < {ctx.alpha:g} ({'risk difference' if method == 'rd' else 'fTRI score'}; "
        f"prompt-permutation p, Benjamini–Hochberg)."
    ]
    for r in rows_of(sig.head(top)):
        if method == "rd":
            d = 1 if abs(r["rd"]) < 0.1 else 0
            out.append(
                f"Layer {r['layer']} expert {r['expert']} is selected for {pct(r['rate_target'])} of {target} "
                f"tokens vs {pct(r['rate_control'])} of {control} tokens: {100 * r['rd']:+.{d}f} points "
                f"(95% CI {100 * r['ci_low']:+.{d}f} to {100 * r['ci_high']:+.{d}f}; {fmt_q(r['q'])})."
            )
        else:
            out.append(
                f"Layer {r['layer']} expert {r['expert']} gets {r['ftri']:+.3f} more gate weight per token on "
                f"{target} prompts than on {control} prompts (prompt means; 95% CI {r['ci_low']:+.3f} to "
                f"{r['ci_high']:+.3f}; "
                f"{fmt_q(r['q'])})."
            )
    if not sig.height:
        part = finite(df, "q")
        smallest = fmt_q(part["q"].min() if part.height else None, "smallest q")  # type: ignore[arg-type]
        out.append(
            f"No expert fires significantly more on {target} than on {control} (all q ≥ {ctx.alpha:g}; {smallest})."
        )
    out.append(
        "These maps are correlational: an expert can fire more on the target without causing the behaviour "
        "(docs/methods.md §5); check top experts causally with an intervention."
    )
    return out


# -- §6 dynamic routing -----------------------------------------------------------------------


def _k_nll_sentence(r: dict[str, Any], p: float, n_cells: int) -> str:
    """The strongest ρ(k_p, NLL) of one p in words that follow its sign, size and CI (never "tracks").

    Uses ``spearman_ci_low``/``spearman_ci_high``/``spearman_p`` (prompt-level Fisher interval)
    when the table has them; without them the sentence says it is descriptive only.
    """
    rho = float(r["spearman_nll"])
    lo, hi = r.get("spearman_ci_low"), r.get("spearman_ci_high")
    has_ci = not (is_missing(lo) or is_missing(hi))
    words = correlation_words(rho, lo, hi)
    where = f"layer {r['layer']} for {label_name(r['label'])}"
    stats = f"Spearman ρ(k, NLL) = {rho:+.2f} ("
    if has_ci:
        stats += f"95% CI {num(lo, '+.2f')} to {num(hi, '+.2f')}"
        stats += f", p = {r['spearman_p']:.2g}; " if not is_missing(r.get("spearman_p")) else "; "
        stats += f"{r['n_prompts_nll']:,} prompts, " if not is_missing(r.get("n_prompts_nll")) else ""
    stats += f"{r['n_nll']:,} tokens)"
    lead = f"The strongest association of k at p = {p:g} with token difficulty (of {n_cells} layer × label cells)"
    if words.startswith(("no detectable", "not measurable", "essentially")):
        return f"{lead} is at {where}: {stats} — {words}; no claim that k follows difficulty."
    meaning = (
        "harder tokens use more experts here"
        if rho > 0
        else 'harder tokens use fewer experts here, the opposite of "harder tokens need more experts"'
    )
    caveat = "" if has_ci else "; descriptive only, no CI (tokens of a prompt are not independent)"
    return f"{lead} is at {where}: k and NLL are {words}, {stats}: {meaning}{caveat}."


def dynamic_k(df: pl.DataFrame, ctx: Context) -> Findings:
    """Per mass p: the range of mean k_p and the strongest correlation with token NLL."""
    out: Findings = []
    for (p,), part in df.sort("p").group_by(["p"], maintain_order=True):
        ranked = part.sort("mean_k", descending=True)
        hi, lo = ranked.row(0, named=True), ranked.row(-1, named=True)
        out.append(
            f"To reach {pct(p)} of router mass, tokens need {lo['mean_k']:.2f}–{hi['mean_k']:.2f} experts on "
            f"average (per layer and label); the most at layer {hi['layer']} for {label_name(hi['label'])}."
        )
        rho = finite(part, "spearman_nll")
        if rho.height:
            r = rho.sort(pl.col("spearman_nll").abs(), descending=True).row(0, named=True)
            out.append(_k_nll_sentence(r, p, rho.height))
    return out or ["No tokens with router logits."]


# -- §2 agreement -----------------------------------------------------------------------------


def _agreement_ci(row: dict[str, Any]) -> str:
    """`` (95% CI 0.05 to 0.31, permutation p = 0.012)`` when the row has them (older frames do not)."""
    lo, hi, p = row.get("ci_low"), row.get("ci_high"), row.get("p")
    if lo is None or hi is None or p is None or lo != lo:
        return ""
    return f" (95% CI {lo:.2f} to {hi:.2f}, permutation p = {p:.3g})"


def agreement(df: pl.DataFrame, ctx: Context, top: int = 6) -> Findings:
    """Per label: mean Spearman ρ between the scorers and the least-agreeing pair; notes."""
    out: Findings = []
    for (label,), part in df.group_by(["label"], maintain_order=True):
        if len(out) >= top:
            break
        fin = finite(part, "spearman")
        if fin.height == 0:
            continue
        low = fin.sort("spearman").row(0, named=True)
        mean = float(fin["spearman"].mean())  # type: ignore[arg-type]
        verdict = "rank experts alike" if mean >= 0.7 else "partly agree" if mean >= 0.3 else "disagree"
        out.append(
            f"For {label_name(label)}, the scorers {verdict}: mean Spearman ρ {mean:.2f} "
            f"over {fin.height} scorer pairs; the least agreement is {low['scorer_a']} vs {low['scorer_b']}, "
            f"ρ = {low['spearman']:.2f}{_agreement_ci(low)} ({low['n']} layer × expert rows)."
        )
    notes = sorted({str(n) for n in df["note"].drop_nulls().to_list()})
    out.extend(f"Note: {n}" for n in notes)
    return out or ["No scorer pair could be correlated (scores constant within every label)."]


# -- §7 run comparison ------------------------------------------------------------------------


def drift(df: pl.DataFrame, ctx: Context) -> Findings:
    """Layers with the most and least routing drift against the comparison run, with CIs."""
    if df.height == 0:
        return ["The two runs share no tokens."]
    ranked = df.sort("overlap")
    other = f" and {ctx.compare}" if ctx.compare else ""

    def describe(r: dict[str, Any]) -> str:
        d = pct_decimals(r["overlap"])
        return (
            f"top-k overlap {pct(r['overlap'], d)} ({pct_ci(r['ci_low'], r['ci_high'], d)}; chance "
            f"{pct_ref(r['chance'])}; {r['n_tokens']:,} matched tokens)"
        )

    lo, hi = ranked.row(0, named=True), ranked.row(-1, named=True)
    out = [f"Routing between this run{other} drifts most at layer {lo['layer']}: {describe(lo)}."]
    if df.height > 1:
        out.append(f"It is most stable at layer {hi['layer']}: {describe(hi)}.")
    if {"n_shared", "n_prompts_a", "n_prompts_b"} <= set(df.columns):  # prompts matched by text and tokens
        from workbench.analysis.compare import drift_coverage

        note = drift_coverage(df, "this run", ctx.compare or "the other run")
        out.insert(0, note[0].upper() + note[1:] + ".")
    return out


def expert_similarity(df: pl.DataFrame, ctx: Context, top: int = 3) -> Findings:
    """Merge candidates (routed pairs whose CI clears the threshold), with CIs; else none, and why."""
    from workbench.interventions.expert_similarity import MERGE_MIN_ANGULAR

    routed = finite(df.filter(~pl.col("shared")), "output_angular")
    if routed.height == 0:
        return ["No pair of routed experts could be compared."]
    rule = (
        f"the whole 95% CI of output angular similarity at or above {MERGE_MIN_ANGULAR:g}; 0.5 = orthogonal"
    )
    flag = pl.col("merge_candidate") if "merge_candidate" in df.columns else pl.lit(False)
    cand = routed.filter(flag).sort("output_angular", descending=True)
    out = [
        f"Merge candidate at layer {r['layer']}: experts {r['expert_a']} and {r['expert_b']}, output angular "
        f"similarity {r['output_angular']:.3f} (95% CI {num(r['ci_low'], '.3f')}–{num(r['ci_high'], '.3f')}; "
        f"0.5 = orthogonal), weight cosine {num(r['weight_cos'], '.3f')} ({r['n_tokens']:,} tokens)."
        for r in rows_of(cand.head(top))
    ]
    if not out:
        best = routed.sort("output_angular", descending=True).row(0, named=True)
        ci = routed["ci_low"].fill_nan(None).drop_nulls()
        why = (
            "not enough data to tell: no pair has a CI (fewer than 2 prompts, or no bootstrap)"
            if ci.len() == 0
            else f"none has {rule}"
        )
        out.append(
            f"No merge candidate ({why}). The most similar routed pair, layer {best['layer']} experts "
            f"{best['expert_a']} and {best['expert_b']}, has output angular similarity {best['output_angular']:.3f}."
        )
    else:
        out.insert(
            0,
            f"{cand.height:,} routed pair{'s qualify' if cand.height != 1 else ' qualifies'} as merge "
            f"candidate{'s' if cand.height != 1 else ''} ({rule}).",
        )
    out.append(
        f"Across {routed.height:,} routed pairs, output angular similarity has median "
        f"{float(routed['output_angular'].median()):.3f}."  # type: ignore[arg-type]
    )
    return out
