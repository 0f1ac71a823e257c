"""Figure for dynamic routing (docs/methods.md §6): experts needed to reach router mass p, and its link to NLL."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench.plots.common import LAYOUT, as_floats, check_frame, colour, integer_ticks, labels_of

__all__ = ["dynamic_k_lines"]

_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def _k_hist(counts: list[int] | None) -> str:
    """``k_counts`` as hover text: ``k=1: 33, k=2: 12`` (trailing zero bins dropped)."""
    if not counts:
        return ""
    last = max((i for i, c in enumerate(counts) if c), default=-1)
    return ", ".join(f"k={i + 1}: {c}" for i, c in enumerate(counts[: last + 1]))


def dynamic_k_lines(df: pl.DataFrame, p: float | None = None) -> go.Figure:
    """Mean ``k_p`` per layer (top) and Spearman ρ(k_p, token NLL) per layer (bottom), from ``dynamic_k``.

    One colour per label and one dash style per mass ``p`` (``p`` keeps a single mass; by
    default all are drawn). ``k_p`` = the fewest experts whose router scores reach mass p, so
    a rising line means the router spreads its mass over more experts there. Hover gives the
    full k distribution and the token counts; ρ is NaN where the NLL is constant or missing.
    """
    what = "dynamic_k_lines"
    check_frame(df, ["layer", "label", "p", "mean_k", "k_counts", "n_tokens", "spearman_nll", "n_nll"], what)
    masses = sorted({float(x) for x in df["p"].drop_nulls().to_list()})
    if p is not None:
        if not any(np.isclose(p, m) for m in masses):
            raise ValueError(f"{what}: p {p} absent; masses present: {masses}")
        masses = [m for m in masses if np.isclose(p, m)]
    labels: list[str | None] = [*labels_of(df), None]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.6, 0.4],
        subplot_titles=("mean experts k_p needed for router mass p", "Spearman ρ(k_p, token NLL)"),
    )
    for i, label in enumerate(labels):
        by_label = df.filter(pl.col("label").is_null() if label is None else pl.col("label") == label)
        name = "(no label)" if label is None else label
        for j, mass in enumerate(masses):
            part = by_label.filter((pl.col("p") - mass).abs() < 1e-9).sort("layer")
            if part.height == 0:
                continue
            custom = np.column_stack(
                [
                    np.array([_k_hist(c) for c in part["k_counts"].to_list()], dtype=object),
                    as_floats(part["n_tokens"]),
                    as_floats(part["n_nll"]),
                    as_floats(part["mean_k"]),
                    as_floats(part["spearman_nll"]),
                ]
            )
            hover = (
                f"{name}, p = {mass:g}<br>layer %{{x}}<br>mean k %{{customdata[3]:.3f}}"
                "<br>ρ(k, NLL) %{customdata[4]:.3f} over %{customdata[2]:.0f} tokens"
                "<br>tokens %{customdata[1]:.0f}<br>%{customdata[0]}<extra></extra>"
            )
            style = {"color": colour(i), "dash": _DASHES[j % len(_DASHES)]}
            group = f"{name}, p = {mass:g}"
            for row, column in ((1, "mean_k"), (2, "spearman_nll")):
                fig.add_trace(
                    go.Scatter(
                        x=part["layer"].to_list(),
                        y=as_floats(part[column]),
                        mode="lines+markers",
                        name=group,
                        legendgroup=group,
                        showlegend=row == 1,
                        line=style,
                        customdata=custom,
                        hovertemplate=hover,
                    ),
                    row=row,
                    col=1,
                )
    fig.update_yaxes(title_text="mean k_p (experts)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="Spearman ρ", range=[-1.05, 1.05], row=2, col=1)
    fig.update_xaxes(title_text="layer", row=2, col=1)
    fig.update_xaxes(**integer_ticks(df["layer"]))  # both panels: they share the layer axis
    fig.update_layout(title="Dynamic routing: experts needed per token", height=700, **LAYOUT)
    return fig
