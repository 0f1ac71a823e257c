"""Figures for co-activation and pathways (docs/methods.md §4): pair matrix, cross-layer Sankey, fixed partners."""

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
    check_frame,
    colorbar_beside,
    colour,
    compact,
    integer_ticks,
    layer_expert_grid,
    pick_layer,
    require_columns,
    rgba,
)

__all__ = ["coactivation_matrix", "fixed_partners_heatmap", "pathways_sankey"]

SANKEY_HEIGHT = 450
"""plotly's default figure height, which the Sankey keeps while its tallest column fits in it."""
SANKEY_NODE_PX = 18
"""Height per node of the Sankey's tallest column once it outgrows :data:`SANKEY_HEIGHT`."""


def coactivation_matrix(df: pl.DataFrame, layer: int | None = None) -> go.Figure:
    """E × E heatmap of ``P(b | a)`` for one layer from ``coactivation``; unobserved pairs are 0.

    ``layer`` defaults to the layer with the most structure: the largest ``n_ab``-weighted
    mean ``|lift − 1|`` (1 = independent pairs). E is ``max(a, b) + 1`` over that layer.
    Hover shows ``n_ab`` and lift when present. Past :data:`SQUARE_FROM` experts (real MoEs: 64–256)
    the matrix is drawn square and tall, so its cells keep their shape instead of being squeezed
    into a wide strip, and its numbers go out as float32 (:func:`~workbench.plots.common.compact`).
    """
    what = "coactivation_matrix"
    require_columns(df, ["layer", "a", "b", "n_ab", "p_b_given_a"], what)
    score = None
    if "lift" in df.columns:
        score = (pl.col("n_ab") * (pl.col("lift") - 1).abs()).sum() / pl.col("n_ab").sum()
    layer = pick_layer(df, layer, what, score)
    part = df.filter(pl.col("layer") == layer)
    n = int(max(part["a"].max(), part["b"].max())) + 1  # type: ignore[arg-type, type-var]
    a = part["a"].to_numpy().astype(int)
    b = part["b"].to_numpy().astype(int)
    z = np.zeros((n, n))
    z[a, b] = as_floats(part["p_b_given_a"])
    custom = np.full((n, n, 2), np.nan)
    custom[..., 0] = 0
    custom[a, b, 0] = as_floats(part["n_ab"])
    if "lift" in part.columns:
        custom[a, b, 1] = as_floats(part["lift"])
    fig = go.Figure(
        go.Heatmap(
            z=compact(z),
            x=list(range(n)),
            y=list(range(n)),
            customdata=compact(custom),
            colorscale="Viridis",
            colorbar={"title": "P(b|a)"},
            hovertemplate=(
                "a %{y} → b %{x}<br>P(b|a) %{z:.4f}<br>n_ab %{customdata[0]:.0f}"
                "<br>lift %{customdata[1]:.3f}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=f"Co-activation, layer {layer}: P(b | a)",
        xaxis_title="expert b",
        yaxis_title="expert a",
        **LAYOUT,
    )
    if n >= SQUARE_FROM:
        fig.update_layout(height=SQUARE_HEIGHT, yaxis={"scaleanchor": "x", "constrain": "domain"})
        fig.update_xaxes(constrain="domain")
    return fig


def pathways_sankey(df: pl.DataFrame, top: int | None = None) -> go.Figure:
    """Sankey of cross-layer top-1 transitions from ``pathways``: columns are layers, nodes experts.

    A link ``Lℓ·Ee → Lℓ'·Ee'`` is as wide as the number of tokens ``n`` whose top-1 expert was
    ``e`` at layer ℓ and ``e'`` at the next MoE layer ℓ'; its colour follows the source expert.
    ``top`` keeps only the ``top`` largest links per layer pair (the analysis already keeps 20), and
    when that drops links the title says how many of how many it shows: pass the analysis' full
    table (``pathways(top=None)``) for that count to cover every transition.
    Hover on a link gives ``n``, ``n_from`` and ``p = n / n_from``; node positions are fixed so
    each layer is one column, experts ordered by id.
    """
    check_frame(
        df, ["layer_from", "layer_to", "expert_from", "expert_to", "n", "n_from", "p"], "pathways_sankey"
    )
    part = df
    if top is not None:
        if top < 1:
            raise ValueError(f"pathways_sankey: top must be >= 1 or None, got {top}")
        part = (
            df.sort(["layer_from", "n", "expert_from", "expert_to"], descending=[False, True, False, False])
            .group_by("layer_from", maintain_order=True)
            .head(top)
        )
    title = "Expert pathways: top-1 expert transitions between consecutive MoE layers (width = tokens)"
    if part.height < df.height:
        title += (
            f"<br><sup>the {top} most frequent of each layer pair: {part.height:,} of {df.height:,} "
            "transitions shown</sup>"
        )
    nodes = (
        pl.concat(
            [
                part.select(pl.col("layer_from").alias("layer"), pl.col("expert_from").alias("expert")),
                part.select(pl.col("layer_to").alias("layer"), pl.col("expert_to").alias("expert")),
            ]
        )
        .unique()
        .sort("layer", "expert")
    )
    keys = list(nodes.select("layer", "expert").iter_rows())
    index = {key: i for i, key in enumerate(keys)}
    layers = sorted({k[0] for k in keys})
    col = {layer: i for i, layer in enumerate(layers)}
    per_layer = {layer: [k for k in keys if k[0] == layer] for layer in layers}
    span = max(len(layers) - 1, 1)
    node_x = [0.01 + 0.98 * col[la] / span for la, _ in keys]
    node_y = [0.01 + 0.98 * (per_layer[la].index((la, e)) + 0.5) / len(per_layer[la]) for la, e in keys]
    src = [index[(lf, ef)] for lf, ef in part.select("layer_from", "expert_from").iter_rows()]
    dst = [index[(lt, et)] for lt, et in part.select("layer_to", "expert_to").iter_rows()]
    fig = go.Figure(
        go.Sankey(
            arrangement="fixed",
            node={
                "label": [f"L{la} E{e}" for la, e in keys],
                "x": node_x,
                "y": node_y,
                "pad": 8,
                "thickness": 14,
                "color": [colour(e) for _, e in keys],
                "hovertemplate": "%{label}<br>tokens through node %{value:.0f}<extra></extra>",
            },
            link={
                "source": src,
                "target": dst,
                "value": as_floats(part["n"]),
                "color": [rgba(colour(e), 0.35) for e in part["expert_from"].to_list()],
                "customdata": np.column_stack([as_floats(part["n_from"]), as_floats(part["p"])]),
                "hovertemplate": (
                    "%{source.label} → %{target.label}<br>tokens n %{value:.0f}"
                    " of n_from %{customdata[0]:.0f}<br>p = n/n_from %{customdata[1]:.3f}<extra></extra>"
                ),
            },
        )
    )
    fig.update_layout(title=title, **LAYOUT)
    tallest = max(len(column) for column in per_layer.values()) if per_layer else 0
    if tallest * SANKEY_NODE_PX + 120 > SANKEY_HEIGHT:  # many experts in a column: keep the nodes apart
        fig.update_layout(height=tallest * SANKEY_NODE_PX + 120)
    return fig


def fixed_partners_heatmap(df: pl.DataFrame) -> go.Figure:
    """Fixed partners from ``fixed_partners``: layer × expert heatmap plus the per-layer mean.

    Left: each expert's ``n_partners``, the fewest partners that cover the coverage share
    (default 50%) of its co-activations — small values mean fixed partners. Right: the layer
    mean, on the same layer axis. Hover adds distinct partners and the co-activation count.
    """
    cols = ["layer", "expert", "n_partners", "n_distinct_partners", "n_coactivations", "layer_mean"]
    check_frame(df, cols, "fixed_partners_heatmap")
    layers, experts, z, custom = layer_expert_grid(
        df, "n_partners", ("n_distinct_partners", "n_coactivations")
    )
    means = df.group_by("layer").agg(pl.col("layer_mean").first()).sort("layer")
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.78, 0.22],
        shared_yaxes=True,
        horizontal_spacing=0.12,
        subplot_titles=("partners covering the share, per expert", "layer mean"),
    )
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=experts,
            y=layers,
            customdata=custom,
            colorscale="Viridis_r",
            colorbar={"title": "partners", **colorbar_beside(fig)},
            hovertemplate=(
                "layer %{y}, expert %{x}<br>partners needed %{z:.0f}<br>distinct partners"
                " %{customdata[0]:.0f}<br>co-activations %{customdata[1]:.0f}<extra></extra>"
            ),
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=as_floats(means["layer_mean"]),
            y=means["layer"].to_list(),
            orientation="h",
            name="layer mean",
            marker_color=colour(0),
            hovertemplate="layer %{y}<br>mean partners %{x:.3f}<extra></extra>",
            showlegend=False,
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="expert", row=1, col=1)
    fig.update_xaxes(title_text="mean partners", row=1, col=2)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_yaxes(**integer_ticks(layers))  # both panels: they share the layer axis
    fig.update_layout(title="Fixed partners: fewest co-activation partners per expert", **LAYOUT)
    return fig
