"""The lab's result, rendered: what ran, per-token view, generations, effects with CIs, behaviour, shift.

:class:`LabResult` is what :func:`dashboards.views.lab.run_lab` measures; :func:`lab_result` turns it
into the page's sections, each with the sentence that says what its numbers count (and, where a
label has one prompt, why it has no interval).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from dash import html
from plotly.subplots import make_subplots

from dashboards.components import figure, table
from dashboards.views.common import ci_column
from dashboards.views.lab_positions import per_token_section
from workbench.analysis.stats import MIN_CI_PROMPTS
from workbench.interventions import Intervention
from workbench.interventions.controls import format_p
from workbench.interventions.effects import Evaluation
from workbench.plots.theme import TEMPLATE
from workbench.probefile import Prompt

__all__ = [
    "GENERATIONS_PAGE",
    "SHIFT_PROMPTS",
    "LabResult",
    "effects_figure",
    "effects_title",
    "generations_note",
    "interval_note",
    "lab_result",
    "shift_figure",
    "shift_note",
]

SHIFT_PROMPTS = 64
"""The routing shift is tabulated over at most this many prompts (the lab runs on at most 64)."""


@dataclass
class LabResult:
    """One lab run: the spec, the prompts, its evaluation, the generation diff and the routing shift.

    ``positions``: :func:`~workbench.interventions.position_effects.position_effects` of every prompt
    with its tokens decoded (:func:`~dashboards.views.lab_positions.decode_positions`); ``layers``: the
    model's MoE layers (the rows of the per-token routing view).
    """

    spec: Intervention
    prompts: list[Prompt]
    evaluation: Evaluation
    diff: pl.DataFrame
    shift: pl.DataFrame
    behaviour: str | None = None
    controls: pl.DataFrame | None = None  # run_with_controls: chosen first, then the random sets
    versus: dict[str, float] | None = None  # versus_controls of ``controls`` (z, p, p_floor, ...)
    positions: pl.DataFrame | None = None
    layers: list[int] | None = None


def _spec_text(spec: Intervention) -> str:
    where = "; ".join(
        f"layer {layer}: experts {list(experts)}" for layer, experts in spec.layer_experts().items()
    )
    extra = {k: v for k, v in spec.to_dict().items() if k in ("delta", "s", "renorm")}
    return f"{spec.kind} {extra or ''} on {where}".replace(" {}", "")


def _without_interval(summary: pl.DataFrame) -> pl.DataFrame:
    """The (label, n) of the labels with too few prompts for an interval (one prompt: no spread)."""
    return summary.filter(pl.col("n") < MIN_CI_PROMPTS).select("label", "n").unique().sort("label")


def effects_title(summary: pl.DataFrame) -> str:
    """The effects figure's title: which labels have a 95% interval, and why the others have none."""
    few = _without_interval(summary).height
    labels = summary["label"].n_unique()
    if labels and few == labels:
        return "Effects per label (no interval: one prompt per label gives no spread to resample)"
    if few:
        return "Effects per label (95% prompt-bootstrap CI; none where a label has only one prompt)"
    return "Effects per label (95% prompt-bootstrap CI)"


def effects_figure(summary: pl.DataFrame) -> go.Figure:
    """NLL delta, KL and top-1 agreement per label, with a 95% CI as error bars where a label has one."""
    metrics = [m for m in ("nll_delta", "kl", "top1_agreement") if m in set(summary["metric"].to_list())]
    fig = make_subplots(rows=1, cols=max(1, len(metrics)), subplot_titles=metrics)
    for i, metric in enumerate(metrics, start=1):
        sub = summary.filter(pl.col("metric") == metric).sort("label")
        value = sub["value"].to_numpy()
        few = sub["n"].to_numpy() < MIN_CI_PROMPTS  # one prompt: no interval to draw
        hi, lo = (
            np.where(few, np.nan, sub["ci_high"].to_numpy()),
            np.where(few, np.nan, sub["ci_low"].to_numpy()),
        )
        bars = None if few.all() else {
            "type": "data", "symmetric": False, "array": hi - value, "arrayminus": value - lo,
        }  # fmt: skip
        fig.add_trace(
            go.Bar(
                x=sub["label"].to_list(), y=value, name=metric, showlegend=False, error_y=bars,
                hovertemplate="%{x}: %{y:.4f}<extra>" + metric + ("" if bars is None else " (95% CI bars)") + "</extra>",
            ),
            row=1, col=i,
        )  # fmt: skip
    fig.update_layout(title=effects_title(summary), margin={"t": 70}, template=TEMPLATE)
    return fig


def interval_note(summary: pl.DataFrame) -> html.P | None:
    """Why some labels show no interval (one prompt gives no spread); None when every label has one."""
    few = _without_interval(summary)
    if few.height == 0:
        return None
    which = ", ".join(f"{r['label']} ({r['n']} prompt)" for r in few.iter_rows(named=True))
    return html.P(
        f"No interval for {which}: one prompt gives no spread, so every bootstrap resample is that prompt and "
        "an interval would have zero width. Pick a label set of the run with 2 or more prompts per label for "
        "95% intervals.",
        className="wb-muted",
        id="lab-no-interval",
    )


def shift_figure(shift: pl.DataFrame) -> go.Figure:
    """Selection share per expert at the touched layers, base vs intervened (grouped bars)."""
    x = [f"L{r['layer']}·e{r['expert']}" for r in shift.iter_rows(named=True)]
    fig = go.Figure([
        go.Bar(x=x, y=shift["share_base"].to_list(), name="base"),
        go.Bar(x=x, y=shift["share_int"].to_list(), name="intervened"),
    ])  # fmt: skip
    fig.update_layout(
        barmode="group", title="Routing shift: selection share per token (sums to top-k per layer)",
        yaxis_title="share", xaxis_title="layer · expert", template=TEMPLATE,
    )  # fmt: skip
    return fig


def _summary_rows(summary: pl.DataFrame) -> pl.DataFrame:
    return ci_column(summary).select("label", "metric", "value", "95% CI", "n")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def shift_note(n_prompts: int) -> str:
    """What the routing-shift chart counts, and what it does not."""
    return (
        f"Over the tokens of {_count(n_prompts, 'prompt')}: share is how many of a layer's top-k slots per token the expert "
        "takes, without and with the intervention (a layer's shares sum to its top-k), so one sees where "
        "displaced tokens went. It counts selections: a zeroed or scaled expert keeps its share, and its mean "
        "gate weight per token is in the table (weight_base, weight_int). Only the touched layers are shown; "
        "the per-token view lists later layers whose routing changed."
    )


GENERATIONS_PAGE = 5
"""Generations per page of the lab's generation table."""


def generations_note(shown: int, prompts: int) -> str:
    """What the generation table holds (and, when it has more than one page, how to see the rest)."""
    which = f"all {shown} prompts" if shown == prompts and shown > 1 else (
        "the prompt" if shown == prompts else f"the first {shown} of {prompts} prompts"
    )  # fmt: skip
    text = (
        f"Greedy continuations (the most likely token at each step) of {which}, without and with the "
        "intervention; same: the two texts are identical."
    )
    if shown > GENERATIONS_PAGE:
        text += f" {GENERATIONS_PAGE} per page: page through them with the arrows under the table."
    return text + (
        " A continuation can differ after a change too small to flip any top-1 of the prompt itself: once one "
        "generated token differs, everything after it is read from a different text."
    )


def lab_result(result: LabResult, saved: Any = None) -> html.Div:
    """The lab's output: what ran, the per-token view, generations, effects with CIs, behaviour, routing shift."""
    summary = result.evaluation.summary
    token_rows = summary.filter(
        ~pl.col("metric").str.starts_with("behaviour") & (pl.col("metric") != "margin_delta")
    )
    parts: list[Any] = [
        html.H3("Result", id="lab-result-title"),
        html.P(f"{_spec_text(result.spec)} · {len(result.prompts)} prompt(s)", className="wb-summary"),
        saved,
    ]
    if result.positions is not None:
        parts += per_token_section(result.positions, result.layers or [])
    parts += [
        html.H4("Greedy generation, base vs intervened"),
        html.P(generations_note(result.diff.height, len(result.prompts)), className="wb-muted"),
        table(
            result.diff.select(*(c for c in ("prompt_id", "label") if c in result.diff.columns),
                               "prompt", "base", "intervened", "same"),
            table_id="lab-diff", page_size=GENERATIONS_PAGE,
        ),
        html.H4("Token effects: NLL change, KL, top-1 agreement"),
        html.P(
            "Over all positions of each label's prompts (the per-token view above keeps them apart). "
            "nll_delta: intervened − baseline NLL of the text's own next token, per token (a change); "
            "kl: KL(baseline ‖ intervened), per token; top1_agreement: share of tokens whose top-1 prediction "
            "is unchanged (a level, 1 = no change); nll_base: the baseline NLL (a level). Intervals are 95% "
            "prompt-bootstrap CIs: prompts are resampled, so they say how much the value depends on which "
            "prompts were picked, not how it would change on other kinds of text.",
            className="wb-muted",
        ),
        interval_note(token_rows),
        figure(effects_figure(token_rows), graph_id="lab-effects"),
        table(_summary_rows(token_rows), table_id="lab-summary", page_size=12),
    ]  # fmt: skip
    if result.behaviour:
        beh = summary.filter(
            pl.col("metric").str.starts_with("behaviour") | (pl.col("metric") == "margin_delta")
        )
        parts += [
            html.H4(f"Behaviour: {result.behaviour}"),
            html.P(
                "behaviour_rate_base / behaviour_rate: share of greedy continuations judged as refusals "
                "without / with the intervention; margin_delta: change of log p(refuse) − log p(comply).",
                className="wb-muted",
            ),
            table(_summary_rows(beh), table_id="lab-behaviour"),
        ]
    if result.controls is not None and result.versus is not None:
        v = result.versus
        parts += [
            html.H4("Against random experts"),
            html.P(
                f"NLL change per token {v['chosen']:+.4f} vs {int(v['n_controls'])} distinct random sets of the "
                f"same shape ({v['control_min']:+.4f} to {v['control_max']:+.4f}, mean {v['control_mean']:+.4f}; "
                f"z = {v['z']:.1f}, {format_p(v, 3)}).",
                className="wb-summary",
                id="lab-controls-summary",
            ),
            table(result.controls, table_id="lab-controls", page_size=11),
        ]
    parts += [
        html.H4("Routing shift at the touched layers"),
        html.P(shift_note(min(len(result.prompts), SHIFT_PROMPTS)), className="wb-muted"),
        figure(shift_figure(result.shift), graph_id="lab-shift"),
        table(result.shift, table_id="lab-shift-table", page_size=16),
    ]
    return html.Div([p for p in parts if p is not None])
