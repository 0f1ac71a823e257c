"""Figures for expert health in multi-task use (docs/methods.md §3, HoME): collapse, degradation, underfitting."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench.plots.common import (
    LAYOUT,
    as_floats,
    check_frame,
    colorbar_beside,
    colour,
    integer_ticks,
    labels_of,
)

__all__ = ["collapse_panels", "degradation_scatter", "underfitting_bars"]


def collapse_panels(df: pl.DataFrame) -> go.Figure:
    """HoME collapse from ``expert_collapse``: per-expert scatter (left) and per-layer spread (right).

    Left: each expert's mean output norm (x) against its mean hidden zero fraction (y); a
    collapsed expert sits high (mostly-zero hidden units) and/or far left (small output).
    Colour = layer; shared experts are diamonds. Right: per layer, the coefficient of
    variation of the routed experts' mean output norms and the routing collapse (share of
    selections taken by the top 10% of experts; the dashed line is its uniform value
    ``ceil(0.1·E)/E``). Hover on the right adds the max/min output-norm ratio.
    """
    cols = ["layer", "expert", "shared", "mean_zero_frac", "mean_out_norm", "n_tokens"]
    per_layer_cols = ["out_norm_max_min", "out_norm_cv", "routing_collapse"]
    check_frame(df, [*cols, *per_layer_cols], "collapse_panels")
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.6, 0.4],
        horizontal_spacing=0.16,
        subplot_titles=("experts: output norm vs zero fraction", "per layer: norm spread, routing collapse"),
    )
    beside = colorbar_beside(fig)
    for name, mask, symbol in (
        ("routed", ~pl.col("shared"), "circle"),
        ("shared", pl.col("shared"), "diamond"),
    ):
        part = df.filter(mask.fill_null(False))
        if part.height == 0:
            continue
        fig.add_trace(
            go.Scatter(
                x=as_floats(part["mean_out_norm"]),
                y=as_floats(part["mean_zero_frac"]),
                mode="markers",
                name=f"{name} experts",
                marker={
                    "symbol": symbol,
                    "size": 9,
                    "color": as_floats(part["layer"]),
                    "colorscale": "Viridis",
                    "showscale": name == "routed",
                    "colorbar": {"title": "layer", "len": 0.8, **beside, **integer_ticks(df["layer"])},
                    "line": {"width": 0.5, "color": "black"},
                },
                customdata=np.column_stack(
                    [as_floats(part["layer"]), as_floats(part["expert"]), as_floats(part["n_tokens"])]
                ),
                hovertemplate=(
                    f"{name} expert %{{customdata[1]:.0f}}, layer %{{customdata[0]:.0f}}"
                    "<br>mean ‖out‖ %{x:.4g}<br>mean zero fraction %{y:.4f}"
                    "<br>tokens %{customdata[2]:.0f}<extra></extra>"
                ),
            ),
            row=1,
            col=1,
        )
    layers = df.group_by("layer").agg(
        pl.col(per_layer_cols).first(), (~pl.col("shared")).sum().alias("n_routed")
    )
    layers = layers.sort("layer")
    x = layers["layer"].to_list()
    custom = np.column_stack([as_floats(layers[c]) for c in (*per_layer_cols, "n_routed")])
    info = (
        "<br>max/min mean ‖out‖ %{customdata[0]:.3f}<br>norm CV %{customdata[1]:.3f}"
        "<br>routing collapse %{customdata[2]:.3f}<br>routed experts %{customdata[3]:.0f}<extra></extra>"
    )
    for i, (column, name) in enumerate(
        [("out_norm_cv", "output-norm CV"), ("routing_collapse", "routing collapse (top-10% share)")]
    ):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=as_floats(layers[column]),
                mode="lines+markers",
                name=name,
                line={"color": colour(i + 1)},
                customdata=custom,
                hovertemplate="layer %{x}" + info,
            ),
            row=1,
            col=2,
        )
    n_routed = as_floats(layers["n_routed"])
    uniform = np.array([math.ceil(0.1 * e) / e if e > 0 else np.nan for e in n_routed])
    fig.add_trace(
        go.Scatter(
            x=x,
            y=uniform,
            mode="lines",
            name="uniform routing collapse",
            line={"dash": "dash", "color": "grey"},
            hovertemplate="layer %{x}<br>uniform ceil(0.1E)/E %{y:.3f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="mean output norm ‖out‖", row=1, col=1)
    fig.update_yaxes(title_text="mean hidden zero fraction (0–1)", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=2, **integer_ticks(x))
    fig.update_yaxes(title_text="ratio (unitless)", rangemode="tozero", row=1, col=2)
    fig.update_layout(title="Expert collapse (HoME)", legend={"orientation": "h", "y": -0.2}, **LAYOUT)
    return fig


def degradation_scatter(df: pl.DataFrame, threshold: float = 0.9) -> go.Figure:
    """HoME degradation from ``expert_degradation``: label concentration vs dominant-label share.

    One point per expert, coloured by its dominant label; a degraded expert (meant to be
    general, yet one label takes ≥ ``threshold`` of its normalised use) is a large ✕, a shared
    expert a diamond, a routed expert not meant to be general an open circle. The dashed line
    is ``threshold`` (pass the one the analysis used; default 0.9). Hover has load and flags.
    """
    cols = ["layer", "expert", "shared", "load", "general", "concentration", "dominant_label"]
    check_frame(df, [*cols, "dominant_share", "degraded"], "degradation_scatter")
    fig = go.Figure()
    groups = [*labels_of(df, "dominant_label"), None]
    for i, label in enumerate(groups):
        mask = pl.col("dominant_label").is_null() if label is None else pl.col("dominant_label") == label
        part = df.filter(mask)
        if part.height == 0:
            continue
        degraded = part["degraded"].fill_null(False).to_list()
        shared = part["shared"].fill_null(False).to_list()
        general = part["general"].fill_null(False).to_list()
        symbols = [
            "x" if d else "diamond" if s else "circle" if g else "circle-open"
            for d, s, g in zip(degraded, shared, general, strict=True)
        ]
        sizes = [14 if d else 9 for d in degraded]
        fig.add_trace(
            go.Scatter(
                x=as_floats(part["concentration"]),
                y=as_floats(part["dominant_share"]),
                mode="markers",
                name="no label" if label is None else f"dominant: {label}",
                marker={"symbol": symbols, "size": sizes, "color": colour(i), "opacity": 0.85},
                customdata=np.column_stack(
                    [
                        as_floats(part["layer"]),
                        as_floats(part["expert"]),
                        as_floats(part["load"]),
                        np.array(shared, dtype=object),
                        np.array(general, dtype=object),
                        np.array(degraded, dtype=object),
                    ]
                ),
                hovertemplate=(
                    "layer %{customdata[0]:.0f}, expert %{customdata[1]:.0f}"
                    f"<br>dominant label {label}"
                    "<br>dominant share %{y:.4f}<br>concentration %{x:.4f}"
                    "<br>load f %{customdata[2]:.4f}<br>shared %{customdata[3]}, general %{customdata[4]}"
                    "<br>degraded %{customdata[5]}<extra></extra>"
                ),
            )
        )
    fig.add_hline(
        y=threshold, line_dash="dash", line_color="grey", annotation_text=f"degradation threshold {threshold}"
    )
    fig.update_layout(
        title="Expert degradation (HoME): ✕ = general expert used by one label",
        xaxis_title="label concentration 1 − H(u)/log T (0 = even, 1 = one label)",
        yaxis_title="dominant label's share of normalised use (0–1)",
        xaxis_range=[-0.02, 1.02],
        yaxis_range=[0, 1.05],
        **LAYOUT,
    )
    return fig


def underfitting_bars(df: pl.DataFrame) -> go.Figure:
    """HoME underfitting from ``underfitting``: where each label's gate weight and output norm go.

    Stacked bars split each label's gate mass into its specialists' share and the rest
    (generalists); diamonds give the share of output norm coming from shared experts (absent
    without ``expert_stats``). The dashed line is the median specialist mass: labels below it
    are flagged underfit (``▼`` in the tick label). Hover carries the token count.
    """
    cols = ["label", "shared_norm_share", "specialist_gate_mass", "generalist_gate_mass", "n_tokens"]
    check_frame(df, [*cols, "underfit"], "underfitting_bars")
    part = df.sort("label")
    ticks = [
        f"{lab} ▼" if flag else str(lab)
        for lab, flag in zip(
            part["label"].to_list(), part["underfit"].fill_null(False).to_list(), strict=True
        )
    ]
    n = as_floats(part["n_tokens"])
    spec = as_floats(part["specialist_gate_mass"])
    fig = go.Figure()
    for i, (column, name) in enumerate(
        [("specialist_gate_mass", "specialist gate mass"), ("generalist_gate_mass", "generalist gate mass")]
    ):
        fig.add_trace(
            go.Bar(
                x=ticks,
                y=as_floats(part[column]),
                name=name,
                marker_color=colour(i),
                customdata=n,
                hovertemplate=f"label %{{x}}<br>{name} %{{y:.4f}}<br>tokens %{{customdata:.0f}}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=ticks,
            y=as_floats(part["shared_norm_share"]),
            mode="markers",
            name="shared experts' output-norm share",
            marker={"symbol": "diamond", "size": 12, "color": "black"},
            customdata=n,
            hovertemplate="label %{x}<br>shared norm share %{y:.4f}<br>tokens %{customdata:.0f}<extra></extra>",
        )
    )
    finite = spec[np.isfinite(spec)]
    if finite.size:
        median = float(np.median(finite))
        fig.add_hline(
            y=median, line_dash="dash", line_color="grey", annotation_text=f"median specialist {median:.3f}"
        )
    fig.update_layout(
        title="Underfitting (HoME): gate mass on the label's specialists (▼ = underfit)",
        xaxis_title="label",
        yaxis_title="share (0–1)",
        yaxis_range=[0, 1.05],
        barmode="stack",
        **LAYOUT,
    )
    return fig
