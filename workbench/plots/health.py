"""Figures for load and router health (docs/methods.md §1): load, balance, router confidence, super experts."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench.plots.common import (
    LAYOUT,
    as_floats,
    check_frame,
    ci_error_bars,
    colour,
    flagged,
    integer_ticks,
    layer_expert_heatmap,
    layers_of,
    require_columns,
)

__all__ = [
    "BARS_UP_TO",
    "balance_lines",
    "load_bars",
    "load_heatmap",
    "router_confidence_lines",
    "super_expert_strip",
]

BARS_UP_TO = 32
"""Up to this many experts the load is grouped bars; past it (a bar per layer × expert would be a
pixel wide: 1,024 bars at 4 layers × 256 experts) it is a layer × expert heatmap."""


def load_bars(df: pl.DataFrame) -> go.Figure:
    """Grouped bars of routing fraction ``f`` per expert, one trace per layer, from ``expert_load``.

    Error bars span the 95% CI; a dashed line marks uniform load ``1/E`` (E = experts in ``df``).
    With more than :data:`BARS_UP_TO` experts the bars would be a pixel wide, so the figure is a
    layer × expert heatmap of ``f`` instead (:func:`load_heatmap`).
    """
    require_columns(df, ["layer", "expert", "f", "ci_low", "ci_high"], "load_bars")
    if df.height == 0:
        raise ValueError("load_bars: empty frame")
    n_experts = df["expert"].n_unique()
    if n_experts > BARS_UP_TO:
        return load_heatmap(df)
    fig = go.Figure()
    for layer in layers_of(df):
        part = df.filter(pl.col("layer") == layer).sort("expert")
        f = as_floats(part["f"])
        lo, hi = as_floats(part["ci_low"]), as_floats(part["ci_high"])
        dead = part["dead"].to_list() if "dead" in part.columns else [False] * part.height
        fig.add_trace(
            go.Bar(
                name=f"layer {layer}",
                x=part["expert"].to_list(),
                y=f,
                error_y=ci_error_bars(f, lo, hi),
                customdata=np.column_stack([lo, hi, np.array(dead, dtype=object)]),
                hovertemplate=(
                    f"layer {layer}, expert %{{x}}<br>f %{{y:.4f}} "
                    "(95% CI %{customdata[0]:.4f}–%{customdata[1]:.4f})<br>dead %{customdata[2]}<extra></extra>"
                ),
            )
        )
    fig.add_hline(
        y=1.0 / n_experts, line_dash="dash", line_color="grey", annotation_text=f"uniform 1/{n_experts}"
    )
    fig.update_layout(
        title="Expert load: routing fraction f per expert",
        xaxis_title="expert",
        yaxis_title="f (fraction of routed slots)",
        barmode="group",
        **LAYOUT,
    )
    return fig


def load_heatmap(df: pl.DataFrame) -> go.Figure:
    """Layer × expert heatmap of the routing fraction ``f`` (many experts); ``×`` marks dead experts.

    The colour scale starts at 0; hover gives ``f`` with its 95% CI, ``f`` over uniform ``1/E`` and
    whether the expert is dead. A click gives (x = expert, y = layer), like the other heatmaps.
    """
    require_columns(df, ["layer", "expert", "f", "ci_low", "ci_high"], "load_heatmap")
    n_experts = df["expert"].n_unique()
    part = df.with_columns(
        (pl.col("f") * n_experts).alias("_vs_uniform"),
        (pl.col("dead") if "dead" in df.columns else pl.lit(False)).cast(pl.Float64).alias("_dead"),
    )
    return layer_expert_heatmap(
        part, "f", ("ci_low", "ci_high", "_vs_uniform", "_dead"),
        title=f"Expert load: routing fraction f per expert (uniform 1/{n_experts} = {1 / n_experts:.4f}; × = dead)",
        colorbar="f", colorscale="Viridis", zmin=0.0, mark=("_dead", "×", flagged),
        hover="f %{z:.4f} (95% CI %{customdata[0]:.4f}–%{customdata[1]:.4f})"
        "<br>%{customdata[2]:.2f}× uniform<br>dead (1 = yes) %{customdata[3]:.0f}",
    )  # fmt: skip


def balance_lines(df: pl.DataFrame) -> go.Figure:
    """Per-layer load balance from ``load_balance``: two stacked panels sharing the layer axis.

    Top: the 0–1 measures — normalised load entropy and balancedness (1 = uniform) and the
    share of selections taken by the top 10% of experts (uniform ≈ 0.1). Bottom: the
    coefficient of variation of ``f`` (0 = uniform). Hover carries every number of the row,
    including the dead-expert count, so one glance tells which layers are skewed and how.
    """
    cols = ["layer", "n_experts", "top_k", "n_tokens", "cv", "entropy_norm", "balancedness", "n_dead"]
    check_frame(df, [*cols, "top10_share"], "balance_lines")
    part = df.sort("layer")
    x = part["layer"].to_list()
    custom = np.column_stack([as_floats(part[c]) for c in ("n_experts", "top_k", "n_tokens", "n_dead", "cv")])
    info = (
        "E %{customdata[0]:.0f}, k %{customdata[1]:.0f}, tokens %{customdata[2]:.0f}"
        "<br>dead experts %{customdata[3]:.0f}<extra></extra>"
    )
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.6, 0.4],
        subplot_titles=("0–1 measures (1 = uniform, except top-10% share)", "coefficient of variation"),
    )
    for i, (column, name) in enumerate(
        [
            ("entropy_norm", "entropy H(f)/log E"),
            ("balancedness", "balancedness mean(f)/max(f)"),
            ("top10_share", "top-10% experts' share"),
        ]
    ):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=as_floats(part[column]),
                mode="lines+markers",
                name=name,
                line={"color": colour(i)},
                customdata=custom,
                hovertemplate=f"layer %{{x}}<br>{name} %{{y:.4f}}<br>{info}",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=as_floats(part["cv"]),
            mode="lines+markers",
            name="CV std(f)/mean(f)",
            line={"color": colour(3)},
            customdata=custom,
            hovertemplate=f"layer %{{x}}<br>CV %{{y:.4f}}<br>{info}",
        ),
        row=2,
        col=1,
    )
    fig.update_yaxes(title_text="ratio (0–1)", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="CV (unitless)", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="layer", row=2, col=1)
    fig.update_xaxes(**integer_ticks(x))  # both panels: they share the layer axis
    fig.update_layout(title="Load balance per layer", **LAYOUT)
    return fig


def router_confidence_lines(df: pl.DataFrame) -> go.Figure:
    """Router confidence per layer from ``router_confidence``, three panels sharing the layer axis.

    Normalised router entropy ``H(π)/log E`` (1 = the router is undecided), the mean score
    margin between the k-th and (k+1)-th expert (in the router's own score units) and the
    fragility: the share of tokens whose top-k set changes under a 1% logit perturbation.
    """
    check_frame(
        df, ["layer", "n_tokens", "entropy", "entropy_norm", "margin", "fragility"], "router_confidence"
    )
    part = df.sort("layer")
    x = part["layer"].to_list()
    custom = np.column_stack([as_floats(part["entropy"]), as_floats(part["n_tokens"])])
    panels = [
        ("entropy_norm", "entropy H/log E", "normalised entropy (0–1)"),
        ("margin", "margin π(k) − π(k+1)", "margin (score units)"),
        ("fragility", "fragility", "share of tokens"),
    ]
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.07,
        subplot_titles=(
            "router entropy (1 = undecided)",
            "top-k margin (k-th minus (k+1)-th score)",
            "fragility: top-k set changes under 1% logit noise",
        ),
    )
    for row, (column, name, unit) in enumerate(panels, start=1):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=as_floats(part[column]),
                mode="lines+markers",
                name=name,
                line={"color": colour(row - 1)},
                customdata=custom,
                hovertemplate=(
                    f"layer %{{x}}<br>{name} %{{y:.4f}}<br>entropy %{{customdata[0]:.4f}} nats"
                    "<br>tokens %{customdata[1]:.0f}<extra></extra>"
                ),
            ),
            row=row,
            col=1,
        )
        fig.update_yaxes(title_text=unit, rangemode="tozero", row=row, col=1)
    fig.update_xaxes(title_text="layer", row=3, col=1)
    fig.update_xaxes(**integer_ticks(x))  # all three panels: they share the layer axis
    fig.update_layout(title="Router confidence per layer", height=750, **LAYOUT)
    return fig


def super_expert_strip(df: pl.DataFrame) -> go.Figure:
    """Maximum output norm of every expert, by layer, from ``super_experts`` (log y axis).

    Routed experts are circles, shared (pseudo-)experts diamonds and flagged super experts red
    stars. The dotted line is the flagging threshold recomputed from the table:
    ``max(99.5th percentile of the maxima, 0.1 × largest maximum)``, as in the analysis.
    """
    check_frame(df, ["layer", "expert", "shared", "max_out_norm", "n_tokens", "super"], "super_expert_strip")
    fig = go.Figure()
    groups = [
        ("routed expert", ~pl.col("shared") & ~pl.col("super"), "circle", colour(0), 7),
        ("shared expert", pl.col("shared") & ~pl.col("super"), "diamond", colour(2), 9),
        ("super expert", pl.col("super"), "star", "#d62728", 14),
    ]
    for name, mask, symbol, col, size in groups:
        part = df.filter(mask.fill_null(False))
        if part.height == 0:
            continue
        fig.add_trace(
            go.Scatter(
                x=part["layer"].to_list(),
                y=as_floats(part["max_out_norm"]),
                mode="markers",
                name=name,
                marker={"symbol": symbol, "color": col, "size": size, "opacity": 0.8},
                customdata=np.column_stack([as_floats(part["expert"]), as_floats(part["n_tokens"])]),
                hovertemplate=(
                    f"{name}<br>layer %{{x}}, expert %{{customdata[0]:.0f}}<br>max ‖out‖ %{{y:.4g}}"
                    "<br>tokens %{customdata[1]:.0f}<extra></extra>"
                ),
            )
        )
    maxima = as_floats(df["max_out_norm"])
    maxima = maxima[np.isfinite(maxima)]
    if maxima.size:
        threshold = max(float(np.percentile(maxima, 99.5)), 0.1 * float(maxima.max()))
        fig.add_hline(
            y=threshold,
            line_dash="dot",
            line_color="grey",
            annotation_text=f"flag threshold {threshold:.3g}",
        )
    fig.update_layout(
        title="Super experts: maximum output norm per expert",
        xaxis_title="layer",
        yaxis_title="max output norm ‖out‖ (log scale)",
        yaxis_type="log",
        **LAYOUT,
    )
    fig.update_xaxes(**integer_ticks(df["layer"]))
    return fig
