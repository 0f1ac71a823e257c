"""Routing explorer: where a label's tokens go (layer × expert selection share) and, per prompt,
which expert each token chose, with its top-k experts, gate weights and router logits."""

from __future__ import annotations

import colorsys
import html as html_lib
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from dash import html

from dashboards import data
from dashboards.components.pickers import ALL
from workbench.plots.common import layer_expert_heatmap, layer_rows_height

__all__ = [
    "expert_colorscale",
    "expert_colour",
    "prompt_options",
    "selection_share",
    "share_heatmap",
    "token_grid",
    "token_text",
]


def selection_share(db: str, run: str, label: str | None) -> pl.DataFrame:
    """(layer, expert, share, n_tokens): the fraction of tokens whose top-k set holds the expert.

    From the specialisation table (per label); for all labels, the token-weighted mean over
    labels, i.e. the same share over every labelled token. It sums to k over a layer's experts.
    """
    spec = data.analysis(db, run, "specialisation")
    if label and label != ALL:
        part = spec.filter(pl.col("label") == label)
        if part.height == 0:
            raise ValueError(f"run {run!r} has no tokens labelled {label!r}; labels: {data.labels(db, run)}")
        return part.select("layer", "expert", "share", "n_tokens")
    return (
        spec.group_by("layer", "expert")
        .agg(
            ((pl.col("share") * pl.col("n_tokens")).sum() / pl.col("n_tokens").sum()).alias("share"),
            pl.col("n_tokens").sum(),
        )
        .sort("layer", "expert")
    )


def share_heatmap(db: str, run: str, label: str | None) -> go.Figure:
    """Layer × expert heatmap of :func:`selection_share`; a click opens the expert card."""
    share = selection_share(db, run, label)
    which = "all labelled tokens" if not label or label == ALL else f"label {label!r}"
    fig = layer_expert_heatmap(
        share, "share", ("n_tokens",),
        title=f"Selection share: fraction of {which} routed to each expert (click a cell for its card)",
        colorbar="share", colorscale="Viridis", zmin=0.0,
        hover="share %{z:.4f}<br>tokens %{customdata[0]:.0f}",
    )  # fmt: skip
    fig.update_yaxes(dtick=1)
    return fig


def prompt_options(db: str, run: str | None, label: str | None) -> list[dict[str, Any]]:
    """Dropdown options for the run's prompts (of ``label`` unless all), their text shortened."""
    if not run:
        return []
    prompts = data.prompts(db, run, None if not label or label == ALL else label)
    return [
        {"label": f"#{r['prompt_id']} [{r['label']}] {_short(str(r['text']))}", "value": int(r["prompt_id"])}
        for r in prompts.head(500).iter_rows(named=True)
    ]


def _short(text: str, n: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


GOLDEN = 0.381966
"""Successive expert ids turn the hue by the golden angle (as a fraction of the circle): neighbours differ."""
LIGHTNESS = (0.80, 0.71, 0.88)
"""Lightness cycles over three levels too, so ids whose hues come close again still differ; all stay
light enough for dark text on them."""


def expert_colour(expert: int) -> str:
    """The categorical colour of an expert id: the same on the token strip and the top-1 grid.

    Golden-angle hues with cycling lightness (:data:`GOLDEN`, :data:`LIGHTNESS`): an id's colour does
    not depend on how many experts the run has, and neighbouring ids never look alike.
    """
    if expert < 0:
        return "#dddddd"
    r, g, b = colorsys.hls_to_rgb((expert * GOLDEN) % 1.0, LIGHTNESS[expert % 3], 0.65)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def expert_colorscale(n_ids: int) -> list[list[Any]]:
    """A stepped plotly colorscale giving each id ``0..n_ids-1`` its :func:`expert_colour` (z from -0.5 to n_ids-0.5)."""
    n = max(1, n_ids)
    scale: list[list[Any]] = []
    for e in range(n):
        colour = expert_colour(e)
        scale += [[e / n, colour], [(e + 1) / n, colour]]
    return scale


def _numbers(values: Any) -> str:
    if values is None:
        return "not stored"
    return ", ".join(f"{float(v):.3f}" for v in values)


def _hover(row: dict[str, Any]) -> str:
    """Hover text of one (token, layer): the token exactly, its top-k experts with weights, and their logits."""
    experts = list(row["experts"] or [])
    logits = row.get("logits")
    chosen_logits = (
        [logits[e] for e in experts if logits is not None and 0 <= e < len(logits)] if logits else None
    )
    return (
        f"{row['text']} (position {row['position']}), layer {row['layer']}\n"
        f"{row['hover']}\n"
        f"top-k experts: {', '.join(str(e) for e in experts)}\n"
        f"weights: {_numbers(row['weights'])}\n"
        f"their logits: {_numbers(chosen_logits)}"
    )


def _routing(db: str, run: str, prompt_id: int | None) -> pl.DataFrame:
    if prompt_id is None:
        raise ValueError("pick a prompt")
    rows = data.prompt_routing(db, run, prompt_id)
    if rows.height == 0:
        raise ValueError(f"prompt {prompt_id} of run {run!r} has no routing rows (not captured yet?)")
    return rows


def token_text(db: str, run: str, prompt_id: int | None, layer: int | None) -> html.Div:
    """The prompt's decoded tokens coloured by their top-1 expert at ``layer``; hover: id, top-k, weights, logits.

    The strip wraps like text (tokens are inline boxes, a long one may break inside): it never widens the page.
    """
    rows = _routing(db, run, prompt_id)
    layers = sorted(set(rows["layer"].to_list()))
    if layer is None or layer not in layers:
        raise ValueError(f"layer {layer} was not captured for this prompt; layers: {layers}")
    spans = []
    for row in rows.filter(pl.col("layer") == layer).sort("position").iter_rows(named=True):
        top1 = int(row["experts"][0]) if row["experts"] else -1
        spans.append(
            html.Span(
                [html.Span(str(row["text"]), className="wb-tok-text"), html.Sub(str(top1))],
                title=_hover(row),
                className="wb-token",
                style={"backgroundColor": expert_colour(top1)},
            )
        )
    return html.Div(
        [
            html.P(
                f"Layer {layer}: each token is coloured by its top-1 expert (subscript; the same colours as the "
                "grid below); · is a space, ⏎ a newline, → a tab. Hover for the token id and the top-k."
            ),
            html.Div(spans, className="wb-token-strip", id="routing-strip"),
        ],
        className="wb-tokens",
    )


MAX_CELL_TEXT = 600
"""Token grids up to this many cells print each cell's expert; bigger ones rely on colour and hover."""
MAX_TICKS = 80
"""At most this many token labels on the grid's x axis."""


def token_grid(db: str, run: str, prompt_id: int | None) -> go.Figure:
    """Position × layer grid of each token's top-1 expert, in :func:`expert_colour` (hover: token, top-k, weights,
    logits); click → card."""
    rows = _routing(db, run, prompt_id)
    layers = sorted(set(rows["layer"].to_list()))
    positions = sorted(set(rows["position"].to_list()))
    z = np.full((len(layers), len(positions)), np.nan)
    hover = np.full((len(layers), len(positions)), "", dtype=object)
    tokens: dict[int, str] = {}
    for row in rows.iter_rows(named=True):
        li, pi = layers.index(row["layer"]), positions.index(row["position"])
        z[li, pi] = row["experts"][0] if row["experts"] else np.nan
        hover[li, pi] = html_lib.escape(_hover(row)).replace("\n", "<br>")
        tokens[row["position"]] = str(row["text"])
    n_experts = [int(x) for x in data.layers(db, run)["n_experts"].to_list()]
    n_ids = max([*n_experts, int(np.nanmax(z)) + 1 if np.isfinite(z).any() else 0])
    # Cell numbers and one tick per token are drawn as SVG text each: on a 500-token prompt × 8 layers
    # that froze the browser for seconds. Numbers only on small grids; at most MAX_TICKS token labels.
    every = max(1, -(-n_ids // 16))
    fig = go.Figure(
        go.Heatmap(
            z=z, x=positions, y=layers, customdata=z, text=hover,
            colorscale=expert_colorscale(n_ids), zmin=-0.5, zmax=n_ids - 0.5,
            colorbar={"title": "top-1 expert", "tickvals": list(range(0, n_ids, every))},
            hovertemplate="%{text}<extra></extra>", xgap=1 if len(positions) <= MAX_TICKS else 0, ygap=1,
            texttemplate="%{z:.0f}" if z.size <= MAX_CELL_TEXT else None,
        )
    )  # fmt: skip
    step = max(1, -(-len(positions) // MAX_TICKS))
    shown = positions[::step]
    fig.update_layout(
        title="Top-1 expert per token and layer (click a cell for that expert's card)",
        xaxis={
            "title": "token" if step == 1 else f"token (every {step}th labelled)",
            "tickvals": shown,
            "ticktext": [tokens.get(p, "") for p in shown],
        },
        yaxis={"title": "layer", "tickvals": layers},
        template="plotly_white",
    )
    height = layer_rows_height(len(layers))  # one labelled row per layer: a 58-layer model needs room
    if height is not None:
        fig.update_layout(height=height)
    return fig
