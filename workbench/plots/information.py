"""Figures for how much label information routing carries (docs/methods.md §2): mutual information, probe."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import polars as pl

from workbench.plots.common import LAYOUT, as_floats, chance_line, check_frame, integer_ticks, layer_line

__all__ = ["mutual_information_lines", "probe_accuracy"]


def mutual_information_lines(df: pl.DataFrame) -> go.Figure:
    """Normalised mutual information ``I(top-1 expert; label) / H(label)`` per layer.

    From ``routing_mutual_information``. The solid line is the plug-in estimate; the dashed
    line subtracts the Miller–Madow bias ``(T−1)(E−1)/2N`` first, so a gap between them says
    the run is too small for the plug-in value to be trusted. 1 = the top-1 expert determines
    the label. Hover gives MI and H(label) in nats, the bias, tokens and labels.
    """
    cols = ["layer", "mi", "h_label", "mi_norm", "bias", "n_tokens", "n_labels"]
    check_frame(df, cols, "mutual_information_lines")
    part = df.sort("layer")
    x = part["layer"].to_list()
    mi, h, bias = as_floats(part["mi"]), as_floats(part["h_label"]), as_floats(part["bias"])
    with np.errstate(divide="ignore", invalid="ignore"):
        corrected = np.where(h > 0, np.maximum(mi - bias, 0.0) / h, np.nan)
    custom = np.column_stack([mi, h, bias, as_floats(part["n_tokens"]), as_floats(part["n_labels"])])
    info = (
        "MI %{customdata[0]:.4f} nats, H(label) %{customdata[1]:.4f} nats"
        "<br>bias %{customdata[2]:.4f} nats<br>tokens %{customdata[3]:.0f}, labels %{customdata[4]:.0f}"
        "<extra></extra>"
    )
    fig = go.Figure(
        [
            go.Scatter(
                x=x,
                y=as_floats(part["mi_norm"]),
                mode="lines+markers",
                name="plug-in MI / H(label)",
                customdata=custom,
                hovertemplate="layer %{x}<br>MI/H %{y:.4f} (plug-in)<br>" + info,
            ),
            go.Scatter(
                x=x,
                y=corrected,
                mode="lines+markers",
                name="bias-corrected (Miller–Madow)",
                line={"dash": "dash"},
                customdata=custom,
                hovertemplate="layer %{x}<br>MI/H %{y:.4f} (bias-corrected)<br>" + info,
            ),
        ]
    )
    fig.update_layout(
        title="Mutual information between top-1 expert and label, per layer",
        xaxis_title="layer",
        yaxis_title="I(expert; label) / H(label)  (0–1)",
        yaxis_range=[0, 1.05],
        **LAYOUT,
    )
    fig.update_xaxes(**integer_ticks(x))
    return fig


def probe_accuracy(df: pl.DataFrame) -> go.Figure:
    """Routing-probe accuracy per layer (± one std over folds) with the chance line, from ``routing_probe``."""
    check_frame(df, ["layer", "accuracy", "accuracy_std", "chance"], "probe_accuracy")
    part = df.sort("layer")
    acc = as_floats(part["accuracy"])
    std = as_floats(part["accuracy_std"])
    fig = go.Figure(
        [
            layer_line(
                part,
                "accuracy",
                acc - std,
                acc + std,
                "accuracy",
                "layer %{x}<br>accuracy %{y:.4f} (±1 sd: %{customdata[0]:.4f}–%{customdata[1]:.4f})"
                "<extra></extra>",
            ),
            chance_line(part),
        ]
    )
    fig.update_layout(
        title="Routing probe: label accuracy per layer",
        xaxis_title="layer",
        yaxis_title="accuracy",
        **LAYOUT,
    )
    fig.update_xaxes(**integer_ticks(part["layer"]))
    return fig
