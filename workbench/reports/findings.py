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

from collections.abc import Callable

import polars as pl

from workbench.reports.findings_structure import (
    agreement,
    coactivation,
    drift,
    dynamic_k,
    expert_similarity,
    fixed_partners,
    pathways,
    resonance,
)
from workbench.reports.findings_usage import (
    balance,
    collapse,
    degradation,
    esft,
    load,
    mutual_information,
    probe,
    router_confidence,
    specialisation,
    super_experts,
    tcess,
    underfitting,
    vocab,
)
from workbench.reports.wording import Context, Findings, fmt_q, pct, pct_ci, pct_decimals, pct_ref

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
