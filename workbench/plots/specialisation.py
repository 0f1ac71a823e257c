"""Figures for layer × expert maps: domain specialisation (docs/methods.md §2) and resonance (§5)."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl

from workbench.plots.common import (
    check_frame,
    flagged,
    layer_expert_heatmap,
    pick_label,
    require_columns,
    significant,
)

__all__ = ["STORED_SCORES", "resonance_heatmap", "specialisation_heatmap", "stored_resonance_heatmap"]

#: The score a stored map's method refers to, and its colour-bar title with units.
STORED_SCORES: dict[str, tuple[str, str]] = {
    "rd": ("rd", "rd (selection-rate<br>difference)"),
    "ftri": ("ftri", "fTRI (gate weight<br>per token)"),
    "causal": ("effect", "effect (Δ behaviour<br>margin, nats)"),
}


def specialisation_heatmap(df: pl.DataFrame, label: str | None = None) -> go.Figure:
    """Layer × expert heatmap of ``log_odds`` for one ``label`` from ``domain_specialisation``.

    The colour is the effect the test is about: the log-odds of the expert's slot share for
    ``label`` against the other labels, centred on 0 (red = the label uses the expert more than
    the other labels do, blue = less). ``*`` marks exactly the ``specialised`` cells (over-use at
    q < 0.05, the workbench's one definition), never an under-used one. Hover shows the share
    with its 95% CI, the other labels' share, specificity, log-odds CI, lift over uniform and q.
    ``label`` defaults to the first label in sorted order; ``z`` has shape ``(n_layers, n_experts)``.
    """
    what = "specialisation_heatmap"
    cols = ["layer", "expert", "label", "share", "share_rest", "specificity", "log_odds", "lo_low", "lo_high"]
    require_columns(df, [*cols, "lift", "ci_low", "ci_high", "q", "specialised"], what)
    label = pick_label(df, label, what)
    part = df.filter(pl.col("label") == label).with_columns(pl.col("specialised").cast(pl.Float64))
    custom = (
        "share",
        "ci_low",
        "ci_high",
        "share_rest",
        "specificity",
        "lo_low",
        "lo_high",
        "lift",
        "q",
        "specialised",
    )
    return layer_expert_heatmap(
        part, "log_odds", custom,
        title=f"Domain specialisation of {label!r}: log-odds vs the other labels (* = specialised, q < 0.05)",
        colorbar="log-odds", colorscale="RdBu_r", zmid=0.0, mark=("specialised", "*", flagged),
        hover="log-odds %{z:.2f} (95% CI %{customdata[5]:.2f}–%{customdata[6]:.2f})"
        "<br>share %{customdata[0]:.4f} (95% CI %{customdata[1]:.4f}–%{customdata[2]:.4f})"
        "<br>other labels %{customdata[3]:.4f}, specificity %{customdata[4]:.2f}×"
        "<br>lift over uniform %{customdata[7]:.2f}, q %{customdata[8]:.3g}",
    )  # fmt: skip


def resonance_heatmap(df: pl.DataFrame) -> go.Figure:
    """Layer × expert heatmap of a resonance score (``rd`` or ``ftri``, per ``method``) from ``resonance_map``.

    Diverging around 0 (red = the expert fires more on target prompts than on control ones);
    cells with ``q < 0.05`` are marked ``*``. Hover gives the score with its 95% CI, both
    scores, the target/control selection rates and prompt counts, and p, q.
    """
    what = "resonance_heatmap"
    cols = ["layer", "expert", "rd", "ftri", "method", "ci_low", "ci_high", "p", "q"]
    check_frame(df, [*cols, "rate_target", "rate_control", "n_target", "n_control"], what)
    methods = sorted({str(x) for x in df["method"].drop_nulls().unique().to_list()}) or ["rd"]
    method = methods[0]
    if method not in ("rd", "ftri"):
        raise ValueError(f"{what}: unknown method {method!r}; expected 'rd' or 'ftri'")
    extra = ("ci_low", "ci_high", "rd", "ftri", "rate_target", "rate_control", "n_target", "n_control")
    return layer_expert_heatmap(
        df, method, (*extra, "p", "q"),
        title=f"Resonance: {method} per expert, target vs control (* = q < 0.05)",
        colorbar=method, colorscale="RdBu_r", zmid=0.0, mark=("q", "*", significant),
        hover=_resonance_hover(method, "rate target %{customdata[4]:.4f}, control %{customdata[5]:.4f}"),
    )  # fmt: skip


def stored_resonance_heatmap(df: pl.DataFrame) -> go.Figure:
    """Layer × expert heatmap of one stored resonance map (``Store.resonance`` rows of one ``map_id``).

    ``moe-workbench resonate`` stores correlational maps (``method`` rd or ftri) and causal ones
    (``causal``: ``effect`` is the change of the behaviour margin on the target prompts when the expert
    alone is ablated, and CI, p and q refer to it). The colour is the score the map's method names
    (:data:`STORED_SCORES`), diverging around 0; ``*`` marks q < 0.05. The title names the map, its
    labels and span; hover gives every score the map holds (a missing one shows NaN).
    """
    what = "stored_resonance_heatmap"
    cols = ["map_id", "target", "control", "span", "method", "layer", "expert", "rd", "ftri", "effect"]
    check_frame(df, [*cols, "attribution", "ci_low", "ci_high", "p", "q", "n_target", "n_control"], what)
    maps = sorted({str(x) for x in df["map_id"].unique().to_list()})
    if len(maps) != 1:
        raise ValueError(f"{what}: one map at a time, got {maps}")
    first = df.row(0, named=True)
    method = str(first["method"])
    if method not in STORED_SCORES:
        raise ValueError(f"{what}: unknown method {method!r}; expected one of {sorted(STORED_SCORES)}")
    score, colorbar = STORED_SCORES[method]
    extra = ("ci_low", "ci_high", "rd", "ftri", "effect", "attribution", "n_target", "n_control", "p", "q")
    return layer_expert_heatmap(
        df, score, extra,
        title=f"Stored resonance map {maps[0]}: {score} per expert, {first['target']!r} vs {first['control']!r}, "
        f"span {first['span']} (* = q < 0.05)",
        colorbar=colorbar, colorscale="RdBu_r", zmid=0.0, mark=("q", "*", significant),
        hover=_resonance_hover(score, "effect %{customdata[4]:.4f}, attribution %{customdata[5]:.4f}"),
    )  # fmt: skip


def _resonance_hover(score: str, third_line: str) -> str:
    """A resonance map's hover: the score with its CI, rd and fTRI, ``third_line``, prompt counts, p and q.

    The custom data columns are (ci_low, ci_high, rd, ftri, two for ``third_line``, n_target, n_control,
    p, q), in that order, as both resonance heatmaps pass them.
    """
    return (
        f"{score} %{{z:.4f}} (95% CI %{{customdata[0]:.4f}}–%{{customdata[1]:.4f}})"
        "<br>rd %{customdata[2]:.4f}, fTRI %{customdata[3]:.4f}"
        f"<br>{third_line}"
        "<br>prompts target %{customdata[6]:.0f}, control %{customdata[7]:.0f}"
        "<br>p %{customdata[8]:.3g}, q %{customdata[9]:.3g}"
    )
