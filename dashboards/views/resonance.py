"""Resonance page: the layer × expert map of target vs control labels (computed from the routing over
a span of tokens, or one stored by ``moe-workbench resonate``, causal maps included), and the tokens
that make a clicked expert resonate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
import polars as pl
from dash import dcc, html

from dashboards import data
from dashboards.components import expert_href, message, table
from workbench.analysis.resonance import SPAN_HELP, TokenSpan
from workbench.catalog import figure_for
from workbench.plots.specialisation import stored_resonance_heatmap
from workbench.store.segments import split_stored_span

__all__ = [
    "LIVE", "METHODS", "SPAN_HELP", "StoredMap", "default_pair", "driving_tokens", "map_options", "resonance_figure",
    "span_of", "stored_map", "stored_map_figure",
]  # fmt: skip

METHODS = ("rd", "ftri")
LIVE = "__live__"
"""Map picker value: the map computed here from the routing, with the page's target, control, method and span."""


def default_pair(db: str, run: str) -> tuple[str | None, str | None]:
    """(target, control): the run's contrast set when it has one, else its first two labels."""
    found = data.contrast(db, run)
    if found is not None:
        return found
    labels = data.labels(db, run)
    return (labels[0] if labels else None, labels[1] if len(labels) > 1 else None)


def span_of(text: Any) -> str | None:
    """The span as the analysis takes it: None for every token (empty, ``all``), else the text checked
    against :data:`SPAN_HELP` (``ValueError`` saying what is accepted)."""
    if text is None or not str(text).strip() or str(text).strip() == "all":
        return None
    span = str(text).strip()
    TokenSpan.parse(span)
    return span


def resonance_figure(
    db: str,
    run: str,
    target: str | None,
    control: str | None,
    method: str,
    span: Any = None,
    segment: str | None = None,
) -> go.Figure:
    """``figure_for("resonance")`` of the resonance map of ``target`` vs ``control`` (``method`` rd or ftri)
    over the tokens of ``span`` (:data:`SPAN_HELP`; empty: all) within ``segment`` (all, prompt, or the
    generated responses); a span or segment other than all is named in the title."""
    if not target or not control:
        raise ValueError("pick a target and a control label (the run needs at least two labels)")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    chosen = span_of(span)
    options: dict[str, Any] = {} if chosen is None else {"span": chosen}  # all: the prewarmed table
    options.update(data.scoped(segment))
    df = data.analysis(db, run, "resonance", target=target, control=control, method=method, **options)
    fig = figure_for("resonance", df)
    named = ([f"span {chosen}"] if chosen is not None else []) + (
        [f"{segment} tokens"] if data.scoped(segment) else []
    )
    if named:
        fig.update_layout(title=f"{fig.layout.title.text}, {', '.join(named)}")
    return fig


@dataclass(frozen=True)
class StoredMap:
    """One stored map's rows and the contrast it was computed on (target, control, span, method, segment)."""

    rows: pl.DataFrame
    map_id: str
    target: str
    control: str
    span: str
    method: str
    segment: str | None = None  # None: every token; else the map read only that segment's tokens

    @classmethod
    def of(cls, rows: pl.DataFrame) -> StoredMap:
        """The map whose rows (one ``map_id``, at least one row) are ``rows``."""
        first = rows.row(0, named=True)
        segment, span = split_stored_span(first["span"])
        return cls(
            rows, str(first["map_id"]), str(first["target"]), str(first["control"]),
            span, str(first["method"]), segment,
        )  # fmt: skip


def stored_map(db: str, run: str, map_id: str) -> StoredMap:
    """The stored map ``map_id`` of ``run`` (``ValueError`` naming the run's maps when it has no such map)."""
    stored = data.stored_resonance(db, run)
    rows = stored.filter(pl.col("map_id") == map_id) if stored.height else stored
    if rows.height == 0:
        have = sorted(set(stored["map_id"].to_list())) if stored.height else []
        raise ValueError(
            f"run {run!r} has no stored resonance map {map_id!r}; its stored maps: {have or 'none'} "
            "(`moe-workbench resonate --store` stores one)"
        )
    return StoredMap.of(rows)


def stored_map_figure(db: str, run: str, map_id: str) -> go.Figure:
    """The heatmap of a stored map (its own target, control, span and method: rd, ftri or causal)."""
    return stored_resonance_heatmap(stored_map(db, run, map_id).rows)


def map_options(db: str, run: str | None) -> list[dict[str, Any]]:
    """Map picker options: the map computed here first, then the run's stored maps, oldest first."""
    options = [{"label": "computed here from the routing (the choices beside)", "value": LIVE}]
    if not run:
        return options
    stored = data.stored_resonance(db, run)
    if stored.height == 0:
        return options
    maps = stored.group_by("map_id", maintain_order=True).agg(pl.all().first())
    for r in maps.iter_rows(named=True):
        when = f" · {r['created_at']:%Y-%m-%d %H:%M}" if r.get("created_at") is not None else ""
        label = (
            f"stored {r['map_id']} · {r['method']} · {r['target']} vs {r['control']} · span {r['span']}{when}"
        )
        options.append({"label": label, "value": r["map_id"]})
    return options


def driving_tokens(
    db: str,
    run: str,
    target: str | None,
    control: str | None,
    cell: tuple[int, int] | None,
    span: Any = None,
    segment: str | None = None,
) -> Any:
    """The tokens driving the clicked expert (``resonance_tokens`` over ``span``), with a link to its card."""
    if cell is None:
        return message("Click a cell of the map to list the tokens that drive that expert.")
    if not target or not control:
        raise ValueError("pick a target and a control label")
    chosen = span_of(span)
    layer, expert = cell
    df = data.driving_tokens(db, run, layer, expert, target, control, span=chosen, segment=segment)
    within = "" if chosen is None else f" (span {chosen})"
    within += f" ({segment} tokens)" if data.scoped(segment) else ""
    return html.Div(
        [
            html.H4(
                f"Layer {layer}, expert {expert}: tokens that drive it on {target!r} vs {control!r}{within}"
            ),
            dcc.Link("open the expert card", href=expert_href(run, layer, expert), id="resonance-card-link"),
            html.P(
                "Each token as it reads (· a space, ⏎ a newline, → a tab) with its id, most selected on "
                "the target beyond the control rate first.",
                className="wb-muted",
            ),
            table(
                df.drop("token"),
                table_id="resonance-tokens",
                empty="no token occurs often enough in the target prompts",
            ),
        ]
    )
