"""Figures for layer × expert maps: domain specialisation (METHODS.md §2) and resonance (§5)."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl

from workbench.plots.common import _check, _pick_label, _require, layer_expert_heatmap, significant

__all__ = ["resonance_heatmap", "specialisation_heatmap"]


def specialisation_heatmap(df: pl.DataFrame, label: str | None = None) -> go.Figure:
    """Layer × expert heatmap of ``lift`` for one ``label`` from ``domain_specialisation``.

    ``label`` defaults to the first label in sorted order. Hover shows share with its 95% CI,
    lift and q; cells with ``q < 0.05`` are marked ``*``. ``z`` has shape
    ``(n_layers, n_experts)``; missing cells are NaN. The colour scale is centred on lift 1
    (no preference), so red = the label over-uses the expert, blue = under-uses it.
    """
    what = "specialisation_heatmap"
    _require(df, ["layer", "expert", "label", "share", "lift", "ci_low", "ci_high", "q"], what)
    label = _pick_label(df, label, what)
    part = df.filter(pl.col("label") == label)
    return layer_expert_heatmap(
        part, "lift", ("share", "ci_low", "ci_high", "q"),
        title=f"Domain specialisation: lift for label {label!r} (* = q < 0.05)",
        colorbar="lift", colorscale="RdBu_r", zmid=1.0, mark=("q", "*", significant),
        hover="lift %{z:.3f}<br>share %{customdata[0]:.4f} (95% CI %{customdata[1]:.4f}–%{customdata[2]:.4f})"
        "<br>q %{customdata[3]:.3g}",
    )  # fmt: skip


def resonance_heatmap(df: pl.DataFrame) -> go.Figure:
    """Layer × expert heatmap of a resonance score (``rd`` or ``ftri``, per ``method``) from ``resonance_map``.

    Diverging around 0 (red = the expert fires more on target prompts than on control ones);
    cells with ``q < 0.05`` are marked ``*``. Hover gives the score with its 95% CI, both
    scores, the target/control selection rates and prompt counts, and p, q.
    """
    what = "resonance_heatmap"
    cols = ["layer", "expert", "rd", "ftri", "method", "ci_low", "ci_high", "p", "q"]
    _check(df, [*cols, "rate_target", "rate_control", "n_target", "n_control"], what)
    methods = sorted({str(x) for x in df["method"].drop_nulls().unique().to_list()}) or ["rd"]
    method = methods[0]
    if method not in ("rd", "ftri"):
        raise ValueError(f"{what}: unknown method {method!r}; expected 'rd' or 'ftri'")
    extra = ("ci_low", "ci_high", "rd", "ftri", "rate_target", "rate_control", "n_target", "n_control")
    return layer_expert_heatmap(
        df, method, (*extra, "p", "q"),
        title=f"Resonance: {method} per expert, target vs control (* = q < 0.05)",
        colorbar=method, colorscale="RdBu_r", zmid=0.0, mark=("q", "*", significant),
        hover=f"{method} %{{z:.4f}} (95% CI %{{customdata[0]:.4f}}–%{{customdata[1]:.4f}})"
        "<br>rd %{customdata[2]:.4f}, fTRI %{customdata[3]:.4f}"
        "<br>rate target %{customdata[4]:.4f}, control %{customdata[5]:.4f}"
        "<br>prompts target %{customdata[6]:.0f}, control %{customdata[7]:.0f}"
        "<br>p %{customdata[8]:.3g}, q %{customdata[9]:.3g}",
    )  # fmt: skip
