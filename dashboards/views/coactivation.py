"""Co-activation page: which experts fire together within a layer (P(b | a) matrix and a network
of the strongest pairs) and which top-1 paths tokens take across layers (Sankey)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import polars as pl

from dashboards import data
from workbench.catalog import figure_for

__all__ = [
    "DEFAULT_MIN_LIFT",
    "METRICS",
    "default_layer",
    "matrix",
    "network",
    "network_edges",
    "network_figure",
    "partners",
    "pathways",
]

METRICS = {"lift": "lift (P(a,b) / P(a)P(b); 1 = independent)", "count": "count (tokens selecting both)"}
"""What an edge's weight is: the network keeps the pairs at or above a threshold of it."""
DEFAULT_MIN_LIFT = 1.5
"""Default lift threshold: pairs selected together 1.5× as often as if they were independent."""
COUNT_QUANTILE = 0.9
"""Default count threshold: the layer's 90th percentile of pair counts (its strongest 10% of pairs)."""
WIDTHS = (1.0, 2.5, 4.5, 7.0)
"""Edge line widths, weakest to strongest quarter of the kept edges' weights."""


def default_layer(db: str, run: str) -> int | None:
    """The layer with the most co-activation structure: largest ``n_ab``-weighted mean ``|lift − 1|``."""
    df = data.analysis(db, run, "coactivation")
    if df.height == 0:
        return None
    score = (
        df.group_by("layer")
        .agg(((pl.col("n_ab") * (pl.col("lift") - 1).abs()).sum() / pl.col("n_ab").sum()).alias("s"))
        .with_columns(pl.col("s").fill_nan(None))
        .sort(["s", "layer"], descending=[True, False], nulls_last=True)
    )
    return int(score["layer"][0])


def matrix(db: str, run: str, layer: int | None) -> go.Figure:
    """``figure_for("coactivation")`` at ``layer`` (default :func:`default_layer`); a click opens a's card."""
    df = data.analysis(db, run, "coactivation")
    if df.height == 0:
        raise ValueError(f"run {run!r}: no co-activations (top-1 routing or no tokens)")
    layers = sorted(set(df["layer"].to_list()))
    if layer is None:
        layer = default_layer(db, run)
    if layer not in layers:
        raise ValueError(f"layer {layer} has no co-activations; layers: {layers}")
    return figure_for("coactivation", df, layer=layer)


def pathways(db: str, run: str) -> go.Figure:
    """``figure_for("pathways")``: the most frequent top-1 transitions between consecutive layers."""
    df = data.analysis(db, run, "pathways")
    if df.height == 0:
        raise ValueError(f"run {run!r} has a single MoE layer: no cross-layer pathways")
    return figure_for("pathways", df)


def partners(db: str, run: str, layer: int, expert: int, n: int = 8) -> pl.DataFrame:
    """The experts most often selected together with (``layer``, ``expert``), by co-activation count."""
    df = data.analysis(db, run, "coactivation")
    return (
        df.filter((pl.col("layer") == layer) & (pl.col("a") == expert))
        .sort("n_ab", descending=True)
        .head(n)
        .select(pl.col("b").alias("partner"), "n_ab", "p_b_given_a", "lift")
    )


def network_edges(
    df: pl.DataFrame, layer: int, metric: str, threshold: float | None
) -> tuple[pl.DataFrame, float]:
    """(edges, threshold used): one row per unordered pair ``a < b`` of ``layer`` with ``weight`` ≥ the threshold.

    Lift and counts are symmetric in (a, b), so each pair is one edge. ``threshold`` None means the
    default: count ≥ the layer's :data:`COUNT_QUANTILE` quantile; lift ≥ :data:`DEFAULT_MIN_LIFT`, or,
    on a layer where few pairs get that far (small models: 8 experts top-2 rarely reach it), ≥ the
    layer's :data:`COUNT_QUANTILE` quantile of lift, but never below 1 (independence): the network
    then shows the layer's strongest pairs instead of nothing.
    """
    if metric not in METRICS:
        raise ValueError(f"edge weight must be one of {list(METRICS)}, not {metric!r}")
    column = "lift" if metric == "lift" else "n_ab"
    pairs = df.filter((pl.col("layer") == layer) & (pl.col("a") < pl.col("b")) & pl.col(column).is_not_null())
    pairs = pairs.with_columns(pl.col(column).cast(pl.Float64).alias("weight"))
    if threshold is None:
        found = pairs["weight"].quantile(COUNT_QUANTILE) if pairs.height else None
        if metric == "lift":
            threshold = (
                min(DEFAULT_MIN_LIFT, max(float(found), 1.0)) if found is not None else DEFAULT_MIN_LIFT
            )
        else:
            threshold = float(found) if found is not None else 0.0
    kept = pairs.filter(pl.col("weight") >= threshold).sort("weight", descending=True)
    return kept.select("a", "b", "weight", "n_ab", "lift", "p_b_given_a"), float(threshold)


def network_figure(
    df: pl.DataFrame, layer: int, metric: str = "lift", threshold: float | None = None
) -> go.Figure:
    """Experts of ``layer`` on a circle (size: how often each is selected), edges for the pairs above the threshold.

    Edge width grows with the weight (lift or count, in four classes); hovering an edge's midpoint
    shows its numbers; a node's ``text`` is its expert id (Dash passes it with a click: the card opens).
    """
    part = df.filter(pl.col("layer") == layer)
    if part.height == 0:
        raise ValueError(f"layer {layer} has no co-activations")
    edges, used = network_edges(df, layer, metric, threshold)
    n = int(max(part["a"].max(), part["b"].max())) + 1  # type: ignore[arg-type, type-var]
    angle = 2 * math.pi * np.arange(n) / n
    x, y = np.cos(angle), np.sin(angle)
    load = part.group_by("a").agg(pl.col("n_a").first()).sort("a")
    n_a = np.zeros(n)
    n_a[load["a"].to_numpy().astype(int)] = load["n_a"].to_numpy()
    size = 12 + 26 * np.sqrt(n_a / n_a.max()) if n_a.max() > 0 else np.full(n, 12.0)
    degree = np.zeros(n, dtype=int)
    for a, b in zip(edges["a"].to_list(), edges["b"].to_list(), strict=True):
        degree[a] += 1
        degree[b] += 1
    traces: list[go.Scatter] = []
    if edges.height:
        w = edges["weight"].to_numpy()
        cuts = np.quantile(w, [0.25, 0.5, 0.75]) if edges.height > 3 else np.array([np.inf] * 3)
        level = np.searchsorted(cuts, w, side="right")
        for i, width in enumerate(WIDTHS):
            sel = np.flatnonzero(level == i)
            if sel.size == 0:
                continue
            a = edges["a"].to_numpy()[sel].astype(int)
            b = edges["b"].to_numpy()[sel].astype(int)
            xs = np.column_stack([x[a], x[b], np.full(sel.size, np.nan)]).ravel()
            ys = np.column_stack([y[a], y[b], np.full(sel.size, np.nan)]).ravel()
            traces.append(
                go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                           line={"width": width, "color": f"rgba(60, 90, 160, {0.35 + 0.15 * i})"})
            )  # fmt: skip
        a = edges["a"].to_numpy().astype(int)
        b = edges["b"].to_numpy().astype(int)
        traces.append(
            go.Scatter(
                x=(x[a] + x[b]) / 2, y=(y[a] + y[b]) / 2, mode="markers", showlegend=False,
                marker={"size": 6, "color": "rgba(60, 90, 160, 0.25)"},
                customdata=edges.select("a", "b", "n_ab", "lift", "p_b_given_a").to_numpy(),
                hovertemplate="experts %{customdata[0]:.0f} – %{customdata[1]:.0f}<br>n_ab %{customdata[2]:.0f}"
                "<br>lift %{customdata[3]:.3f}<br>P(b|a) %{customdata[4]:.4f}<extra></extra>",
            )
        )  # fmt: skip
    traces.append(
        go.Scatter(
            x=x, y=y, mode="markers+text", text=[str(e) for e in range(n)], textposition="middle center",
            marker={"size": size, "color": degree, "colorscale": "Blues", "line": {"width": 1, "color": "#335"},
                    "colorbar": {"title": "edges"}, "cmin": 0, "cmax": max(1, int(degree.max()))},
            customdata=np.column_stack([np.arange(n), n_a, degree]),
            hovertemplate="expert %{customdata[0]:.0f}<br>selected for %{customdata[1]:.0f} tokens"
            "<br>%{customdata[2]:.0f} edges shown<extra></extra>",
            showlegend=False,
        )
    )  # fmt: skip
    what = f"lift ≥ {used:.2f}" if metric == "lift" else f"count ≥ {used:.0f}"
    fig = go.Figure(traces)
    if edges.height == 0:
        fig.add_annotation(text="no pair reaches the threshold: lower it", x=0, y=0, showarrow=False,
                           font={"color": "#667"})  # fmt: skip
    fig.update_layout(
        title=f"Co-activation network, layer {layer}: {edges.height} pairs with {what} (click an expert for its card)",
        xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"},
        template="plotly_white", height=560, margin={"l": 20, "r": 20, "t": 60, "b": 20},
    )  # fmt: skip
    return fig


def network(db: str, run: str, layer: int | None, metric: str, threshold: float | None) -> go.Figure:
    """:func:`network_figure` of the run's co-activations at ``layer`` (default :func:`default_layer`)."""
    df = data.analysis(db, run, "coactivation")
    if df.height == 0:
        raise ValueError(f"run {run!r}: no co-activations (top-1 routing or no tokens)")
    if layer is None:
        layer = default_layer(db, run)
    if layer is None or layer not in set(df["layer"].to_list()):
        raise ValueError(f"layer {layer} has no co-activations; layers: {sorted(set(df['layer'].to_list()))}")
    return network_figure(df, layer, metric, threshold)
