"""Findings for how experts are used: load and router health (§1), relevance (§2), HoME (§3).

Domain specialisation's sentences live in :mod:`workbench.catalog.findings_specialisation`
(re-exported here as ``specialisation``).
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from workbench.catalog.findings_specialisation import specialisation as specialisation
from workbench.wording import (
    Context,
    Findings,
    expert_name,
    finite,
    is_missing,
    label_name,
    num,
    pct,
    pct_ci,
    pct_decimals,
    pct_ref,
    rows_of,
)

# -- §1 load and router health ----------------------------------------------------------------


def load(df: pl.DataFrame, ctx: Context, top: int = 3) -> Findings:
    """Most over-used experts (share of routed slots with CI, × uniform) and the dead ones."""
    out: Findings = []
    e_per_layer = dict(df.group_by("layer").agg(pl.len()).iter_rows())
    ranked = df.with_columns(
        (pl.col("f") * pl.col("layer").replace_strict(e_per_layer, return_dtype=pl.Float64)).alias("_x")
    ).sort("_x", descending=True)
    for r in rows_of(ranked.head(top)):
        n_e = e_per_layer[r["layer"]]
        d = pct_decimals(r["f"])
        out.append(
            f"Layer {r['layer']} expert {r['expert']} receives {pct(r['f'], d)} of routed slots "
            f"({pct_ci(r['ci_low'], r['ci_high'], d)}), {r['_x']:.1f}× uniform ({pct_ref(1.0 / n_e)})."
        )
    dead = df.filter(pl.col("dead"))
    if dead.height:
        for (layer,), part in dead.group_by(["layer"], maintain_order=True):
            ids = ", ".join(str(e) for e in part["expert"].to_list())
            out.append(
                f"Layer {layer} has {part.height} dead expert(s) (load below 1/(100·E)): expert(s) {ids}."
            )
    else:
        low = ranked.tail(1).row(0, named=True)
        out.append(
            "No expert is dead (every expert gets at least 1/(100·E) of routed slots); the least used is "
            f"layer {low['layer']} expert {low['expert']} at {pct(low['f'])} "
            f"({pct_ci(low['ci_low'], low['ci_high'], pct_decimals(low['f']))})."
        )
    return out


def balance(df: pl.DataFrame, ctx: Context) -> Findings:
    """Least and most balanced layers by CV, with entropy, balancedness and top-10% share."""
    if df.height == 0:
        return ["No layer has routed tokens."]
    ranked = df.sort("cv", descending=True)
    worst, best = ranked.row(0, named=True), ranked.row(-1, named=True)

    def describe(r: dict[str, Any]) -> str:
        return (
            f"CV of load {r['cv']:.2f}, normalised load entropy {r['entropy_norm']:.2f}, balancedness "
            f"(mean/max) {r['balancedness']:.2f}; the top 10% of experts take {pct(r['top10_share'])} of "
            "selections"
        )

    out = [f"Layer {worst['layer']} is the least balanced: {describe(worst)}."]
    if df.height > 1:
        out.append(f"Layer {best['layer']} is the most balanced: {describe(best)}.")
    n_dead = int(df["n_dead"].sum())
    out.append(
        f"{n_dead} dead expert(s) across {df.height} layer(s)."
        if n_dead
        else f"No dead experts in any of the {df.height} layer(s)."
    )
    return out


def router_confidence(df: pl.DataFrame, ctx: Context) -> Findings:
    """Where routers are most/least certain, the margin range and the most fragile layer."""
    if df.height == 0:
        return ["No tokens with router logits."]
    by_h = df.sort("entropy_norm", descending=True)
    hi, lo = by_h.row(0, named=True), by_h.row(-1, named=True)
    out = [
        f"Routers are least certain at layer {hi['layer']}: mean entropy {hi['entropy']:.2f} nats "
        f"({hi['entropy_norm']:.2f} of log E); most certain at layer {lo['layer']} "
        f"({lo['entropy_norm']:.2f} of log E)."
    ]
    by_m = df.sort("margin")
    m0, m1 = by_m.row(0, named=True), by_m.row(-1, named=True)
    out.append(
        f"The mean top-k margin π(k) − π(k+1) ranges from {m0['margin']:.3f} (layer {m0['layer']}) "
        f"to {m1['margin']:.3f} (layer {m1['layer']})."
    )
    fr = df.sort("fragility", descending=True).row(0, named=True)
    out.append(
        f"Routing is most fragile at layer {fr['layer']}: {pct(fr['fragility'])} of tokens change their "
        f"top-k set under a 1% logit perturbation ({fr['n_tokens']:,} tokens)."
    )
    return out


def super_experts(df: pl.DataFrame, ctx: Context) -> Findings:
    """Flagged super experts with their max output norm, or the largest one when none is flagged."""
    if df.height == 0:
        return ["No expert statistics for the selected layers."]
    median = float(df["max_out_norm"].median())  # type: ignore[arg-type]
    flagged = df.filter(pl.col("super")).sort("max_out_norm", descending=True)
    if flagged.height:
        return [
            f"Layer {r['layer']} {expert_name(r)} is a super expert: max output norm {r['max_out_norm']:.4g}, "
            f"{r['max_out_norm'] / median:.1f}× the median expert's maximum ({median:.4g})."
            for r in rows_of(flagged.head(5))
        ]
    top = df.sort("max_out_norm", descending=True).row(0, named=True)
    return [
        "No super experts: no expert's maximum output norm is both above the 99.5th percentile of all "
        f"experts and a tenth of the largest (largest: layer {top['layer']} {expert_name(top)}, "
        f"{top['max_out_norm']:.4g}; median {median:.4g})."
    ]


# -- §2 relevance -----------------------------------------------------------------------------


def vocab(df: pl.DataFrame, ctx: Context) -> Findings:
    """Layers with the strongest and weakest vocabulary specialisation, against uniform."""
    part = finite(df, "vocab_specialisation")
    if part.height == 0:
        return [
            "No token id occurs often enough (≥ 5 times) to measure vocabulary specialisation; "
            "capture more prompts."
        ]
    ranked = part.sort("vocab_specialisation", descending=True)

    def describe(r: dict[str, Any]) -> str:
        return (
            f"a token id's most frequent top-1 expert takes {pct(r['vocab_specialisation'])} of its "
            f"occurrences on average ({r['n_token_ids']:,} token ids seen ≥ 5 times), "
            f"{r['vocab_specialisation'] / r['uniform']:.1f}× the uniform {pct_ref(r['uniform'])}"
        )

    top, low = ranked.row(0, named=True), ranked.row(-1, named=True)
    out = [f"Vocabulary specialisation is strongest at layer {top['layer']}: {describe(top)}."]
    if part.height > 1:
        out.append(f"It is weakest at layer {low['layer']}: {describe(low)}.")
    return out


def _span(counts: pl.Series) -> str:
    lo, hi = int(counts.min() or 0), int(counts.max() or 0)  # type: ignore[arg-type]
    n = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return f"{n} expert{'' if hi == 1 else 's'} per layer"


def esft(df: pl.DataFrame, ctx: Context, top: int = 6) -> Findings:
    """Per label: the expert with the highest ESFT gate score, and the size of its expert sets."""
    out: Findings = []
    set_sizes = df.group_by("label", "layer").agg(
        pl.col("in_set_gs").sum().alias("n_gs"), pl.col("in_set_tsr").sum().alias("n_tsr")
    )
    for (label,), part in df.sort("gs", descending=True).group_by(["label"], maintain_order=True):
        if len(out) >= top:
            break
        r = part.row(0, named=True)
        sizes = set_sizes.filter(pl.col("label") == label)
        out.append(
            f"For {label_name(label)} tokens, layer {r['layer']} expert {r['expert']} has the highest ESFT gate "
            f"score, {r['gs']:.3f} (token-selection ratio {r['tsr']:.3f}); the label's expert sets "
            f"(cumulative share p = 0.2 per layer) hold {_span(sizes['n_gs'])} by gate score and "
            f"{_span(sizes['n_tsr'])} by selection ratio."
        )
    return out or ["No labelled tokens."]


def tcess(df: pl.DataFrame, ctx: Context, top: int = 6) -> Findings:
    """Per label: the expert with the highest task-conditioned expected selection score."""
    out: Findings = []
    uniform = 1.0 / ctx.n_experts if ctx.n_experts else math.nan
    for (label,), part in df.sort("tcess", descending=True).group_by(["label"], maintain_order=True):
        if len(out) >= top:
            break
        r = part.row(0, named=True)
        out.append(
            f"For {label_name(label)}, layer {r['layer']} expert {r['expert']} has the highest task-conditioned "
            f"expected selection score: mean router probability {r['tcess']:.3f}, "
            f"{r['tcess'] / uniform:.1f}× uniform (1/E = {uniform:.3f}; {r['n_counted']:,} tokens)."
        )
    return out or ["No labelled tokens with router logits."]


def mutual_information(df: pl.DataFrame, ctx: Context) -> Findings:
    """Layers where the top-1 expert carries the most and least information about the label."""
    part = finite(df, "mi_norm")
    if part.height == 0:
        return ["Mutual information with the label needs at least two labels; this run has one or none."]
    ranked = part.sort("mi_norm", descending=True)
    hi, lo = ranked.row(0, named=True), ranked.row(-1, named=True)
    out = [
        f"Routing carries the most label information at layer {hi['layer']}: I(top-1 expert; label) = "
        f"{hi['mi']:.3f} nats, {pct(hi['mi_norm'])} of H(label) (plug-in bias ≈ {hi['bias']:.4f} nats)."
    ]
    if part.height > 1:
        out.append(
            f"The least at layer {lo['layer']}: {lo['mi']:.3f} nats, {pct(lo['mi_norm'])} of H(label)."
        )
    return out


def probe(df: pl.DataFrame, ctx: Context) -> Findings:
    """Best and worst layers for predicting the label from routing, against chance."""
    part = finite(df, "accuracy")
    if part.height == 0:
        return ["The routing probe needs at least two labels with at least two prompts each."]
    ranked = part.sort("accuracy", descending=True)

    def describe(r: dict[str, Any]) -> str:
        return (
            f"{pct(r['accuracy'])} accuracy (± {pct(r['accuracy_std'])} sd over {r['n_folds']} folds "
            f"split by prompt; chance {pct_ref(r['chance'])}; {r['n_prompts']:,} prompts)"
        )

    hi, lo = ranked.row(0, named=True), ranked.row(-1, named=True)
    out = [
        f"A logistic-regression probe predicts a prompt's label from layer {hi['layer']}'s routing "
        f"histogram with {describe(hi)}."
    ]
    if part.height > 1:
        out.append(f"The weakest layer is {lo['layer']}: {describe(lo)}.")
    return out


# -- §3 HoME ----------------------------------------------------------------------------------


def collapse(df: pl.DataFrame, ctx: Context) -> Findings:
    """Most inactive hidden units, most uneven output norms, strongest routing collapse."""
    if df.height == 0:
        return ["No expert statistics for the selected layers."]
    z = df.sort("mean_zero_frac", descending=True).row(0, named=True)
    out = [
        f"Layer {z['layer']} {expert_name(z)} has the most inactive hidden units: {pct(z['mean_zero_frac'])} "
        f"are (near) zero on the {z['n_tokens']:,} tokens it processes."
    ]
    layers = df.group_by("layer").agg(pl.col("out_norm_max_min", "out_norm_cv", "routing_collapse").first())
    n = layers.sort("out_norm_max_min", descending=True).row(0, named=True)
    out.append(
        f"Output norms are most uneven at layer {n['layer']}: max/min {num(n['out_norm_max_min'], '.1f')}, "
        f"CV {num(n['out_norm_cv'])}."
    )
    c = finite(layers, "routing_collapse").sort("routing_collapse", descending=True)
    if c.height:
        r = c.row(0, named=True)
        out.append(
            f"Routing collapse is strongest at layer {r['layer']}: the top 10% of experts take "
            f"{pct(r['routing_collapse'])} of selections (≈ 10% if balanced)."
        )
    return out


def degradation(df: pl.DataFrame, ctx: Context) -> Findings:
    """Degraded general-purpose experts (≥ 90% one label), or the most concentrated one."""
    bad = df.filter(pl.col("degraded")).sort("dominant_share", descending=True)

    def role(r: dict[str, Any]) -> str:
        return (
            "is a shared expert" if r.get("shared") else f"takes {pct(r['load'])} of the layer's selections"
        )

    if bad.height:
        return [
            f"Layer {r['layer']} {expert_name(r)} is degraded: {pct(r['dominant_share'])} of its label-normalised "
            f"usage comes from {label_name(r['dominant_label'])} (concentration {r['concentration']:.2f}), "
            f"although it {role(r)}."
            for r in rows_of(bad.head(5))
        ]
    general = finite(df.filter(pl.col("general")), "dominant_share").sort("dominant_share", descending=True)
    if general.height == 0:
        return ["No general-purpose expert (shared, or with high overall load) to test for degradation."]
    r = general.row(0, named=True)
    return [
        "No general-purpose expert is degraded (none draws ≥ 90% of its label-normalised usage from one "
        f"label); the most concentrated is layer {r['layer']} {expert_name(r)}: "
        f"{pct(r['dominant_share'])} {label_name(r['dominant_label'])} (concentration {r['concentration']:.2f})."
    ]


def underfitting(df: pl.DataFrame, ctx: Context) -> Findings:
    """Labels whose specialists' gate mass is below the median over labels with its whole 95% CI."""
    if df.height == 0:
        return ["No labelled tokens."]
    median = float(df["specialist_gate_mass"].median())  # type: ignore[arg-type]

    def shared(r: dict[str, Any]) -> str:
        v = r["shared_norm_share"]
        return "" if is_missing(v) else f"; shared experts give {pct(v)} of its output norm"

    flagged = df.filter(pl.col("underfit")).sort("specialist_gate_mass")
    out = []
    for r in rows_of(flagged.head(5)):
        d = pct_decimals(r["specialist_gate_mass"])
        out.append(
            f"Label {r['label']} may be underfit: its specialists get {pct(r['specialist_gate_mass'], d)} of its "
            f"gate mass ({pct_ci(r['ci_low'], r['ci_high'], d)}), the whole interval below the median over labels "
            f"({pct(median)}){shared(r)} ({r['n_tokens']:,} tokens)."
        )
    ok = df.filter(~pl.col("underfit")).sort("specialist_gate_mass", descending=True)
    if ok.height:
        r = ok.row(0, named=True)
        out.append(
            f"Label {r['label']} gets the largest specialist gate mass: {pct(r['specialist_gate_mass'])} of its gate "
            f"mass{shared(r)}."
        )
    if not flagged.height:
        no_ci = df["ci_high"].is_nan() | df["ci_high"].is_null()
        if no_ci.all():
            out.insert(0, "Not enough data to flag underfit labels: no label has a CI of its specialist gate mass "
                          "(no bootstrap, or fewer than 2 prompts per label).")  # fmt: skip
        else:
            out.insert(
                0, "No label is flagged as underfit (none has its whole 95% CI below the median over labels)."
            )
    return out
