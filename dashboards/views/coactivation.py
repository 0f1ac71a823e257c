"""Co-activation page: which experts fire together within a layer (P(b | a) matrix) and which
top-1 paths tokens take across layers (Sankey)."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl

from dashboards import data
from workbench.plots import figure_for

__all__ = ["default_layer", "matrix", "partners", "pathways"]


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
