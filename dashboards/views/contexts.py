"""The expert card's example contexts (Neuronpedia-style): where an expert fires hardest, a random
sample of where it fires at all, and the label mix of both next to all its selections.

The data is :func:`workbench.analysis.tokens.expert_contexts`, computed in the dashboard's
background pool (a scan of the layer's routing rows). Each context is a window of decoded text with
the token highlighted; its hover names the token exactly (id, raw symbol, bytes), and its prompt
number links to that prompt on the routing page.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from dash import dcc, html

from dashboards import data
from dashboards.components import message, query_string

__all__ = ["CONTEXTS_SHOWN", "SEED", "WINDOW", "contexts_section", "label_mix_table"]

CONTEXTS_SHOWN = 10
"""Top contexts listed, and contexts in the random sample."""
WINDOW = 8
"""Tokens of decoded text shown either side of a context's token."""
SEED = 0
"""The sample's seed: the card shows the same sample on every visit (until the store changes)."""


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.0f}%"


def label_mix_table(mix: pl.DataFrame, n_top: int, n_sample: int, n_all: int) -> html.Table:
    """Label × (top, sample, all selections): counts with shares, so a skewed top list shows as such."""
    head = html.Tr(
        [
            html.Th("label"),
            html.Th(f"top {n_top}"),
            html.Th(f"sample of {n_sample}"),
            html.Th(f"all {n_all:,}"),
        ]
    )
    rows = [
        html.Tr(
            [
                html.Td(str(r["label"])),
                html.Td(f"{r['n_top']} ({_pct(r['share_top'])})"),
                html.Td(f"{r['n_sample']} ({_pct(r['share_sample'])})"),
                html.Td(f"{r['n_all']:,} ({_pct(r['share_all'])})"),
            ]
        )
        for r in mix.iter_rows(named=True)
    ]
    return html.Table(
        [html.Thead(head), html.Tbody(rows)], className="wb-simple-table", id="expert-context-mix"
    )


def _context_rows(run: str, layer: int, frame: pl.DataFrame, by_weight: bool) -> html.Table:
    """One row per context: rank, gate weight, label, prompt link and the window with the token marked."""
    rows = []
    for r in frame.iter_rows(named=True):
        label = r["label"]
        href = "/routing" + query_string(run=run, label=label, prompt=r["prompt_id"], layer=layer)
        weight = f"{r['weight']:.3f}" if by_weight and r["weight"] is not None else "–"
        rows.append(
            html.Tr(
                [
                    html.Td(str(r["rank"])),
                    html.Td(weight),
                    html.Td("(no label)" if label is None else str(label)),
                    html.Td(dcc.Link(f"#{r['prompt_id']}:{r['position']}", href=href)),
                    html.Td(
                        [
                            html.Span(r["before"] or "", className="wb-ctx-side"),
                            html.Mark(r["text"] or "", title=r["hover"] or "", className="wb-ctx-token"),
                            html.Span(r["after"] or "", className="wb-ctx-side"),
                        ],
                        className="wb-ctx",
                    ),
                ]
            )
        )
    head = html.Tr(
        [html.Th("#"), html.Th("weight"), html.Th("label"), html.Th("prompt:pos"), html.Th("context")]
    )
    return html.Table([html.Thead(head), html.Tbody(rows)], className="wb-simple-table wb-contexts")


def contexts_section(db: str, run: str, layer: int, expert: int) -> Any:
    """The card's "Example contexts" section (or a message when the expert is never selected at the layer)."""
    found = data.expert_contexts(db, run, layer, expert, n=CONTEXTS_SHOWN, window=WINDOW, seed=SEED)
    if found.n_selected == 0:
        return message(f"Never selected at layer {layer}: no contexts to show.")
    order = (
        "with the highest gate weight"
        if found.by_weight
        else "first by prompt and position (the run stores no gate weights, so none is ranked)"
    )
    intro = (
        f"The {found.top.height} contexts where it was selected {order}, and a random sample of "
        f"{found.sample.height} of all its {found.n_selected:,} selections at this layer (seed {found.seed}), "
        f"so you can see whether the top ones are typical. {WINDOW} tokens of text either side; the token "
        "is marked (hover: its id and bytes); · is a space, ⏎ a newline, → a tab."
    )
    return html.Div(
        [
            html.P(intro, className="wb-muted", id="expert-contexts-note"),
            label_mix_table(found.labels, found.top.height, found.sample.height, found.n_selected),
            html.H5("Top contexts by gate weight" if found.by_weight else "First contexts"),
            html.Div(_context_rows(run, layer, found.top, found.by_weight), id="expert-contexts-top"),
            html.H5("Random sample of its contexts"),
            html.Div(_context_rows(run, layer, found.sample, found.by_weight), id="expert-contexts-sample"),
        ]
    )
