"""Findings for domain specialisation (docs/methods.md §2): who over-uses which expert, in words that match the test.

A cell is headlined only when it is specialised in the one sense the workbench uses
(:func:`~workbench.analysis.specialisation.is_specialised`): the label uses the expert more than
the other labels do, at ``q < alpha`` in a one-sided label-permutation test with BH over the map.
Headlines are ranked by the effect size (log-odds of the slot share against the other labels),
never by lift over uniform, and each sentence states what was tested: the label's share against
the other labels' share. Lift over uniform is quoted last, as context.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from workbench.analysis.specialisation import specialised_cells
from workbench.wording import Context, Findings, finite, fmt_q, label_name, pct, rows_of

__all__ = ["specialisation", "specialist_sentence"]


def _interval(lo: Any, hi: Any) -> str:
    if lo is None or hi is None or lo != lo or hi != hi:
        return ""
    return f" [{lo:.2f}, {hi:.2f}]"


def specialist_sentence(r: dict[str, Any]) -> str:
    """ "Label code uses layer 3 expert 5 more than the other labels do: 41% of its tokens vs 12% …"."""
    spec = r["specificity"]
    times = "∞" if spec == float("inf") else f"{spec:.1f}"
    return (
        f"Label {label_name(r['label'])} uses layer {r['layer']} expert {r['expert']} more than the other labels "
        f"do: {pct(r['share'])} of its tokens vs {pct(r['share_rest'])} of theirs ({times}× as often; "
        f"log-odds of the slot share {r['log_odds']:.2f}{_interval(r.get('lo_low'), r.get('lo_high'))}; "
        f"{fmt_q(r['q'])}); lift over uniform {r['lift']:.1f}×."
    )


def specialisation(df: pl.DataFrame, ctx: Context, top: int = 6) -> Findings:
    """Specialised cells (best per label first, then the strongest others), then each label with none.

    Needs the table of :func:`~workbench.analysis.specialisation.domain_specialisation`. The
    "none" sentence quotes the smallest q among the label's *over-use* cells only, so a small q of
    an under-used cell can never sit next to "no expert is significantly specialised".
    """
    labels = sorted({str(x) for x in df["label"].drop_nulls().unique().to_list()})
    if len(labels) < 2 and (df.height == 0 or df["q"].is_nan().all()):
        return [
            f"Significance needs at least two labels to permute; this run has {len(labels)} "
            f"({', '.join(labels) or 'none'}), so shares are reported without q-values."
        ]
    sig = specialised_cells(df, ctx.alpha)
    out = [
        f"{sig.height} of {df.height:,} (layer, expert, label) cells are specialised at q < {ctx.alpha:g}: the "
        "label uses the expert more than the other labels do (one-sided label-permutation test over prompts, "
        "Benjamini–Hochberg over all cells; ranked by log-odds against the other labels)."
    ]
    chosen = rows_of(sig.group_by("label", maintain_order=True).head(1).head(top))
    keys = {(r["layer"], r["expert"], r["label"]) for r in chosen}
    for r in rows_of(sig):
        if len(chosen) >= top:
            break
        if (r["layer"], r["expert"], r["label"]) not in keys:
            chosen.append(r)
    chosen.sort(key=lambda r: -r["log_odds"])
    out.extend(specialist_sentence(r) for r in chosen)
    sig_labels = set(sig["label"].to_list())
    over = df.filter(pl.col("share") > pl.col("share_rest"))
    for label in labels:
        if label in sig_labels:
            continue
        part = finite(over.filter(pl.col("label") == label), "q")
        smallest = (
            fmt_q(part["q"].min(), "smallest q of a cell it over-uses")  # type: ignore[arg-type]
            if part.height
            else "it over-uses no expert relative to the other labels"
        )
        out.append(
            f"No expert is significantly specialised for {label_name(label)}: no expert is used more by it than by "
            f"the other labels at q < {ctx.alpha:g} ({smallest})."
        )
    return out
