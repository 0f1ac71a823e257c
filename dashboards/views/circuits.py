"""Circuits page: two labels' expert circuits on the attached model, and how much they share.

:func:`workbench.interventions.circuits.compare_circuits` does the work (docs/methods.md §9): each
expert's importance for a label is the change of the gold answer's log-prob when it alone is
zero-ablated; a label's circuit is the fewest experts whose joint ablation removes ≥ 80% of the
full drop. This module picks the prompts (a suite with ``meta.gold`` answers, first ``n`` per
label), runs the comparison under the model lock and renders it: both circuits, IoU / overlap /
importance Spearman, the importance scatter and the cross-ablation table with CIs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import plotly.graph_objects as go
import polars as pl
from dash import html

from dashboards.components import figure, table
from dashboards.jobs import MODEL_LOCK, cancellable
from dashboards.views.bounds import CIRCUIT_PROMPTS, count_within
from dashboards.views.common import ci_column
from workbench.interventions.circuits import CircuitComparison, compare_circuits
from workbench.interventions.metrics import gold_logprob
from workbench.models.loading import LoadedModel
from workbench.plots.theme import TEMPLATE
from workbench.probefile import Prompt

__all__ = [
    "DEFAULT_LABELS",
    "DEFAULT_SUITE",
    "circuit_prompts",
    "circuits_job",
    "circuits_result",
    "importance_scatter",
    "run_circuits",
    "suite_labels",
]

DEFAULT_SUITE = "tasks"
DEFAULT_LABELS = ("brackets", "arithmetic")
Progress = Callable[[int, int, str], None]


@lru_cache(maxsize=8)
def _suite(name: str) -> list[Prompt]:
    """The suite's prompts (cached: suites are files shipped with the package; callers do not mutate them)."""
    from workbench.data.suites import load_suite

    try:
        return load_suite(name)
    except (KeyError, FileNotFoundError) as exc:
        raise ValueError(f"no probe suite {name!r}: {exc}") from exc


def suite_labels(suite: str) -> list[str]:
    """Labels of ``suite`` whose prompts all carry a ``meta.gold`` answer (the circuit metric needs one)."""
    prompts = _suite(suite)
    labels = sorted({p.label for p in prompts if p.label})
    return [lab for lab in labels if all((p.meta or {}).get("gold") for p in prompts if p.label == lab)]


def circuit_prompts(suite: str, a: str | None, b: str | None, n: Any) -> tuple[list[Prompt], list[Prompt]]:
    """The first ``n`` prompts of labels ``a`` and ``b`` of ``suite`` (both need gold answers).

    ``n`` is within :data:`~dashboards.views.bounds.CIRCUIT_PROMPTS` (None: 16).
    """
    if not isinstance(suite, str):
        raise ValueError(f"the suite must be a suite name, not {type(suite).__name__}")
    if not a or not b:
        raise ValueError("pick two labels")
    if not isinstance(a, str) or not isinstance(b, str):
        raise ValueError("the labels must be label names")
    if a == b:
        raise ValueError(f"pick two different labels (both are {a!r})")
    count = count_within(n, CIRCUIT_PROMPTS, "prompts per label", 16)
    have = suite_labels(suite)
    groups = []
    for label in (a, b):
        if label not in have:
            raise ValueError(f"suite {suite!r} has no label {label!r} with gold answers; labels: {have}")
        groups.append([p for p in _suite(suite) if p.label == label][:count])
    return groups[0], groups[1]


def run_circuits(
    loaded: LoadedModel, prompts_a: Sequence[Prompt], prompts_b: Sequence[Prompt], *, n_boot: int = 500
) -> CircuitComparison:
    """``compare_circuits`` on the gold answer's log-prob (holding the model lock; every forward pass can cancel it)."""
    with MODEL_LOCK, cancellable(loaded.model):
        return compare_circuits(loaded, prompts_a, prompts_b, gold_logprob(loaded), n_boot=n_boot)


def importance_scatter(result: CircuitComparison) -> go.Figure:
    """Importance of each expert for label A (x) vs label B (y); colour: which circuit it is in."""
    a, b = result.a, result.b
    joined = a.importance.select("layer", "expert", pl.col("effect").alias("a")).join(
        b.importance.select("layer", "expert", pl.col("effect").alias("b")), on=["layer", "expert"]
    )
    in_a, in_b = set(a.experts), set(b.experts)

    def group(cell: tuple[int, int]) -> str:
        if cell in in_a and cell in in_b:
            return "both circuits"
        return f"circuit({a.label})" if cell in in_a else f"circuit({b.label})" if cell in in_b else "neither"

    groups = [group((int(r["layer"]), int(r["expert"]))) for r in joined.iter_rows(named=True)]
    frame = joined.with_columns(pl.Series("group", groups))
    fig = go.Figure()
    for name in ("neither", f"circuit({a.label})", f"circuit({b.label})", "both circuits"):
        sub = frame.filter(pl.col("group") == name)
        if sub.height == 0:
            continue
        fig.add_trace(
            go.Scatter(
                x=sub["a"].to_list(), y=sub["b"].to_list(), mode="markers", name=name,
                text=[f"L{r['layer']}·e{r['expert']}" for r in sub.iter_rows(named=True)],
                hovertemplate="%{text}<br>" + a.label + ": %{x:.4f}<br>" + b.label + ": %{y:.4f}<extra></extra>",
                marker={"size": 9},
            )
        )  # fmt: skip
    fig.update_layout(
        title=f"Expert importance: {a.label} vs {b.label} (Δ gold log-prob when ablated alone)",
        xaxis_title=f"importance for {a.label}", yaxis_title=f"importance for {b.label}", template=TEMPLATE,
    )  # fmt: skip
    return fig


def _cells(cells: Sequence[tuple[int, int]]) -> str:
    return (
        ", ".join(f"L{layer}·e{expert}" for layer, expert in cells) or "(empty: no expert's ablation hurts)"
    )


def circuits_result(result: CircuitComparison) -> html.Div:
    """Both circuits, the overlap numbers, the importance scatter and the cross-ablation table."""
    lo, hi = result.spearman_ci
    circuits = pl.DataFrame({
        "label": [c.label for c in (result.a, result.b)],
        "experts": [_cells(c.experts) for c in (result.a, result.b)],
        "size": [len(c.experts) for c in (result.a, result.b)],
        "share_of_full_drop": [c.share for c in (result.a, result.b)],
        "full_drop": [c.full_drop for c in (result.a, result.b)],
    })  # fmt: skip
    cross = ci_column(result.cross).select("ablated", "evaluated_on", "effect", "95% CI", "n")
    return html.Div(
        [
            html.H3("Circuits", id="circuits-title"),
            table(circuits, table_id="circuits-table"),
            html.P(
                f"IoU {result.iou:.2f} · overlap coefficient {result.overlap:.2f} · importance Spearman "
                f"{result.spearman:+.2f} (95% CI {lo:+.2f} to {hi:+.2f}, permutation p = {result.spearman_p:.3f})"
                " · experts chosen on "
                + " + ".join(str(len(v)) for v in result.selection.values())
                + " prompts, judged on the other "
                + " + ".join(str(len(v)) for v in result.evaluation.values()),
                className="wb-summary",
                id="circuits-overlap",
            ),
            figure(importance_scatter(result), graph_id="circuits-scatter"),
            html.H4("Held out: each circuit's share of the full drop on its label's evaluation prompts"),
            table(result.held_out, table_id="circuits-held-out"),
            html.H4("Cross-ablation: each circuit ablated, measured on both labels' evaluation prompts"),
            table(cross, table_id="circuits-cross"),
            html.H4("Attribution vs true ablation (Spearman per label, 95% CI, permutation p)"),
            table(result.importance_agreement, table_id="circuits-agreement"),
        ]
    )


def circuits_job(
    loaded: LoadedModel, suite: str, a: str | None, b: str | None, n: Any, *, progress: Progress | None = None
) -> html.Div:
    """The circuits callback: prompts, the comparison (slow: one ablation per expert and label), rendering."""
    prompts_a, prompts_b = circuit_prompts(suite, a, b, n)
    if progress:
        n_experts = sum(x.n_experts for x in loaded.layers)
        progress(1, 3, f"ablating each of {n_experts} experts on {len(prompts_a)} + {len(prompts_b)} prompts")
    result = run_circuits(loaded, prompts_a, prompts_b)
    if progress:
        progress(3, 3, "done")
    return circuits_result(result)
