"""Render a :class:`~workbench.interventions.mote.MoteResult` as Markdown (docs/experiments/mote.md)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

import numpy as np
import polars as pl

from workbench.analysis.stats import benjamini_hochberg
from workbench.interventions.controls import format_p
from workbench.interventions.mote import MEASURES, MoteResult

__all__ = ["exploratory_note", "headline", "to_json", "to_markdown", "verdict", "wilson"]


def wilson(share: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """Wilson 95% interval of a proportion ``share`` of ``n`` independent prompts (NaN when n is 0)."""
    if not n or math.isnan(share):
        return math.nan, math.nan
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _with_ci(frame: pl.DataFrame, n: float | None) -> pl.DataFrame:
    """``chosen`` plus its Wilson interval (rates only: one greedy continuation per held-out prompt)."""
    if not n or frame.is_empty():
        return frame
    rate = frame["measure"].to_list() if "measure" in frame.columns else ["refusal"] * frame.height
    cis = [
        wilson(v, n) if m != "margin_delta" else (math.nan, math.nan)
        for v, m in zip(frame["chosen"], rate, strict=True)
    ]
    return frame.with_columns(
        pl.Series("chosen_ci_low", [c[0] for c in cis]), pl.Series("chosen_ci_high", [c[1] for c in cis])
    )


def _table(df: pl.DataFrame, floats: str = "{:.3f}") -> str:
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for row in df.iter_rows():
        cells = [floats.format(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(result: MoteResult) -> dict[str, Any]:
    """The numbers quoted in the model card: baseline, best set per scorer, rank agreement."""
    best = (
        result.summary.sort("chosen")
        .group_by("scorer", maintain_order=True)
        .first()
        .select(
            "scorer", "semantics", "n", "chosen", "control_mean", "control_min", "z", "p",
            pl.selectors.matches("^(n_controls|p_floor)$"),
        )
    )  # fmt: skip
    head: dict[str, Any] = {
        "baseline": result.baseline,
        "agreement": {r["score"]: r["spearman"] for r in result.agreement.iter_rows(named=True)},
        "agreement_stats": {  # each ρ's 95% CI and permutation p (issue 12 item 7)
            r["score"]: {k: r[k] for k in ("ci_low", "ci_high", "p", "p_floor", "n") if k in r}
            for r in result.agreement.iter_rows(named=True)
        },
        "lowest_refusal_per_scorer": best.to_dicts(),
    }
    if "measure" in result.outcomes.columns:
        answered = result.outcomes.filter(pl.col("measure") == "compliance")
        head["highest_compliance_per_scorer"] = (
            _with_ci(
                answered.sort("chosen", descending=True).group_by("scorer", maintain_order=True).first(),
                result.baseline.get("n_harmful_eval"),
            )
            .select(
                "scorer", "semantics", "n", "chosen", pl.selectors.matches("^chosen_ci_"), "control_mean",
                "control_max", "z", "p",
            )
            .to_dicts()
        )  # fmt: skip
    return head


#: measure -> does a *larger* value mean the behaviour went (compliance), or a smaller one?
_UP = {"refusal": False, "compliance": True, "margin_delta": False, "refusal_cost_matched": False}


def outside(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Rows whose chosen set lies beyond every random set, in the direction that removes the behaviour."""
    if outcomes.is_empty():
        return outcomes
    up = pl.col("measure").replace_strict(_UP, return_dtype=pl.Boolean)
    return outcomes.filter(
        pl.when(up)
        .then(pl.col("chosen") > pl.col("control_max"))
        .otherwise(pl.col("chosen") < pl.col("control_min"))
    )


def verdict(summary: pl.DataFrame) -> list[str]:
    """Per scorer: the doses where its set lies outside the whole random range (below the minimum)."""
    lines = []
    for scorer in summary["scorer"].unique(maintain_order=True).to_list():
        rows = summary.filter((pl.col("scorer") == scorer) & (pl.col("chosen") < pl.col("control_min")))
        if rows.height == 0:
            lines.append(f"- `{scorer}`: never below the lowest random set.")
            continue
        hits = "; ".join(
            f"{r['semantics']} N={r['n']}: {r['chosen']:.1%} vs random {r['control_min']:.1%}–{r['control_max']:.1%}"
            f" (mean {r['control_mean']:.1%}, z = {r['z']:.1f}, {format_p(r)})"
            for r in rows.iter_rows(named=True)
        )
        lines.append(f"- `{scorer}`: below every random set at {hits}.")
    return lines


def to_json(result: MoteResult) -> str:
    """Every table of the run as JSON (for re-rendering and for the model card)."""
    return json.dumps(
        {
            "config": asdict(result.config),
            "baseline": result.baseline,
            "headline": headline(result),
            "agreement": result.agreement.to_dicts(),
            "summary": result.summary.to_dicts(),
            "outcomes": result.outcomes.to_dicts(),
            "doses": result.doses.to_dicts(),
            "forced": result.forced.to_dicts(),
            "scores": result.scores.to_dicts(),
        },
        indent=1,
    )


def to_markdown(result: MoteResult, model: str, command: str) -> str:
    """The experiment write-up: method, the measured tables and what they say, nothing assumed."""
    cfg, base = result.config, result.baseline
    n_eval = base.get("n_harmful_eval")
    summary = _with_ci(result.summary, n_eval).select(
        "scorer", "semantics", "n", "chosen", pl.selectors.matches("^chosen_ci_"), "control_mean", "control_min",
        "control_max", "z", "p",
    ).rename({"chosen": "refusal (chosen)", "control_mean": "random mean", "control_min": "random min",
              "control_max": "random max"}, strict=False)  # fmt: skip
    cost = (
        result.doses.group_by("scorer", "semantics", "n", "set")
        .agg(pl.col("nll_delta").mean())
        .pivot(on="set", index=["scorer", "semantics", "n"], values="nll_delta")
        .sort("scorer", "semantics", "n")
    )
    best = headline(result)["lowest_refusal_per_scorer"]
    lines = [
        f"# The MoTE experiment on {model}",
        "",
        f"Generated by `{command}`; do not edit by hand.",
        "",
        *exploratory_note(result),
        "Do the experts that an activation-difference score picks control refusal? MoTE and SteerMoE "
        "assume so. Here every scorer's top-N experts are switched off and the refusal rate on held-out "
        "harmful requests is compared with random expert sets of the same size on the same layers.",
        "",
        "## Method",
        "",
        f"- Contrast set `probes/refusal.jsonl`, split by pair: {cfg.n_select} pairs choose the experts, "
        f"{cfg.n_eval} other pairs judge them (greedy 12-token continuation, transparent refusal patterns)."
        if cfg.eval_probe is None
        else f"- {cfg.n_select} pairs of `probes/refusal.jsonl` choose the experts; {int(n_eval or 0)} pairs of "
        f"`{cfg.eval_probe}`, which share no prompt with them, judge them (greedy 12-token continuation, "
        "transparent refusal patterns).",
        "- Scorers, all on the selection half: `rd` (selection-rate difference), `ftri` (per-token gate-weight "
        "rate difference), `causal` (refusal-margin change when the expert alone is rerouted), `attribution` "
        "(gate weight × gradient of the margin), `causal-greedy` (experts added one at a time by the largest "
        "drop of the margin under their *joint* ablation).",
        f"- Semantics {', '.join(cfg.semantics)}; doses N = {', '.join(map(str, cfg.doses))}; "
        f"{cfg.n_controls} distinct random sets per point, never the chosen set (all of them when fewer "
        f"exist); p = empirical two-sided p against the random sets, floor 1/(sets + 1) "
        f"({1 / (cfg.n_controls + 1):.3f} with {cfg.n_controls}), z = (chosen − random mean) / random sd.",
        f"- Cost: NLL change on {cfg.n_domain} held-out domain prompts.",
        "",
        "## Baseline",
        "",
        f"Refusal on the evaluation harmful requests {base['harmful_refusal']:.1%}, on their benign twins "
        f"{base['benign_refusal']:.1%}.",
        "",
        "## Does resonance find the experts that matter?",
        "",
        "Spearman rank correlation of each score with the causal effect over all experts (95% Fisher z CI; "
        "permutation p with its floor): "
        + ", ".join(_rho_text(r) for r in result.agreement.iter_rows(named=True))
        + ".",
        "",
        _table(result.agreement),
        "",
        "## Switching the chosen experts off",
        "",
        "Lowest refusal each scorer reached: "
        + "; ".join(
            f"{b['scorer']} {b['chosen']:.1%} ({b['semantics']}, N={b['n']}; random mean {b['control_mean']:.1%}, "
            f"min {b['control_min']:.1%}; z = {b['z']:.1f}, {format_p(b)})"
            for b in best
        )
        + ".",
        "",
        _table(summary),
        "",
        "Where a chosen set lies outside the random distribution (p cannot go below 1/(controls + 1)):",
        "",
        *verdict(result.summary),
        "",
        "NLL change on domain text (mean over the chosen set and over the random sets):",
        "",
        _table(cost, "{:+.4f}"),
        "",
        *_outcome_section(result),
        "## Forcing the chosen experts on benign requests",
        "",
        f"Top {cfg.force_n} experts of each scorer (at most k per layer) forced into the top-k, each compared "
        "with distinct random sets of the same shape forced the same way (never the chosen set; p as above):",
        "",
        _table(result.forced.drop("control_sets", strict=False)),
        "",
        *_forced_lines(result.forced),
        "",
        "## Expert scores (selection half)",
        "",
        _table(result.scores.sort("layer", "expert"), "{:.4f}"),
        "",
    ]
    return "\n".join(lines)


def exploratory_note(result: MoteResult) -> list[str]:
    """The "Exploratory" label of a run judged on the refusal suite's own evaluation half (no ``eval_probe``).

    Those halves have been looked at, and the ``compliance`` measure was added after refusal failed to
    separate from random sets; so such a write-up states it, with the smallest Benjamini–Hochberg q
    over all its tests. A run judged on a separate probe file (the pre-registered confirmatory test)
    gets no label.
    """
    if result.config.eval_probe is not None:
        return []
    p = result.outcomes["p"].to_numpy() if "p" in result.outcomes.columns else np.array([])
    q = ""
    if p.size:
        q = (
            f"; across all {p.size} tests of this run (the `outcomes` rows: measure × scorer × semantics × "
            f"dose) Benjamini–Hochberg gives min q = {float(np.nanmin(benjamini_hochberg(p))):.3f}"
        )
    return [
        "> **Exploratory.** These results were not pre-registered. The `compliance` measure (share of harmful "
        "requests answered) was chosen post hoc, after the refusal rate failed to separate from random sets, "
        f"and it was evaluated on the same held-out half{q}. The confirmatory test, on fresh prompts, is "
        "pre-registered in `docs/experiments/mote-confirmatory.md`.",
        "",
    ]


def _rho_text(row: dict[str, Any]) -> str:
    """``"rd +0.16 (95% CI −0.20 to +0.48, p = 0.38, floor 0.001)"`` from a ``rank_agreement`` row."""
    text = f"{row['score']} {row['spearman']:+.2f}"
    if row.get("ci_low") is None or row["ci_low"] != row["ci_low"]:
        return text
    return (
        f"{text} (95% CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f}, p = {row['p']:.3f}, "
        f"floor {row['p_floor']:.3f}, n = {row['n']})"
    )


def _forced_lines(forced: pl.DataFrame) -> list[str]:
    """One line per scorer: the forced set's benign refusal against its random forced sets, with p and floor."""
    if forced.is_empty() or "p" not in forced.columns:
        return []
    lines = [
        f"- `{r['scorer']}`: {r['benign_refusal_forced']:.1%} refused when forced vs random "
        f"{r['control_min']:.1%}–{r['control_max']:.1%} (mean {r['control_mean']:.1%}; base "
        f"{r['benign_refusal_base']:.1%}), {format_p(r, 3)}"
        for r in forced.iter_rows(named=True)
    ]
    return [*lines, ""]


def _fmt(measure: str, value: float) -> str:
    return f"{value:+.3f}" if measure == "margin_delta" else f"{value:.1%}"


def _outcome_section(result: MoteResult) -> list[str]:
    """Refusal removed, or the model broken? The measures beyond the refusal rate, against the same controls."""
    table = result.outcomes
    if table.is_empty() or "measure" not in table.columns:
        return []
    base = result.baseline
    lines = [
        "## Is it refusal that goes, or the model?",
        "",
        "A random quarter of a small model's experts can take refusal down by breaking the model (its "
        "continuations are then neither refusals nor answers). So every set is also measured by:",
        "",
        *[f"- `{name}`: {text}." for name, text in MEASURES.items() if name != "refusal"],
        "",
        f"Baseline on the evaluation harmful requests: {base.get('harmful_compliance', float('nan')):.1%} "
        f"answered, refusal margin {base.get('harmful_margin', float('nan')):+.2f} nats. Compliance is judged by "
        "`workbench.behaviour.judges.COMPLIANCE_PATTERNS` (an affirmative opening or a 'here is' hand-over, "
        "and no refusal pattern). The same random sets as above serve as controls; p has the same floor.",
        "",
        _table(
            _with_ci(table.filter(pl.col("measure") != "refusal"), base.get("n_harmful_eval")).select(
                "measure",
                "scorer",
                "semantics",
                "n",
                "chosen",
                pl.selectors.matches("^chosen_ci_"),
                "control_mean",
                "control_min",
                "control_max",
                "z",
                "p",
                "n_controls",
            )
        ),
        "",
        "Chosen sets beyond every random set, in the direction that removes refusal:",
        "",
    ]
    hits = _with_ci(outside(table.filter(pl.col("measure") != "refusal")), base.get("n_harmful_eval"))
    if hits.is_empty():
        lines.append("- none.")
    for r in hits.iter_rows(named=True):
        m = r["measure"]
        ci = r.get("chosen_ci_low")
        interval = (
            f" (95% CI {r['chosen_ci_low']:.1%}–{r['chosen_ci_high']:.1%})"
            if ci is not None and ci == ci
            else ""
        )
        lines.append(
            f"- `{r['scorer']}` {r['semantics']} N={r['n']}, {m}: {_fmt(m, r['chosen'])}{interval} vs random "
            f"{_fmt(m, r['control_min'])} to {_fmt(m, r['control_max'])} (mean {_fmt(m, r['control_mean'])}, "
            f"z = {r['z']:.1f}, {format_p(r, 3)})"
        )
    return [*lines, ""]
