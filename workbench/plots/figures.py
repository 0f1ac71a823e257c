"""Plotly figure builders over the polars tables returned by :mod:`workbench.analysis`.

Every function takes a DataFrame (never a store) and returns a ``plotly.graph_objects.Figure``.
Missing columns, or an absent label/layer, raise ``ValueError`` naming what the frame holds.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import plotly.graph_objects as go
import polars as pl

_LAYOUT = {"template": "plotly_white", "hovermode": "closest"}


def _require(df: pl.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; frame has {df.columns}")


def specialisation_heatmap(df: pl.DataFrame, label: str) -> go.Figure:
    """Layer × expert heatmap of ``lift`` for one ``label`` from ``domain_specialisation``.

    Hover shows share with its 95% CI, lift, p and q; cells with ``q < 0.05`` are marked ``*``.
    ``z`` has shape ``(n_layers, n_experts)``; missing cells are NaN.
    """
    _require(
        df, ["layer", "expert", "label", "share", "lift", "ci_low", "ci_high", "q"], "specialisation_heatmap"
    )
    part = df.filter(pl.col("label") == label)
    if part.height == 0:
        labels = sorted({str(x) for x in df["label"].drop_nulls().unique().to_list()})
        raise ValueError(f"specialisation_heatmap: label {label!r} absent; labels present: {labels}")
    layers = sorted(int(x) for x in part["layer"].unique().to_list())
    experts = sorted(int(x) for x in part["expert"].unique().to_list())
    li = {v: i for i, v in enumerate(layers)}
    ei = {v: i for i, v in enumerate(experts)}
    z = np.full((len(layers), len(experts)), np.nan)
    text = np.full((len(layers), len(experts)), "", dtype=object)
    custom = np.full((len(layers), len(experts), 4), np.nan)
    for row in part.iter_rows(named=True):
        i, j = li[int(row["layer"])], ei[int(row["expert"])]
        z[i, j] = np.nan if row["lift"] is None else row["lift"]
        custom[i, j] = [np.nan if row[c] is None else row[c] for c in ("share", "ci_low", "ci_high", "q")]
        q = row["q"]
        if q is not None and not np.isnan(q) and q < 0.05:
            text[i, j] = "*"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=experts,
            y=layers,
            text=text,
            texttemplate="%{text}",
            customdata=custom,
            colorscale="RdBu_r",
            zmid=1.0,
            colorbar={"title": "lift"},
            hovertemplate=(
                "layer %{y}, expert %{x}<br>lift %{z:.3f}<br>"
                "share %{customdata[0]:.4f} (95% CI %{customdata[1]:.4f}–%{customdata[2]:.4f})"
                "<br>q %{customdata[3]:.3g}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=f"Domain specialisation: lift for label {label!r} (* = q < 0.05)",
        xaxis_title="expert",
        yaxis_title="layer",
        **_LAYOUT,
    )
    return fig


def load_bars(df: pl.DataFrame) -> go.Figure:
    """Grouped bars of routing fraction ``f`` per expert, one trace per layer, from ``expert_load``.

    Error bars span the 95% CI; a dashed line marks uniform load ``1/E`` (E = experts in ``df``).
    """
    _require(df, ["layer", "expert", "f", "ci_low", "ci_high"], "load_bars")
    if df.height == 0:
        raise ValueError("load_bars: empty frame")
    n_experts = df["expert"].n_unique()
    fig = go.Figure()
    for layer in sorted(int(x) for x in df["layer"].unique().to_list()):
        part = df.filter(pl.col("layer") == layer).sort("expert")
        f = part["f"].to_numpy().astype(float)
        lo = part["ci_low"].to_numpy().astype(float)
        hi = part["ci_high"].to_numpy().astype(float)
        dead = part["dead"].to_list() if "dead" in part.columns else [False] * part.height
        fig.add_trace(
            go.Bar(
                name=f"layer {layer}",
                x=part["expert"].to_list(),
                y=f,
                error_y={"type": "data", "array": hi - f, "arrayminus": f - lo, "visible": True},
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
        **_LAYOUT,
    )
    return fig


def coactivation_matrix(df: pl.DataFrame, layer: int) -> go.Figure:
    """E × E heatmap of ``P(b | a)`` for one layer from ``coactivation``; unobserved pairs are 0.

    E is ``max(a, b) + 1`` over that layer. Hover shows ``n_ab`` and lift when present.
    """
    _require(df, ["layer", "a", "b", "n_ab", "p_b_given_a"], "coactivation_matrix")
    part = df.filter(pl.col("layer") == layer)
    if part.height == 0:
        layers = sorted(int(x) for x in df["layer"].unique().to_list())
        raise ValueError(f"coactivation_matrix: layer {layer} absent; layers present: {layers}")
    n = int(max(part["a"].max(), part["b"].max())) + 1  # type: ignore[arg-type, type-var]
    z = np.zeros((n, n))
    custom = np.full((n, n, 2), np.nan)
    custom[..., 0] = 0
    has_lift = "lift" in part.columns
    for row in part.iter_rows(named=True):
        a, b = int(row["a"]), int(row["b"])
        z[a, b] = row["p_b_given_a"]
        custom[a, b, 0] = row["n_ab"]
        if has_lift and row["lift"] is not None:
            custom[a, b, 1] = row["lift"]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n)),
            y=list(range(n)),
            customdata=custom,
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
        **_LAYOUT,
    )
    return fig


def _layer_line(
    df: pl.DataFrame, y: str, lo: np.ndarray, hi: np.ndarray, name: str, hover: str
) -> go.Scatter:
    yv = df[y].to_numpy().astype(float)
    return go.Scatter(
        x=df["layer"].to_list(),
        y=yv,
        mode="lines+markers",
        name=name,
        error_y={"type": "data", "array": hi - yv, "arrayminus": yv - lo, "visible": True},
        customdata=np.column_stack([lo, hi]),
        hovertemplate=hover,
    )


def _chance_line(df: pl.DataFrame) -> go.Scatter:
    return go.Scatter(
        x=df["layer"].to_list(),
        y=df["chance"].to_numpy().astype(float),
        mode="lines",
        name="chance",
        line={"dash": "dash", "color": "grey"},
        hovertemplate="layer %{x}<br>chance %{y:.4f}<extra></extra>",
    )


def probe_accuracy(df: pl.DataFrame) -> go.Figure:
    """Routing-probe accuracy per layer (± one std over folds) with the chance line, from ``routing_probe``."""
    _require(df, ["layer", "accuracy", "accuracy_std", "chance"], "probe_accuracy")
    part = df.sort("layer")
    acc = part["accuracy"].to_numpy().astype(float)
    std = part["accuracy_std"].to_numpy().astype(float)
    fig = go.Figure(
        [
            _layer_line(
                part,
                "accuracy",
                acc - std,
                acc + std,
                "accuracy",
                "layer %{x}<br>accuracy %{y:.4f} (±1 sd: %{customdata[0]:.4f}–%{customdata[1]:.4f})"
                "<extra></extra>",
            ),
            _chance_line(part),
        ]
    )
    fig.update_layout(
        title="Routing probe: label accuracy per layer",
        xaxis_title="layer",
        yaxis_title="accuracy",
        **_LAYOUT,
    )
    return fig


def drift_lines(df: pl.DataFrame) -> go.Figure:
    """Top-k overlap between two runs per layer with 95% CI and the ``k/E`` chance line, from ``routing_drift``."""
    _require(df, ["layer", "overlap", "ci_low", "ci_high", "chance"], "drift_lines")
    part = df.sort("layer")
    fig = go.Figure(
        [
            _layer_line(
                part,
                "overlap",
                part["ci_low"].to_numpy().astype(float),
                part["ci_high"].to_numpy().astype(float),
                "overlap",
                "layer %{x}<br>overlap %{y:.4f} (95% CI %{customdata[0]:.4f}–%{customdata[1]:.4f})"
                "<extra></extra>",
            ),
            _chance_line(part),
        ]
    )
    fig.update_layout(
        title="Routing drift: top-k overlap per layer",
        xaxis_title="layer",
        yaxis_title="overlap |S∩S'|/k",
        **_LAYOUT,
    )
    return fig
