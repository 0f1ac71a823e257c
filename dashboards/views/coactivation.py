"""Co-activation page: which experts fire together within a layer (P(b | a) matrix and a network
of the strongest pairs) and which top-1 paths tokens take across layers (Sankey)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import polars as pl

from dashboards import data
from workbench.catalog import figure_for
from workbench.plots.theme import TEMPLATE, integer_ticks, label_colours

__all__ = [
    "ALL_NODES_UP_TO",
    "DEFAULT_MIN_LIFT",
    "DEFAULT_PATHS",
    "DEFAULT_TOP_PAIRS",
    "METRICS",
    "default_layer",
    "matrix",
    "network",
    "network_edges",
    "network_figure",
    "partner_count",
    "partners",
    "pathways",
]

METRICS = {"lift": "lift (P(a,b) / P(a)P(b); 1 = independent)", "count": "count (tokens selecting both)"}
"""What an edge's weight is: the network keeps the pairs at or above a threshold of it."""
DEFAULT_MIN_LIFT = 1.5
"""Default lift threshold: pairs selected together 1.5× as often as if they were independent."""
COUNT_QUANTILE = 0.9
"""Default count threshold: the layer's 90th percentile of pair counts (its strongest 10% of pairs)."""
NODE_SCALE = "Blues"
"""Node fill: how many of the drawn pairs an expert is in (white: none, dark blue: the most)."""
NODE_COLOURBAR = "pairs drawn<br>with the expert<br>(count)"
"""What a node's colour measures, and in what unit."""
WIDTHS = (1.0, 2.5, 4.5, 7.0)
"""Edge line widths, weakest to strongest quarter of the kept edges' weights."""
DEFAULT_TOP_PAIRS = 40
"""The network draws at most this many pairs (the strongest above the threshold) unless asked for
more: at E = 256 thousands of pairs pass lift 1.5 and drawn all together they fill the circle."""
ALL_NODES_UP_TO = 32
"""Up to this many experts the network places every expert on the circle; past it, only the
experts of the shown pairs (256 labelled nodes on one circle overlap)."""
DEFAULT_PATHS = 20
"""The Sankey shows the most frequent this many top-1 transitions of each layer pair by default."""


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


def pathways(db: str, run: str, top: int | None = None) -> go.Figure:
    """``figure_for("pathways")``: the ``top`` (default :data:`DEFAULT_PATHS`) most frequent top-1
    transitions of each pair of consecutive layers.

    The analysis is asked for every transition (``top=None``), so the figure can say how many of
    how many it shows.
    """
    top = DEFAULT_PATHS if top is None else top
    if top < 1:
        raise ValueError(f"show at least 1 transition per layer pair, not {top}")
    df = data.analysis(db, run, "pathways", top=None)
    if df.height == 0:
        raise ValueError(f"run {run!r} has a single MoE layer: no cross-layer pathways")
    return figure_for("pathways", df, top=top)


def partners(db: str, run: str, layer: int, expert: int, n: int = 8) -> pl.DataFrame:
    """The experts most often selected together with (``layer``, ``expert``), by co-activation count."""
    df = data.analysis(db, run, "coactivation")
    return (
        df.filter((pl.col("layer") == layer) & (pl.col("a") == expert))
        .sort("n_ab", descending=True)
        .head(n)
        .select(pl.col("b").alias("partner"), "n_ab", "p_b_given_a", "lift")
    )


def partner_count(db: str, run: str, layer: int, expert: int) -> int:
    """How many experts were ever selected together with (``layer``, ``expert``)."""
    df = data.analysis(db, run, "coactivation")
    return df.filter((pl.col("layer") == layer) & (pl.col("a") == expert) & (pl.col("n_ab") > 0)).height


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
    kept = pairs.filter(pl.col("weight") >= threshold).sort(
        ["weight", "n_ab", "a", "b"], descending=[True, True, False, False]
    )
    return kept.select("a", "b", "weight", "n_ab", "lift", "p_b_given_a"), float(threshold)


def network_figure(
    df: pl.DataFrame,
    layer: int,
    metric: str = "lift",
    threshold: float | None = None,
    top: int | None = DEFAULT_TOP_PAIRS,
    n_experts: int | None = None,
) -> go.Figure:
    """Experts of ``layer`` on a circle (size: how often each is selected), edges for the pairs above the threshold.

    At most ``top`` pairs are drawn, the strongest first (None: all); when that leaves some out,
    the title says "the strongest N of M pairs". With more than :data:`ALL_NODES_UP_TO` experts only
    the experts of the drawn pairs are placed on the circle (in id order), and the title says how
    many of the layer's experts that is. Edge width grows with the weight (lift or count, in four
    classes); hovering an edge's midpoint shows its numbers; a node's ``text`` is its expert id
    (Dash passes it with a click: the card opens). ``n_experts`` is the layer's expert count (the
    run's layers table); by default the largest expert id of the table + 1.
    """
    part = df.filter(pl.col("layer") == layer)
    if part.height == 0:
        raise ValueError(f"layer {layer} has no co-activations")
    if top is not None and top < 1:
        raise ValueError(f"show at least 1 pair, not {top}")
    above, used = network_edges(df, layer, metric, threshold)
    edges = above if top is None else above.head(top)
    seen = int(max(part["a"].max(), part["b"].max())) + 1  # type: ignore[arg-type, type-var]
    n_experts = seen if n_experts is None else max(int(n_experts), seen)
    load = part.group_by("a").agg(pl.col("n_a").first()).sort("a")
    n_a_all = np.zeros(n_experts)
    n_a_all[load["a"].to_numpy().astype(int)] = load["n_a"].to_numpy()
    if n_experts <= ALL_NODES_UP_TO:
        ids = np.arange(n_experts)
    else:  # only the experts of the drawn pairs: 256 labelled nodes on one circle overlap
        ids = np.unique(np.concatenate([edges["a"].to_numpy(), edges["b"].to_numpy()]).astype(int))
    n = ids.size
    slot = np.full(n_experts, -1)
    slot[ids] = np.arange(n)
    angle = 2 * math.pi * np.arange(n) / max(n, 1)
    x, y = np.cos(angle), np.sin(angle)
    n_a = n_a_all[ids]
    small = n > ALL_NODES_UP_TO  # many nodes: smaller markers, so neighbours do not cover each other
    base, spread = (8, 12) if small else (12, 26)
    size = base + spread * np.sqrt(n_a / n_a_all.max()) if n_a_all.max() > 0 else np.full(n, float(base))
    degree = np.zeros(n, dtype=int)
    for a, b in zip(edges["a"].to_list(), edges["b"].to_list(), strict=True):
        degree[slot[a]] += 1
        degree[slot[b]] += 1
    traces: list[go.Scatter] = []
    if edges.height:
        w = edges["weight"].to_numpy()
        cuts = np.quantile(w, [0.25, 0.5, 0.75]) if edges.height > 3 else np.array([np.inf] * 3)
        level = np.searchsorted(cuts, w, side="right")
        for i, width in enumerate(WIDTHS):
            sel = np.flatnonzero(level == i)
            if sel.size == 0:
                continue
            a = slot[edges["a"].to_numpy()[sel].astype(int)]
            b = slot[edges["b"].to_numpy()[sel].astype(int)]
            xs = np.column_stack([x[a], x[b], np.full(sel.size, np.nan)]).ravel()
            ys = np.column_stack([y[a], y[b], np.full(sel.size, np.nan)]).ravel()
            traces.append(
                go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                           line={"width": width, "color": f"rgba(60, 90, 160, {0.35 + 0.15 * i})"})
            )  # fmt: skip
        a = slot[edges["a"].to_numpy().astype(int)]
        b = slot[edges["b"].to_numpy().astype(int)]
        traces.append(
            go.Scatter(
                x=(x[a] + x[b]) / 2, y=(y[a] + y[b]) / 2, mode="markers", showlegend=False,
                marker={"size": 6, "color": "rgba(60, 90, 160, 0.25)"},
                customdata=edges.select("a", "b", "n_ab", "lift", "p_b_given_a").to_numpy(),
                hovertemplate="experts %{customdata[0]:.0f} – %{customdata[1]:.0f}<br>n_ab %{customdata[2]:.0f}"
                "<br>lift %{customdata[3]:.3f}<br>P(b|a) %{customdata[4]:.4f}<extra></extra>",
            )
        )  # fmt: skip
    top_degree = max(1, int(degree.max(initial=0)))
    ink = label_colours(degree, NODE_SCALE, 0, top_degree)  # white on dark nodes, dark on light ones
    traces.append(
        go.Scatter(
            x=x, y=y, mode="markers+text", text=[str(e) for e in ids], textposition="middle center",
            textfont={"size": 9, "color": ink} if small else {"color": ink},
            marker={"size": size, "color": degree, "colorscale": NODE_SCALE, "line": {"width": 1, "color": "#335"},
                    "colorbar": {"title": NODE_COLOURBAR, **integer_ticks(range(top_degree + 1))}, "cmin": 0,
                    "cmax": top_degree},
            customdata=np.column_stack([ids, n_a, degree]),
            hovertemplate="expert %{customdata[0]:.0f}<br>selected for %{customdata[1]:.0f} tokens"
            "<br>in %{customdata[2]:.0f} of the pairs drawn<extra></extra>",
            showlegend=False,
        )
    )  # fmt: skip
    what = f"lift ≥ {used:.2f}" if metric == "lift" else f"count ≥ {used:.0f}"
    shown = (
        f"{edges.height} pairs"
        if edges.height == above.height
        else f"the strongest {edges.height} of {above.height} pairs"
    )
    title = f"Co-activation network, layer {layer}: {shown} with {what} (click an expert for its card)"
    if n < n_experts:
        title += f"<br><sup>{n} of the layer's {n_experts} experts: those in a drawn pair</sup>"
    fig = go.Figure(traces)
    if edges.height == 0:
        fig.add_annotation(text="no pair reaches the threshold: lower it", x=0, y=0, showarrow=False,
                           font={"color": "#667"})  # fmt: skip
    fig.update_layout(
        title=title,
        xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"},
        template=TEMPLATE, height=560, margin={"l": 20, "r": 20, "t": 60, "b": 20},
    )  # fmt: skip
    return fig


def network(
    db: str,
    run: str,
    layer: int | None,
    metric: str,
    threshold: float | None,
    top: int | None = DEFAULT_TOP_PAIRS,
) -> go.Figure:
    """:func:`network_figure` of the run's co-activations at ``layer`` (default :func:`default_layer`)."""
    df = data.analysis(db, run, "coactivation")
    if df.height == 0:
        raise ValueError(f"run {run!r}: no co-activations (top-1 routing or no tokens)")
    if layer is None:
        layer = default_layer(db, run)
    if layer is None or layer not in set(df["layer"].to_list()):
        raise ValueError(f"layer {layer} has no co-activations; layers: {sorted(set(df['layer'].to_list()))}")
    layers = data.layers(db, run)
    sizes = dict(zip(layers["layer"].to_list(), layers["n_experts"].to_list(), strict=True))
    return network_figure(df, layer, metric, threshold, top, sizes.get(layer))
