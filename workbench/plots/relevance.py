"""Figures for expert relevance to a label (docs/methods.md §2): vocabulary, ESFT, TCESS, scorer agreement."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import polars as pl

from workbench.plots.common import (
    LAYOUT,
    as_floats,
    chance_line,
    check_frame,
    flagged,
    integer_ticks,
    labels_of,
    layer_expert_heatmap,
    pick_label,
    require_columns,
)

__all__ = ["agreement_heatmap", "esft_heatmap", "tcess_heatmap", "vocab_lines"]

_ESFT_SCORES = {"gs": "gate score GS", "tsr": "token selection ratio TSR"}


def vocab_lines(df: pl.DataFrame) -> go.Figure:
    """OLMoE vocabulary specialisation per layer, from ``vocab_specialisation``, with the ``1/E`` line.

    The y value is the mean over token ids of the share of that id's tokens sent (top-1) to its
    most frequent expert: 1 = each token id always goes to one expert, ``1/E`` = uniform routing.
    Hover gives how many token ids qualified (``n ≥ min_count``) and the tokens they cover.
    """
    check_frame(df, ["layer", "vocab_specialisation", "uniform", "n_token_ids", "n_tokens"], "vocab_lines")
    part = df.sort("layer")
    fig = go.Figure(
        [
            go.Scatter(
                x=part["layer"].to_list(),
                y=as_floats(part["vocab_specialisation"]),
                mode="lines+markers",
                name="vocabulary specialisation",
                customdata=np.column_stack([as_floats(part["n_token_ids"]), as_floats(part["n_tokens"])]),
                hovertemplate=(
                    "layer %{x}<br>specialisation %{y:.4f}<br>token ids %{customdata[0]:.0f}"
                    ", tokens %{customdata[1]:.0f}<extra></extra>"
                ),
            ),
            chance_line(part, "uniform", "uniform 1/E"),
        ]
    )
    fig.update_layout(
        title="Vocabulary specialisation per layer (top-1 routing)",
        xaxis_title="layer",
        yaxis_title="mean max_e n(e,x)/n(x) over token ids (0–1)",
        yaxis_range=[0, 1.05],
        **LAYOUT,
    )
    fig.update_xaxes(**integer_ticks(part["layer"]))
    return fig


def esft_heatmap(df: pl.DataFrame, label: str | None = None, score: str = "gs") -> go.Figure:
    """Layer × expert heatmap of an ESFT score for one label, from ``esft_scores``.

    ``score`` is ``"gs"`` (mean gate weight) or ``"tsr"`` (token selection ratio); ``label``
    defaults to the first label. Cells in that score's expert set (the smallest set reaching
    the cumulative share p) are marked ``●``, so the heatmap shows both the scores and which
    experts ESFT would fine-tune. Hover has GS, TSR, both set memberships and the token count.
    """
    what = "esft_heatmap"
    require_columns(
        df, ["layer", "expert", "label", "gs", "tsr", "in_set_gs", "in_set_tsr", "n_tokens"], what
    )
    if score not in _ESFT_SCORES:
        raise ValueError(f"{what}: score must be one of {sorted(_ESFT_SCORES)}, got {score!r}")
    label = pick_label(df, label, what)
    part = df.filter(pl.col("label") == label)
    return layer_expert_heatmap(
        part, score, ("gs", "tsr", "in_set_gs", "in_set_tsr", "n_tokens"),
        title=f"ESFT {_ESFT_SCORES[score]} for label {label!r} (● = in the {score.upper()} expert set)",
        colorbar=score.upper(), colorscale="Viridis", zmin=0.0, mark=(f"in_set_{score}", "●", flagged),
        hover="GS %{customdata[0]:.4f} (in set %{customdata[2]:.0f})"
        "<br>TSR %{customdata[1]:.4f} (in set %{customdata[3]:.0f})<br>tokens %{customdata[4]:.0f}",
    )  # fmt: skip


def tcess_heatmap(df: pl.DataFrame, label: str | None = None) -> go.Figure:
    """Layer × expert heatmap of TCESS (mean router score) for one label, from ``tcess``.

    ``label`` defaults to the first label. Scores are the router's normalised probabilities
    (0–1); hover adds how many of the label's tokens counted (those above the threshold r).
    """
    what = "tcess_heatmap"
    require_columns(df, ["layer", "expert", "label", "tcess", "n_counted", "n_tokens"], what)
    label = pick_label(df, label, what)
    part = df.filter(pl.col("label") == label)
    return layer_expert_heatmap(
        part, "tcess", ("n_counted", "n_tokens"),
        title=f"TCESS: mean router probability for label {label!r}",
        colorbar="TCESS", colorscale="Viridis", zmin=0.0,
        hover="TCESS %{z:.4f}<br>counted %{customdata[0]:.0f} of %{customdata[1]:.0f} tokens",
    )  # fmt: skip


def agreement_heatmap(df: pl.DataFrame) -> go.Figure:
    """Spearman ρ between each pair of relevance scorers (rows) for each label (columns).

    From ``scorer_agreement``; a diverging scale fixed to [−1, 1] so colour means the same in
    every run. Hover gives ρ and the number of (layer, expert) rows ranked. A scorer note
    (e.g. TCESS skipped for a run without logits) is shown under the title.
    """
    check_frame(df, ["label", "scorer_a", "scorer_b", "spearman", "n", "note"], "agreement_heatmap")
    labels = labels_of(df)
    pairs = list(dict.fromkeys(f"{a} vs {b}" for a, b in df.select("scorer_a", "scorer_b").iter_rows()))
    z = np.full((len(pairs), len(labels)), np.nan)
    n = np.full_like(z, np.nan)
    pi = {p: i for i, p in enumerate(pairs)}
    li = {lab: j for j, lab in enumerate(labels)}
    for label, a, b, rho, count in df.select("label", "scorer_a", "scorer_b", "spearman", "n").iter_rows():
        if label is None:
            continue
        i, j = pi[f"{a} vs {b}"], li[str(label)]
        z[i, j] = np.nan if rho is None else rho
        n[i, j] = np.nan if count is None else count
    text = np.where(np.isfinite(z), np.char.mod("%.2f", np.nan_to_num(z)), "").astype(object)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=pairs,
            text=text,
            texttemplate="%{text}",
            customdata=n,
            colorscale="RdBu_r",
            zmin=-1.0,
            zmax=1.0,
            colorbar={"title": "Spearman ρ"},
            hovertemplate="label %{x}<br>%{y}<br>ρ %{z:.3f}<br>n %{customdata:.0f} (layer, expert) rows"
            "<extra></extra>",
        )
    )
    notes = sorted({str(x) for x in df["note"].drop_nulls().to_list()})
    title = "Agreement of expert-relevance scorers (Spearman ρ over layer × expert)"
    if notes:
        title += "<br><sup>" + html.escape("; ".join(notes)) + "</sup>"
    fig.update_layout(title=title, xaxis_title="label", yaxis_title="scorer pair", **LAYOUT)
    return fig
