"""Expert card (Neuronpedia-style) for one (layer, expert): load, top tokens, label shares,
co-activation partners, health flags and stored resonance — everything the store says about it."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import polars as pl
from dash import html

from dashboards import data
from dashboards.components import figure, guarded, message, table
from dashboards.views.coactivation import partners

__all__ = ["expert_card", "label_shares"]


def _cell(df: pl.DataFrame, layer: int, expert: int) -> pl.DataFrame:
    return df.filter((pl.col("layer") == layer) & (pl.col("expert") == expert))


def _check(db: str, run: str, layer: int | None, expert: int | None) -> tuple[int, int]:
    """(layer, expert) if the run has them; a ValueError naming what it has otherwise."""
    layers = data.layers(db, run)
    present = [int(x) for x in layers["layer"].to_list()]
    if layer is None or expert is None:
        raise ValueError(f"pick a layer and an expert (layers: {present})")
    if layer not in present:
        raise ValueError(f"run {run!r} has no MoE layer {layer}; layers: {present}")
    n_experts = int(layers.filter(pl.col("layer") == layer)["n_experts"][0])
    if not 0 <= expert < n_experts:
        raise ValueError(f"layer {layer} has experts 0..{n_experts - 1}, not {expert}")
    return layer, expert


def _load(db: str, run: str, layer: int, expert: int) -> Any:
    row = _cell(data.analysis(db, run, "load"), layer, expert)
    if row.height == 0:
        return message("no routed tokens at this layer")
    r = row.row(0, named=True)
    dead = " — dead (almost never selected)" if r["dead"] else ""
    return html.P(
        f"Selected in {100 * r['f']:.2f}% of routed slots (95% CI {100 * r['ci_low']:.2f}–"
        f"{100 * r['ci_high']:.2f}%), utilisation {r['utilisation']:.2f}× uniform{dead}.",
        className="wb-summary",
    )


def label_shares(db: str, run: str, layer: int, expert: int) -> go.Figure:
    """Bar chart of the share of each label's tokens routed to the expert, with bootstrap CIs."""
    rows = _cell(data.analysis(db, run, "specialisation"), layer, expert).sort("label")
    if rows.height == 0:
        raise ValueError("the run has no labelled tokens at this layer")
    share = rows["share"].to_numpy()
    fig = go.Figure(
        go.Bar(
            x=rows["label"].to_list(), y=share,
            error_y={"type": "data", "array": rows["ci_high"].to_numpy() - share,
                     "arrayminus": share - rows["ci_low"].to_numpy()},
            customdata=rows.select("lift", "q").to_numpy(),
            hovertemplate="%{x}: share %{y:.4f}<br>lift %{customdata[0]:.2f}, q %{customdata[1]:.3g}<extra></extra>",
        )
    )  # fmt: skip
    fig.update_layout(
        title="Share of each label's tokens routed here (95% CI)", yaxis_title="share", template="plotly_white",
        height=320,
    )  # fmt: skip
    return fig


def _flags(db: str, run: str, layer: int, expert: int) -> Any:
    """Degradation (always) and super-expert outlier flag (when the run has expert stats)."""
    items = []
    deg = _cell(data.analysis(db, run, "degradation"), layer, expert)
    if deg.height:
        r = deg.row(0, named=True)
        items.append(
            f"Degradation: {'DEGRADED' if r['degraded'] else 'not degraded'} — dominant label "
            f"{r['dominant_label']!r} takes {100 * (r['dominant_share'] or 0):.0f}% of its label-normalised use "
            f"(concentration {r['concentration']:.2f})."
        )
    supers = guarded(data.analysis, db, run, "super-experts")
    if isinstance(supers, pl.DataFrame):
        sup = _cell(supers, layer, expert)
        if sup.height:
            r = sup.row(0, named=True)
            items.append(
                f"Output-norm outlier (super expert): {'YES' if r['super'] else 'no'} (max norm {r['max_out_norm']:.3g})."
            )
    else:
        items.append(
            "Outlier flag: not available (the run has no expert stats; capture with --expert-stats)."
        )
    return html.Ul([html.Li(t) for t in items])


def _resonance(db: str, run: str, layer: int, expert: int) -> Any:
    stored = data.stored_resonance(db, run)
    rows = _cell(stored, layer, expert) if stored.height else stored
    if rows.height == 0:
        return message("No stored resonance map for this run (`moe-workbench resonate` stores one).")
    cols = [
        c
        for c in ("map_id", "target", "control", "method", "rd", "ftri", "effect", "ci_low", "ci_high", "q")
        if c in rows.columns
    ]
    return table(rows.select(cols))


def expert_card(db: str, run: str, layer: int | None, expert: int | None) -> html.Div:
    """The whole card; each section shows a message instead when its data is missing."""
    layer, expert = _check(db, run, layer, expert)
    tokens = guarded(data.top_tokens, db, run, layer, expert)
    share_fig = guarded(label_shares, db, run, layer, expert)
    return html.Div(
        [
            html.H2(f"Layer {layer} · expert {expert}", id="expert-title"),
            html.H4("Load"),
            guarded(_load, db, run, layer, expert),
            html.Div(
                [
                    html.Div(
                        [
                            html.H4("Top tokens (top-1 routing, share of the token's occurrences)"),
                            table(tokens, empty="no token was routed here often enough")
                            if isinstance(tokens, pl.DataFrame)
                            else tokens,
                        ],
                        className="wb-col",
                    ),
                    html.Div(
                        [
                            html.H4("Domains"),
                            figure(share_fig) if isinstance(share_fig, go.Figure) else share_fig,
                        ],
                        className="wb-col",
                    ),
                ],
                className="wb-row",
            ),
            html.H4("Co-activation partners (same layer)"),
            guarded(
                lambda: table(partners(db, run, layer, expert), empty="never co-selected (top-1 routing?)")
            ),
            html.H4("Health flags"),
            guarded(_flags, db, run, layer, expert),
            html.H4("Resonance"),
            guarded(_resonance, db, run, layer, expert),
        ],
        className="wb-card",
    )
