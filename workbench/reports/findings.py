"""Findings: each analysis' table turned into a few plain-English sentences with numbers and CIs.

One function per registered analysis, in :data:`FINDINGS` (keyed like
:data:`workbench.analysis.registry.ANALYSES`). Each takes the analysis' tidy table and the
run's :class:`Context` and returns plain-text sentences (the HTML layer escapes them), every
number read from the table: the strongest findings first, and an honest null when nothing
passes the bar ("No expert is significantly specialised for math (all q ≥ 0.05 …)."). An
analysis without a function here gets :func:`generic` (a row count), so a new analysis still
gets a section; write its function to say what it found.

Formatting is shared (:func:`pct`, :func:`pct_ci`, :func:`fmt_q`) so a sentence can be checked
against its table: a share of 0.412 with CI 0.371–0.453 reads "41% (95% CI 37–45%)".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

__all__ = [
    "FINDINGS",
    "Context",
    "Findings",
    "findings_for",
    "fmt_q",
    "pct",
    "pct_ci",
    "pct_decimals",
    "pct_ref",
]

#: What one findings function returns: sentences, most important first.
Findings = list[str]


@dataclass(frozen=True)
class Context:
    """What the findings need to know about the run besides the table."""

    n_experts: int
    top_k: int
    labels: tuple[str, ...] = ()
    alpha: float = 0.05
    compare: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def uniform_share(self) -> float:
        """Share of a label's tokens an expert gets under uniform top-k routing, ``k/E``."""
        return self.top_k / self.n_experts if self.n_experts else math.nan


# -- formatting -------------------------------------------------------------------------------


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct_decimals(x: float) -> int:
    """Decimals used for a percentage: 0 from 10% up, 1 from 1%, else 2 (so small shares keep digits)."""
    v = abs(100.0 * x)
    return 0 if v >= 10 or v == 0 else 1 if v >= 1 else 2


def pct(x: float | None, decimals: int | None = None) -> str:
    """``0.412`` → ``"41%"`` (decimals from :func:`pct_decimals` unless given); NaN → ``"n/a"``."""
    if x is None or _nan(x):
        return "n/a"
    d = pct_decimals(x) if decimals is None else decimals
    return f"{100.0 * x:.{d}f}%"


def pct_ci(lo: float | None, hi: float | None, decimals: int) -> str:
    """``(0.371, 0.453)`` → ``"95% CI 37–45%"`` with the estimate's decimals."""
    if lo is None or hi is None or _nan(lo) or _nan(hi):
        return "no CI"
    return f"95% CI {100.0 * lo:.{decimals}f}–{100.0 * hi:.{decimals}f}%"


def pct_ref(x: float) -> str:
    """A reference share such as uniform ``1/E``: up to one decimal, no trailing zero (``"12.5%"``, ``"25%"``)."""
    if _nan(x):
        return "n/a"
    return f"{100.0 * x:.1f}".rstrip("0").rstrip(".") + "%"


def fmt_q(q: float | None, name: str = "q") -> str:
    """A q- or p-value: ``"q = 0.0029"``, ``"q < 0.001"`` below 0.001, ``"q n/a"`` when missing."""
    if q is None or _nan(q):
        return f"{name} n/a"
    if q < 0.001:
        return f"{name} < 0.001"
    return f"{name} = {q:.2g}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None or _nan(x) else format(x + 0.0, fmt)  # + 0.0: no "-0.000"


def _expert(row: dict[str, Any], column: str = "expert") -> str:
    return f"shared expert {row[column]}" if row.get("shared") else f"expert {row[column]}"


def _label(value: Any) -> str:
    return "unlabelled" if value is None else str(value)


def _rows(df: pl.DataFrame) -> list[dict[str, Any]]:
    return list(df.iter_rows(named=True))


def _finite(df: pl.DataFrame, column: str) -> pl.DataFrame:
    return df.filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan())


# -- §1 load and router health ----------------------------------------------------------------


def load(df: pl.DataFrame, ctx: Context, top: int = 3) -> Findings:
    """Most over-used experts (share of routed slots with CI, × uniform) and the dead ones."""
    out: Findings = []
    e_per_layer = dict(df.group_by("layer").agg(pl.len()).iter_rows())
    ranked = df.with_columns(
        (pl.col("f") * pl.col("layer").replace_strict(e_per_layer, return_dtype=pl.Float64)).alias("_x")
    ).sort("_x", descending=True)
    for r in _rows(ranked.head(top)):
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
            f"Layer {r['layer']} {_expert(r)} is a super expert: max output norm {r['max_out_norm']:.4g}, "
            f"{r['max_out_norm'] / median:.1f}× the median expert's maximum ({median:.4g})."
            for r in _rows(flagged.head(5))
        ]
    top = df.sort("max_out_norm", descending=True).row(0, named=True)
    return [
        "No super experts: no expert's maximum output norm is both above the 99.5th percentile of all "
        f"experts and a tenth of the largest (largest: layer {top['layer']} {_expert(top)}, "
        f"{top['max_out_norm']:.4g}; median {median:.4g})."
    ]


# -- §2 specialisation ------------------------------------------------------------------------


def specialisation(df: pl.DataFrame, ctx: Context, top: int = 6) -> Findings:
    """The most over-used (layer, expert, label) cells at q < alpha, one per label first, then nulls.

    "Layer 3 expert 5 takes 41% of code tokens (95% CI 37–45%), 6.6× uniform (q = 0.001)."
    """
    labels = sorted({str(x) for x in df["label"].drop_nulls().unique().to_list()})
    if len(labels) < 2 and (df.height == 0 or df["q"].is_nan().all()):
        return [
            f"Significance needs at least two labels to permute; this run has {len(labels)} "
            f"({', '.join(labels) or 'none'}), so shares are reported without q-values."
        ]
    sig = df.filter((pl.col("q") < ctx.alpha) & (pl.col("lift") > 1)).sort(
        ["lift", "q"], descending=[True, False]
    )
    n_cells = df.height
    out = [
        f"{sig.height} of {n_cells:,} (layer, expert, label) cells are used significantly more than "
        f"uniform at q < {ctx.alpha:g} (Benjamini–Hochberg over all cells; prompt-permutation p)."
    ]
    best_per_label = sig.group_by("label", maintain_order=True).head(1)
    chosen = _rows(best_per_label.head(top))
    keys = {(r["layer"], r["expert"], r["label"]) for r in chosen}
    for r in _rows(sig):
        if len(chosen) >= top:
            break
        if (r["layer"], r["expert"], r["label"]) not in keys:
            chosen.append(r)
    chosen.sort(key=lambda r: -r["lift"])
    for r in chosen:
        d = pct_decimals(r["share"])
        out.append(
            f"Layer {r['layer']} expert {r['expert']} takes {pct(r['share'], d)} of {r['label']} tokens "
            f"({pct_ci(r['ci_low'], r['ci_high'], d)}), {r['lift']:.1f}× uniform ({fmt_q(r['q'])})."
        )
    sig_labels = set(sig["label"].to_list())
    for label in labels:
        if label in sig_labels:
            continue
        part = _finite(df.filter(pl.col("label") == label), "q")
        smallest = fmt_q(part["q"].min() if part.height else None, "smallest q")  # type: ignore[arg-type]
        out.append(f"No expert is significantly specialised for {label} (all q ≥ {ctx.alpha:g}; {smallest}).")
    return out


def vocab(df: pl.DataFrame, ctx: Context) -> Findings:
    """Layers with the strongest and weakest vocabulary specialisation, against uniform."""
    part = _finite(df, "vocab_specialisation")
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
            f"For {_label(label)} tokens, layer {r['layer']} expert {r['expert']} has the highest ESFT gate "
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
            f"For {_label(label)}, layer {r['layer']} expert {r['expert']} has the highest task-conditioned "
            f"expected selection score: mean router probability {r['tcess']:.3f}, "
            f"{r['tcess'] / uniform:.1f}× uniform (1/E = {uniform:.3f}; {r['n_counted']:,} tokens)."
        )
    return out or ["No labelled tokens with router logits."]


def mutual_information(df: pl.DataFrame, ctx: Context) -> Findings:
    """Layers where the top-1 expert carries the most and least information about the label."""
    part = _finite(df, "mi_norm")
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
    part = _finite(df, "accuracy")
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
        f"Layer {z['layer']} {_expert(z)} has the most inactive hidden units: {pct(z['mean_zero_frac'])} "
        f"are (near) zero on the {z['n_tokens']:,} tokens it processes."
    ]
    layers = df.group_by("layer").agg(pl.col("out_norm_max_min", "out_norm_cv", "routing_collapse").first())
    n = layers.sort("out_norm_max_min", descending=True).row(0, named=True)
    out.append(
        f"Output norms are most uneven at layer {n['layer']}: max/min {_num(n['out_norm_max_min'], '.1f')}, "
        f"CV {_num(n['out_norm_cv'])}."
    )
    c = _finite(layers, "routing_collapse").sort("routing_collapse", descending=True)
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
            f"Layer {r['layer']} {_expert(r)} is degraded: {pct(r['dominant_share'])} of its label-normalised "
            f"usage comes from {_label(r['dominant_label'])} (concentration {r['concentration']:.2f}), "
            f"although it {role(r)}."
            for r in _rows(bad.head(5))
        ]
    general = _finite(df.filter(pl.col("general")), "dominant_share").sort("dominant_share", descending=True)
    if general.height == 0:
        return ["No general-purpose expert (shared, or with high overall load) to test for degradation."]
    r = general.row(0, named=True)
    return [
        "No general-purpose expert is degraded (none draws ≥ 90% of its label-normalised usage from one "
        f"label); the most concentrated is layer {r['layer']} {_expert(r)}: "
        f"{pct(r['dominant_share'])} {_label(r['dominant_label'])} (concentration {r['concentration']:.2f})."
    ]


def underfitting(df: pl.DataFrame, ctx: Context) -> Findings:
    """Labels whose specialists get less than the median gate mass, with the shared-expert share."""
    if df.height == 0:
        return ["No labelled tokens."]
    median = float(df["specialist_gate_mass"].median())  # type: ignore[arg-type]

    def shared(r: dict[str, Any]) -> str:
        v = r["shared_norm_share"]
        return "" if _nan(v) else f"; shared experts give {pct(v)} of its output norm"

    flagged = df.filter(pl.col("underfit")).sort("specialist_gate_mass")
    out = [
        f"Label {r['label']} may be underfit: its specialists get {pct(r['specialist_gate_mass'])} of its gate "
        f"mass, below the median over labels ({pct(median)}){shared(r)} ({r['n_tokens']:,} tokens)."
        for r in _rows(flagged.head(5))
    ]
    ok = df.filter(~pl.col("underfit")).sort("specialist_gate_mass", descending=True)
    if ok.height:
        r = ok.row(0, named=True)
        out.append(
            f"Label {r['label']} is served best: its specialists get {pct(r['specialist_gate_mass'])} of its gate "
            f"mass{shared(r)}."
        )
    if not flagged.height:
        out.insert(0, "No label is flagged as underfit.")
    return out


# -- §4 co-activation -------------------------------------------------------------------------


def coactivation(df: pl.DataFrame, ctx: Context, top: int = 3, min_count: int = 10) -> Findings:
    """Pairs that co-activate most above independence (lift), with both conditionals and counts."""
    pairs = df.filter((pl.col("a") < pl.col("b")) & (pl.col("n_ab") >= min_count))
    if pairs.height == 0:
        return [f"No expert pair co-activates on {min_count} or more tokens (top-1 routing has no pairs)."]
    out: Findings = []
    for r in _rows(pairs.sort("lift", descending=True).head(top)):
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
        for r in _rows(part.sort(["p", "n"], descending=True).head(top))
    ]


def fixed_partners(df: pl.DataFrame, ctx: Context) -> Findings:
    """Mean fixed partners per layer and how many experts have a single partner."""
    if df.height == 0:
        return ["No co-activations (top-1 routing or no tokens), so no fixed partners."]
    per_layer = df.group_by("layer").agg(pl.col("layer_mean").first()).sort("layer")
    listing = ", ".join(f"layer {r['layer']} {r['layer_mean']:.1f}" for r in _rows(per_layer))
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
    for r in _rows(sig.head(top)):
        if method == "rd":
            d = 1 if abs(r["rd"]) < 0.1 else 0
            out.append(
                f"Layer {r['layer']} expert {r['expert']} is selected for {pct(r['rate_target'])} of {target} "
                f"tokens vs {pct(r['rate_control'])} of {control} tokens: {100 * r['rd']:+.{d}f} points "
                f"(95% CI {100 * r['ci_low']:+.{d}f} to {100 * r['ci_high']:+.{d}f}; {fmt_q(r['q'])})."
            )
        else:
            out.append(
                f"Layer {r['layer']} expert {r['expert']} gets {r['ftri']:+.3f} more gate weight per {target} "
                f"prompt than per {control} prompt (95% CI {r['ci_low']:+.3f} to {r['ci_high']:+.3f}; "
                f"{fmt_q(r['q'])})."
            )
    if not sig.height:
        part = _finite(df, "q")
        smallest = fmt_q(part["q"].min() if part.height else None, "smallest q")  # type: ignore[arg-type]
        out.append(
            f"No expert fires significantly more on {target} than on {control} (all q ≥ {ctx.alpha:g}; {smallest})."
        )
    out.append(
        "These maps are correlational: an expert can fire more on the target without causing the behaviour "
        "(METHODS §5); check top experts causally with an intervention."
    )
    return out


# -- §6 dynamic routing -----------------------------------------------------------------------


def dynamic_k(df: pl.DataFrame, ctx: Context) -> Findings:
    """Per mass p: the range of mean k_p and the strongest correlation with token NLL."""
    out: Findings = []
    for (p,), part in df.sort("p").group_by(["p"], maintain_order=True):
        ranked = part.sort("mean_k", descending=True)
        hi, lo = ranked.row(0, named=True), ranked.row(-1, named=True)
        out.append(
            f"To reach {pct(p)} of router mass, tokens need {lo['mean_k']:.2f}–{hi['mean_k']:.2f} experts on "
            f"average (per layer and label); the most at layer {hi['layer']} for {_label(hi['label'])}."
        )
        rho = _finite(part, "spearman_nll")
        if rho.height:
            r = rho.sort(pl.col("spearman_nll").abs(), descending=True).row(0, named=True)
            out.append(
                f"k at p = {p:g} tracks token difficulty most at layer {r['layer']} for {_label(r['label'])}: "
                f"Spearman ρ(k, NLL) = {r['spearman_nll']:+.2f} ({r['n_nll']:,} tokens)."
            )
    return out or ["No tokens with router logits."]


# -- §2 agreement -----------------------------------------------------------------------------


def agreement(df: pl.DataFrame, ctx: Context, top: int = 6) -> Findings:
    """Per label: mean Spearman ρ between the scorers and the least-agreeing pair; notes."""
    out: Findings = []
    for (label,), part in df.group_by(["label"], maintain_order=True):
        if len(out) >= top:
            break
        fin = _finite(part, "spearman")
        if fin.height == 0:
            continue
        low = fin.sort("spearman").row(0, named=True)
        mean = float(fin["spearman"].mean())  # type: ignore[arg-type]
        verdict = "rank experts alike" if mean >= 0.7 else "partly agree" if mean >= 0.3 else "disagree"
        out.append(
            f"For {_label(label)}, the scorers {verdict}: mean Spearman ρ {mean:.2f} "
            f"over {fin.height} scorer pairs; the least agreement is {low['scorer_a']} vs {low['scorer_b']}, "
            f"ρ = {low['spearman']:.2f} ({low['n']} layer × expert rows)."
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
    return out


def expert_similarity(df: pl.DataFrame, ctx: Context, top: int = 3) -> Findings:
    """The top merge candidates (most similar routed pairs by output angle), with CIs."""
    cand = df.filter(pl.col("merge_rank") == 1).sort("output_angular", descending=True)
    if cand.height == 0:
        return ["No pair of routed experts could be compared."]
    out = [
        f"Merge candidate at layer {r['layer']}: experts {r['expert_a']} and {r['expert_b']}, output angular "
        f"similarity {r['output_angular']:.3f} (95% CI {_num(r['ci_low'], '.3f')}–{_num(r['ci_high'], '.3f')}; "
        f"0.5 = orthogonal), weight cosine {_num(r['weight_cos'], '.3f')} ({r['n_tokens']:,} tokens)."
        for r in _rows(cand.head(top))
    ]
    routed = _finite(df.filter(~pl.col("shared")), "output_angular")
    if routed.height:
        out.append(
            f"Across {routed.height:,} routed pairs, output angular similarity has median "
            f"{float(routed['output_angular'].median()):.3f}."  # type: ignore[arg-type]
        )
    return out


def generic(df: pl.DataFrame, ctx: Context) -> Findings:
    """Fallback for an analysis without a findings function: its size (see the table)."""
    return [f"The analysis returned {df.height:,} rows × {df.width} columns (first rows below)."]


FINDINGS: dict[str, Callable[[pl.DataFrame, Context], Findings]] = {
    "load": load,
    "balance": balance,
    "router-confidence": router_confidence,
    "super-experts": super_experts,
    "specialisation": specialisation,
    "vocab": vocab,
    "esft": esft,
    "tcess": tcess,
    "mutual-information": mutual_information,
    "probe": probe,
    "collapse": collapse,
    "degradation": degradation,
    "underfitting": underfitting,
    "coactivation": coactivation,
    "pathways": pathways,
    "fixed-partners": fixed_partners,
    "resonance": resonance,
    "dynamic-k": dynamic_k,
    "agreement": agreement,
    "drift": drift,
    "expert-similarity": expert_similarity,
}


def findings_for(name: str, df: pl.DataFrame, ctx: Context) -> Findings:
    """The sentences for analysis ``name`` (``generic`` when it has no function of its own)."""
    return FINDINGS.get(name, generic)(df, ctx)
