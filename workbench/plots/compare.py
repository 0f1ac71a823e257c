"""Figures for comparisons (docs/methods.md §7): routing drift between two runs, expert similarity within one."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench.plots.common import (
    LAYOUT,
    SQUARE_FROM,
    SQUARE_HEIGHT,
    as_floats,
    chance_line,
    check_frame,
    ci_error_bars,
    compact,
    integer_ticks,
    layer_line,
    pick_layer,
)

__all__ = ["drift_lines", "expert_similarity_heatmap"]


def drift_lines(df: pl.DataFrame) -> go.Figure:
    """Top-k overlap between two runs per layer with 95% CI and the ``k/E`` chance line, from ``routing_drift``."""
    check_frame(df, ["layer", "overlap", "ci_low", "ci_high", "chance"], "drift_lines")
    part = df.sort("layer")
    fig = go.Figure(
        [
            layer_line(
                part,
                "overlap",
                as_floats(part["ci_low"]),
                as_floats(part["ci_high"]),
                "overlap",
                "layer %{x}<br>overlap %{y:.4f} (95% CI %{customdata[0]:.4f}–%{customdata[1]:.4f})"
                "<extra></extra>",
            ),
            chance_line(part),
        ]
    )
    fig.update_layout(
        title="Routing drift: top-k overlap per layer",
        xaxis_title="layer",
        yaxis_title="overlap |S∩S'|/k",
        **LAYOUT,
    )
    fig.update_xaxes(**integer_ticks(part["layer"]))
    return fig


def expert_similarity_heatmap(
    df: pl.DataFrame, layer: int | None = None, measure: str = "output_angular", top: int = 10
) -> go.Figure:
    """Expert similarity for one layer from ``expert_similarity``: pair matrix and merge candidates.

    Left: symmetric expert × expert heatmap of ``measure`` (``output_angular``, 1 = same
    output direction, 0.5 = orthogonal; or ``output_cos`` / ``weight_cos``), shared
    pseudo-experts included as extra ids. Right: the layer's ``top`` most similar routed pairs
    (smallest ``merge_rank``) as bars of output angular similarity with the 95% prompt-bootstrap
    CI, green only for merge candidates (``merge_candidate``: CI lower bound ≥
    ``workbench.interventions.expert_similarity.MERGE_MIN_ANGULAR``), grey otherwise — a top rank
    alone is no candidate.
    ``layer`` defaults to the layer with the most similar routed pair (the strongest merge
    candidate). Hover gives all three similarities, the CI, tokens and the merge rank. With many
    experts (≥ ``SQUARE_FROM``) the figure is taller and its grids go out as float32 (a 257 × 257
    layer with its hover data is 6.7 MB as float64).
    """
    what = "expert_similarity_heatmap"
    cols = ["layer", "expert_a", "expert_b", "shared", "weight_cos", "output_cos", "output_angular"]
    check_frame(df, [*cols, "ci_low", "ci_high", "n_tokens", "merge_rank"], what)
    measures = ("output_angular", "output_cos", "weight_cos")
    if measure not in measures:
        raise ValueError(f"{what}: measure must be one of {list(measures)}, got {measure!r}")
    score = pl.col("output_angular").filter(~pl.col("shared").fill_null(False)).max()
    layer = pick_layer(df, layer, what, score)
    part = df.filter(pl.col("layer") == layer)
    ids = sorted({int(x) for x in (*part["expert_a"].to_list(), *part["expert_b"].to_list())})
    pos = {e: i for i, e in enumerate(ids)}
    extra = ("weight_cos", "output_cos", "output_angular", "ci_low", "ci_high", "n_tokens", "merge_rank")
    z = np.full((len(ids), len(ids)), np.nan)
    custom = np.full((len(ids), len(ids), len(extra)), np.nan)
    a = np.array([pos[int(x)] for x in part["expert_a"].to_list()], dtype=int)
    b = np.array([pos[int(x)] for x in part["expert_b"].to_list()], dtype=int)
    values = as_floats(part[measure])
    rows = np.column_stack([as_floats(part[c]) for c in extra])
    z[a, b] = z[b, a] = values
    custom[a, b] = custom[b, a] = rows
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.6, 0.4],
        horizontal_spacing=0.14,
        subplot_titles=(f"{measure} of expert pairs", f"top {top} pairs; green = merge candidate (95% CI)"),
    )
    fig.add_trace(
        go.Heatmap(
            z=compact(z),
            x=ids,
            y=ids,
            customdata=compact(custom),
            colorscale="Viridis",
            colorbar={"title": measure, "x": 0.55},
            hovertemplate=(
                "experts %{y} & %{x}<br>weight cos %{customdata[0]:.4f}<br>output cos %{customdata[1]:.4f}"
                "<br>output angular %{customdata[2]:.4f} (95% CI %{customdata[3]:.4f}–%{customdata[4]:.4f})"
                "<br>tokens %{customdata[5]:.0f}, merge rank %{customdata[6]:.0f}<extra></extra>"
            ),
        ),
        row=1,
        col=1,
    )
    best = part.filter(pl.col("merge_rank").is_not_null()).sort("merge_rank").head(top)
    y = as_floats(best["output_angular"])
    ok = (
        best["merge_candidate"].fill_null(False).to_list()
        if "merge_candidate" in best.columns
        else [False] * len(y)
    )
    fig.add_trace(
        go.Bar(
            x=y,
            y=[f"{ea}–{eb}" for ea, eb in best.select("expert_a", "expert_b").iter_rows()],
            orientation="h",
            name="most similar pairs",
            showlegend=False,
            marker_color=["#2ca02c" if c else "#b0b0b0" for c in ok],
            error_x=ci_error_bars(y, as_floats(best["ci_low"]), as_floats(best["ci_high"])),
            customdata=np.column_stack([as_floats(best[c]) for c in extra]),
            hovertemplate=(
                "experts %{y}<br>output angular %{x:.4f} (95% CI %{customdata[3]:.4f}–%{customdata[4]:.4f})"
                "<br>weight cos %{customdata[0]:.4f}<br>merge rank %{customdata[6]:.0f}<extra></extra>"
            ),
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="expert", row=1, col=1)
    fig.update_yaxes(title_text="expert", row=1, col=1)
    fig.update_xaxes(title_text="output angular similarity (0.5 = orthogonal)", row=1, col=2)
    fig.update_yaxes(title_text="pair (merge rank order)", autorange="reversed", row=1, col=2)
    fig.update_layout(title=f"Expert similarity, layer {layer}", **LAYOUT)
    if len(ids) >= SQUARE_FROM:  # 256 experts: keep the cells square instead of a squeezed strip
        fig.update_layout(height=SQUARE_HEIGHT)
    return fig
