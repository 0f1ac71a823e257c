"""The lab's per-token view: what an intervention changed at each position of one chosen prompt.

The numbers come from :func:`workbench.interventions.position_effects.position_effects` (computed in
the lab's job, for every prompt it ran on); this module only decodes token ids and draws them. The
whole table travels with the result in the page (a ``dcc.Store``), so picking another prompt redraws
it without running the model again.

Token ids become text in one place, :func:`token_text`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import plotly.graph_objects as go
import polars as pl
from dash import dcc, html
from plotly.subplots import make_subplots

from dashboards.components import figure, message, table
from workbench.interventions.position_effects import POSITION_SCHEMA, position_summary
from workbench.models.loading import LoadedModel
from workbench.tokentext import visible

__all__ = [
    "PER_TOKEN",
    "PICK",
    "POSITIONS",
    "decode_positions",
    "per_token_figure",
    "per_token_section",
    "per_token_sentence",
    "per_token_view",
    "prompt_options",
    "token_text",
]

PICK = {"role": "lab-prompt", "result": 0}
"""The prompt picker (a pattern-matching id: it exists only once a result is shown)."""
POSITIONS = {"role": "lab-positions", "result": 0}
"""The per-position table of every prompt of the result, in the page."""
PER_TOKEN = {"role": "lab-per-token", "result": 0}
"""Where the chosen prompt's per-token view is drawn."""

EXPLAIN = (
    "Each row is one position of the chosen prompt as the model reads it. Both runs read the same text "
    "(teacher-forced), so a change at one position comes from the intervention at that position or before "
    "it, never from a different continuation. base / intervened top-1: the most likely next token after "
    "this position without / with the intervention. log p base / log p int: the log-probability of the base "
    "top-1 under each run (Δ log p < 0: the intervention took probability away from what the model would "
    "have said). KL: KL(base ‖ intervened) of the whole next-token distribution, in nats (0: the same "
    "distribution). routing changed at: the MoE layers where this position's top-k expert set differs; a "
    "layer after the intervened one can change too. Numbers are rounded to 4 decimals, so a KL shown as 0 "
    "is below 0.00005. Not shown: changes of gate weights within the same expert set (a zeroed expert keeps "
    "its slot, so zero changes no set at its own layer), effects on the tokens the model would generate "
    "(see the generations below), and whether a change matters for a task."
)
"""What the per-token numbers mean and what they do not show."""


def token_text(loaded: LoadedModel, token_id: int) -> str:
    """How the lab shows one token id: the tokenizer's own decoding of that single id, whitespace made
    visible as on every other page (``workbench.tokentext.visible``)."""
    text: str = loaded.tokenizer.decode([int(token_id)])
    return visible(text)


def decode_positions(table: pl.DataFrame, decode: Callable[[int], str]) -> pl.DataFrame:
    """``table`` with the readable ``token``, ``base_top1`` and ``int_top1`` beside their ids."""
    ids = (
        set(table["token_id"].to_list())
        | set(table["top1_base"].to_list())
        | set(table["top1_int"].to_list())
    )
    shown = {i: decode(i) for i in ids}

    def text(column: str) -> pl.Expr:
        return pl.col(column).replace_strict(shown, return_dtype=pl.Utf8)

    return table.with_columns(
        text("token_id").alias("token"),
        text("top1_base").alias("base_top1"),
        text("top1_int").alias("int_top1"),
    )


def prompt_options(summary: pl.DataFrame) -> list[dict[str, Any]]:
    """One picker entry per prompt: its id, label, and how many of its positions changed top-1 and routing."""
    return [
        {
            "label": f"prompt {r['prompt_id']} · {r['label']} · top-1 changed at {r['top1_changed']} of "
            f"{r['n_positions']} positions, routing at {r['routing_changed']}",
            "value": int(r["prompt_id"]),
        }
        for r in summary.iter_rows(named=True)
    ]


def _quoted(text: str) -> str:
    return repr(text)


def per_token_sentence(rows: pl.DataFrame) -> str:
    """One prompt's per-token result in words: top-1 and routing changes (with the first), the largest KL."""
    n = rows.height
    flipped = rows.filter(pl.col("top1_base") != pl.col("top1_int"))
    routed = rows.filter(pl.col("changed_layers").list.len() > 0)
    parts = [f"Top-1 next token changed at {flipped.height} of {n} positions"]
    if flipped.height:
        first = flipped.row(0, named=True)
        parts[-1] += (
            f" (first after position {first['position']} {_quoted(first['token'])}: "
            f"{_quoted(first['base_top1'])} → {_quoted(first['int_top1'])})"
        )
    parts.append(f"the top-k expert set changed at {routed.height} of {n} positions")
    if routed.height:
        first = routed.row(0, named=True)
        layers = ", ".join(str(x) for x in first["changed_layers"])
        parts[-1] += f" (first at position {first['position']} {_quoted(first['token'])}, layer(s) {layers})"
    top = rows.sort("kl", descending=True, maintain_order=True).row(0, named=True) if n else None
    if top is None or top["kl"] <= 0:
        parts.append("KL is 0 at every position")
    else:
        parts.append(
            f"the largest KL is {top['kl']:.3g} nats, after position {top['position']} {_quoted(top['token'])}"
        )
    return "; ".join(parts) + "."


def _ticks(n: int) -> dict[str, Any]:
    """Integer position ticks, at most about 25 of them."""
    return {"tick0": 0, "dtick": max(1, math.ceil(n / 25)), "tickformat": "d"}


def per_token_figure(rows: pl.DataFrame, layers: Sequence[int]) -> go.Figure:
    """KL per position; log p of the base top-1 under both runs; the layers whose top-k set changed."""
    pos = rows["position"].to_list()
    hover = [
        f"position {r['position']} {_quoted(r['token'])}<br>top-1 {_quoted(r['base_top1'])} → {_quoted(r['int_top1'])}"
        for r in rows.iter_rows(named=True)
    ]
    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.35, 0.35, 0.3],
        subplot_titles=("KL(base ‖ intervened), nats", "log p of the base top-1", "top-k set changed (1) per MoE layer"),
    )  # fmt: skip
    fig.add_trace(
        go.Bar(x=pos, y=rows["kl"].to_list(), name="KL", hovertext=hover, hoverinfo="text+y", showlegend=False),
        row=1, col=1,
    )  # fmt: skip
    for column, name in (("logp_base", "base"), ("logp_int", "intervened")):
        fig.add_trace(
            go.Scatter(x=pos, y=rows[column].to_list(), name=name, mode="lines+markers", hovertext=hover,
                       hoverinfo="text+y+name"),
            row=2, col=1,
        )  # fmt: skip
    changed = [[1 if layer in set(r) else 0 for r in rows["changed_layers"].to_list()] for layer in layers]
    fig.add_trace(
        go.Heatmap(
            x=pos, y=[f"layer {x}" for x in layers], z=changed, zmin=0, zmax=1, showscale=False,
            colorscale=[[0, "#f2f2f2"], [1, "#d62728"]], hovertemplate="position %{x}, %{y}: %{z}<extra></extra>",
        ),
        row=3, col=1,
    )  # fmt: skip
    fig.update_xaxes(**_ticks(len(pos)))
    fig.update_xaxes(title_text="position (the prediction made after reading this token)", row=3, col=1)
    fig.update_yaxes(type="category", row=3, col=1)
    fig.update_layout(height=560, margin={"t": 50}, legend={"orientation": "h", "y": 1.08})
    return fig


def _table(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.select(
        "position",
        "token",
        pl.col("base_top1").alias("base top-1"),
        pl.col("int_top1").alias("intervened top-1"),
        (pl.col("top1_base") == pl.col("top1_int")).alias("same top-1"),
        pl.col("logp_base").alias("log p base"),
        pl.col("logp_int").alias("log p int"),
        (pl.col("logp_int") - pl.col("logp_base")).alias("Δ log p"),
        pl.col("kl").alias("KL"),
        pl.col("changed_layers")
        .list.eval(pl.element().cast(pl.Utf8))
        .list.join(", ")
        .replace("", "none")
        .alias("routing changed at"),
    )


ROW_SCHEMA: dict[str, Any] = {
    **{k: v for k, v in POSITION_SCHEMA.items() if k not in ("prompt_id", "label")},
    "token": pl.Utf8,
    "base_top1": pl.Utf8,
    "int_top1": pl.Utf8,
}
"""One stored row of the per-token table (the page keeps them per prompt, without prompt id and label)."""


def _rows(records: Any) -> pl.DataFrame:
    """The stored rows of one prompt as a table; ValueError when they are not what the lab stored."""
    damaged = "this result's per-token table is damaged: run the intervention again"
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and ROW_SCHEMA.keys() <= r.keys() for r in records
    ):
        raise ValueError(damaged)
    try:
        return pl.DataFrame(records, schema=ROW_SCHEMA)
    except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(damaged) from exc


def per_token_view(records: Any, layers: Sequence[int]) -> html.Div:
    """One prompt's per-token view from its rows of :func:`decode_positions` (as stored in the page)."""
    if not records:
        return html.Div(message("No positions for this prompt: pick one of the list."))
    rows = _rows(records)
    return html.Div(
        [
            html.P(per_token_sentence(rows), className="wb-summary", id="lab-per-token-summary"),
            figure(per_token_figure(rows, layers), graph_id="lab-per-token-figure"),
            table(_table(rows), table_id="lab-per-token-table", page_size=16),
        ]
    )


def per_token_section(positions: pl.DataFrame, layers: Sequence[int]) -> list[Any]:
    """The per-token part of a lab result: what it means, the prompt picker, the first prompt's view.

    ``positions`` is a :func:`decode_positions` table of every prompt; the page keeps it (by prompt
    id) so that the picker can redraw another prompt's view without the model.
    """
    summary = position_summary(positions)
    if summary.height == 0:
        return [html.H4("What changed at each position"), message("No positions to show.")]
    first = int(summary["prompt_id"][0])
    by_prompt = {
        str(pid): part.drop("prompt_id", "label").to_dicts()
        for (pid,), part in positions.partition_by("prompt_id", as_dict=True, maintain_order=True).items()
    }
    return [
        html.H4("What changed at each position"),
        html.P(EXPLAIN, className="wb-muted"),
        dcc.Dropdown(
            id=PICK, options=prompt_options(summary), value=first, clearable=False, className="wb-pick-wide"
        ),
        dcc.Store(id=POSITIONS, data={"layers": list(layers), "prompts": by_prompt}),
        html.Div(per_token_view(by_prompt[str(first)], layers), id=PER_TOKEN),
    ]


def pick_prompt(prompt_id: Any, stored: Any) -> html.Div:
    """The picker's callback body: the view of ``prompt_id`` from the table the page keeps."""
    if not isinstance(stored, dict) or not isinstance(stored.get("prompts"), dict):
        return html.Div(message("This result holds no per-token table: run the intervention again."))
    layers = [int(x) for x in stored.get("layers") or []]
    return per_token_view(stored["prompts"].get(str(prompt_id)), layers)
