"""Expert card (Neuronpedia-style) for one (layer, expert): load, top tokens, label shares, example
contexts (:mod:`dashboards.views.contexts`), co-activation partners, health flags, stored resonance,
ablation effect and similar experts — everything the store says about it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from dash import dcc, html

from dashboards import data
from dashboards.components import expert_href, figure, guarded, message, table
from dashboards.components.common import is_pending
from dashboards.views.coactivation import partner_count, partners
from dashboards.views.common import ci_column
from dashboards.views.contexts import contexts_section
from workbench.plots.theme import TEMPLATE

__all__ = [
    "ABLATIONS",
    "METRIC_MEANING",
    "MIN_PROFILE_LABELS",
    "ablation_effect",
    "expert_card",
    "label_shares",
    "similar_by_labels",
    "similar_experts",
]

ABLATIONS = ("zero", "reroute", "prune")
"""Intervention kinds that take an expert out (an "ablation")."""
UNIFORM_TOL = 0.02
"""A label profile within this (L2) of uniform has no direction to compare: no similar experts."""
MIN_PROFILE_LABELS = 3
"""Fewest labels for label-profile similarity. A centred profile over L labels lies in an
(L−1)-dimensional space: with two labels it has one direction, so every cosine is exactly ±1
and says only which label each expert leans to (docs/methods.md §7)."""
METRIC_MEANING = {
    "nll_delta": "change: intervened − baseline NLL",
    "kl": "KL(baseline ‖ intervened), ≥ 0",
    "top1_agreement": "level: share of tokens whose top-1 is unchanged",
    "nll_base": "level: baseline NLL (no intervention)",
    "behaviour_rate_base": "level: baseline behaviour rate",
    "behaviour_rate": "level: behaviour rate with the intervention",
    "behaviour_delta": "change: intervened − baseline behaviour rate",
    "margin_delta": "change: intervened − baseline behaviour margin",
}
"""What each recorded evaluation metric is (workbench/interventions/effects.py::summarise)."""


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
    lo, hi = r["ci_low"], r["ci_high"]
    ci = (
        "no CI: fewer than 2 prompts or no bootstrap"
        if lo is None or hi is None or np.isnan(lo) or np.isnan(hi)
        else f"95% CI {100 * lo:.2f}–{100 * hi:.2f}%"
    )
    return html.P(
        f"Selected in {100 * r['f']:.2f}% of routed slots ({ci}), utilisation {r['utilisation']:.2f}× uniform{dead}.",
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
            customdata=rows.select("share_rest", "specificity", "log_odds", "q", "lift").to_numpy(),
            text=["* specialised" if s else "" for s in rows["specialised"].to_list()], textposition="outside",
            hovertemplate="%{x}: share %{y:.4f} vs %{customdata[0]:.4f} in the other labels"
            "<br>specificity %{customdata[1]:.2f}×, log-odds %{customdata[2]:.2f}, q %{customdata[3]:.3g}"
            "<br>lift over uniform %{customdata[4]:.2f}<extra></extra>",
        )
    )  # fmt: skip
    fig.update_layout(
        title="Share of each label's tokens routed here<br><sup>95% CI; * = specialised vs the other labels</sup>",
        yaxis_title="share", template=TEMPLATE,
        height=320,
    )  # fmt: skip
    return fig


def _flags(db: str, run: str, layer: int, expert: int) -> Any:
    """Degradation (always) and super-expert outlier flag (when the run has expert stats)."""
    items: list[Any] = []
    deg = _cell(data.analysis(db, run, "degradation"), layer, expert)
    if deg.height:
        r = deg.row(0, named=True)
        items.append(
            f"Degradation: {'DEGRADED' if r['degraded'] else 'not degraded'} — dominant label "
            f"{r['dominant_label']!r} takes {100 * (r['dominant_share'] or 0):.0f}% of its label-normalised use "
            f"(concentration {r['concentration']:.2f})."
        )
    supers = guarded(data.analysis, db, run, "super-experts")
    if is_pending(supers):
        items.append(supers)
    elif isinstance(supers, pl.DataFrame):
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


def similar_by_labels(spec: pl.DataFrame, layer: int, expert: int, n: int | None = 8) -> pl.DataFrame:
    """The ``n`` experts (any layer; None: all, most similar first) whose label profile is most like (``layer``, ``expert``)'s.

    An expert's label profile is its selection share on each label's tokens, normalised to sum
    to 1 over labels, minus the uniform 1/L: where it leans. Similarity is the cosine of two
    profiles (1: same leaning; 0: unrelated; −1: opposite). Raises ValueError when the run has
    fewer than :data:`MIN_PROFILE_LABELS` labels (the cosine is then ±1 by construction) or the
    expert leans nowhere (a generalist: nothing to compare).
    """
    wide = (
        spec.select(pl.col("layer").cast(pl.Int64), pl.col("expert").cast(pl.Int64), "label", "share")
        .pivot(on="label", index=["layer", "expert"], values="share")
        .with_columns(pl.exclude("layer", "expert").fill_null(0.0))  # a bare fill_null(0.0) makes ids floats
    )
    labels = [c for c in wide.columns if c not in ("layer", "expert")]
    if len(labels) < MIN_PROFILE_LABELS:
        raise ValueError(
            f"not enough labels to compare label profiles: needs ≥ {MIN_PROFILE_LABELS} labels, the run has "
            f"{len(labels)} (with two, every profile cosine is ±1 and only says which label an expert leans to)"
        )
    m = wide.select(labels).to_numpy().astype(float)
    total = m.sum(axis=1, keepdims=True)
    prof = np.divide(m, total, out=np.full_like(m, 1 / len(labels)), where=total > 0) - 1 / len(labels)
    keys = list(zip(wide["layer"].to_list(), wide["expert"].to_list(), strict=True))
    if (layer, expert) not in keys:
        raise ValueError("the expert has no labelled tokens")
    me = prof[keys.index((layer, expert))]
    if np.linalg.norm(me) < UNIFORM_TOL:
        raise ValueError(
            "this expert's label profile is nearly uniform (a generalist): no similar experts by label"
        )
    norms = np.linalg.norm(prof, axis=1)
    ok = norms >= UNIFORM_TOL
    sim = np.where(ok, prof @ me / np.maximum(norms, 1e-12) / np.linalg.norm(me), np.nan)
    leans = [labels[i] for i in prof.argmax(axis=1)]
    out = pl.DataFrame(
        {"layer": wide["layer"], "expert": wide["expert"], "similarity": sim, "leans_to": leans}
    ).filter(~((pl.col("layer") == layer) & (pl.col("expert") == expert)) & pl.col("similarity").is_not_nan())
    ranked = out.sort(["similarity", "layer", "expert"], descending=[True, False, False])
    return ranked if n is None else ranked.head(n)


SIMILAR_SHOWN = 8
"""The expert card lists this many most similar experts (a run of 58 layers × 256 experts has ~15k)."""
PARTNERS_SHOWN = 8
"""The expert card lists this many most frequent co-activation partners."""


def _top_of(shown: int, total: int, what: str, order: str) -> str:
    """ "All T <what>, <order>." or "The N <order> of T <what>." — how much of a ranked list is shown."""
    if shown >= total:
        return f"All {total} {what}, {order} first."
    return f"The {shown} {order} of {total} {what}."


def similar_experts(db: str, run: str, layer: int, expert: int) -> Any:
    """The similar-experts table, each row linking to its card, with what "similar" means here."""
    ranked = similar_by_labels(data.analysis(db, run, "specialisation"), layer, expert, n=None)
    if ranked.height == 0:
        return message("no other expert leans towards any label")
    df = ranked.head(SIMILAR_SHOWN)
    rows = [
        html.Tr(
            [
                html.Td(
                    dcc.Link(
                        f"layer {r['layer']} · expert {r['expert']}",
                        href=expert_href(run, r["layer"], r["expert"]),
                    )
                ),
                html.Td(f"{r['similarity']:.3f}"),
                html.Td(r["leans_to"]),
            ]
        )
        for r in df.iter_rows(named=True)
    ]
    return html.Div(
        [
            html.P(
                "Similarity: cosine of the experts' label profiles (each label's selection share, normalised "
                "over labels, minus uniform), from the store's specialisation table — experts of any layer "
                "that lean towards the same labels. Not weight similarity (that needs the model). "
                + _top_of(df.height, ranked.height, "experts with a label leaning", "most similar"),
                className="wb-muted",
                id="expert-similar-note",
            ),
            html.Table(
                [html.Thead(html.Tr([html.Th("expert"), html.Th("similarity"), html.Th("leans to")])), html.Tbody(rows)],
                className="wb-simple-table", id="expert-similar",
            ),
        ]
    )  # fmt: skip


def _names(spec: Any, layer: int, expert: int) -> tuple[str, int] | None:
    """(kind, experts taken out in total) of an ablation spec naming (layer, expert); None otherwise."""
    try:
        items = json.loads(spec).get("specs", []) if isinstance(spec, str) else []
    except (ValueError, AttributeError):
        return None
    for item in items:
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind not in ABLATIONS:
            continue
        chosen = item.get("experts") or item.get("keep") or {}
        total = sum(len(v) for v in chosen.values()) if isinstance(chosen, dict) else 0
        named = expert in (chosen.get(str(layer)) or []) if isinstance(chosen, dict) else False
        if kind == "prune":  # prune keeps the listed experts: the others are taken out
            named = isinstance(chosen, dict) and str(layer) in chosen and not named
        if named:
            return str(kind), total
    return None


def ablation_effect(db: str, run: str, layer: int, expert: int) -> Any:
    """What taking the expert out did, from the store: causal resonance maps and recorded ablations.

    A causal resonance map (``resonate --method causal``) holds each expert's effect when ablated
    alone; the lab and ``intervene`` record ablations with their measured deltas. Without either,
    says how to produce one.
    """
    parts: list[Any] = []
    stored = data.stored_resonance(db, run)
    if stored.height and "effect" in stored.columns:
        causal = _cell(stored, layer, expert).filter(pl.col("effect").is_not_null())
        if causal.height:
            parts.append(html.P("Causal resonance maps: change of the behaviour margin on the target prompts when "
                                "this expert alone is ablated.", className="wb-muted"))  # fmt: skip
            cols = [c for c in ("map_id", "target", "control", "method", "effect", "ci_low", "ci_high", "q")
                    if c in causal.columns]  # fmt: skip
            parts.append(table(causal.select(cols), table_id="expert-ablation-maps"))
    found = data.interventions(db, run)
    hits = []
    for r in found.iter_rows(named=True):
        named = _names(r.get("spec"), layer, expert)
        if named is not None:
            hits.append({"intervention_id": r["intervention_id"], "kind": named[0], "experts_out": named[1]})
    if hits:
        ids = pl.DataFrame(hits)
        evals = data.evaluations(db, run).join(ids, on="intervention_id", how="inner")
        parts.append(html.P("Recorded ablations that take this expert out (alone when experts_out is 1). "
                            "Each row is one recorded metric as stored, with its stored 95% CI (none with fewer "
                            "than 2 prompts). Not every metric is a change: *_delta metrics are intervened − "
                            "baseline, kl is a divergence, nll_base, behaviour_rate(_base) and top1_agreement are "
                            "levels; 'reads as' says which for each row.",
                            className="wb-muted"))  # fmt: skip
        wanted: tuple[str, ...] = ("intervention_id", "kind", "experts_out", "label", "metric", "value", "n")
        if evals.height:
            meaning = pl.col("metric").replace_strict(
                METRIC_MEANING, default="as recorded", return_dtype=pl.Utf8
            )
            evals = evals.with_columns(meaning.alias("reads as"))
            if {"ci_low", "ci_high"} <= set(evals.columns):
                evals = ci_column(evals)
            wanted = (
                "intervention_id",
                "kind",
                "experts_out",
                "label",
                "metric",
                "reads as",
                "value",
                "95% CI",
                "n",
            )
        shown = evals.select([c for c in wanted if c in evals.columns]) if evals.height else ids
        parts.append(table(shown, table_id="expert-ablations", empty="recorded, but with no evaluation rows"))
    if not parts:
        return message(
            "No ablation effect stored for this expert. Measure one with "
            f"`moe-workbench resonate --db {db} --run {run} --target T --control C --method causal --model M` "
            "(each expert ablated alone; the map is stored), or ablate it in the Lab (`serve --model M`), "
            "which saves its result to the store."
        )
    return html.Div(parts)


def _partners(db: str, run: str, layer: int, expert: int) -> Any:
    """The expert's most frequent co-activation partners, saying how many of how many are listed."""
    df = partners(db, run, layer, expert, PARTNERS_SHOWN)
    if df.height == 0:
        return message("never co-selected (top-1 routing?)")
    note = _top_of(df.height, partner_count(db, run, layer, expert), "partners", "most frequent")
    return html.Div([html.P(note, className="wb-muted", id="expert-partners-note"), table(df)])


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
                            table(
                                tokens,
                                columns=["text", "token_id", "n_routed", "n_total", "share"],
                                empty="no token was routed here often enough",
                            )
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
            html.H4("Example contexts"),
            html.Div(guarded(contexts_section, db, run, layer, expert), id="expert-contexts"),
            html.H4("Co-activation partners (same layer)"),
            guarded(_partners, db, run, layer, expert),
            html.H4("Health flags"),
            guarded(_flags, db, run, layer, expert),
            html.H4("Resonance"),
            guarded(_resonance, db, run, layer, expert),
            html.H4("Ablation effect"),
            guarded(ablation_effect, db, run, layer, expert),
            html.H4("Similar experts"),
            guarded(similar_experts, db, run, layer, expert),
        ],
        className="wb-card",
    )
