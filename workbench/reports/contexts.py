"""The report's "Example contexts" part: for the strongest specialists, where they fire, as readable text.

A specialisation finding says "label code uses layer 3 expert 5 more than the other labels do"; a
reader then wants to see *what* it fires on. For the :data:`EXPERTS_SHOWN` strongest specialised
(layer, expert) cells of the specialisation section (ranked by log-odds, as everywhere), this lists
the top contexts by gate weight and a seeded random sample of all its contexts, each a window of
decoded text with the token marked (its id and bytes on hover), and the label mix of both sets next
to all its selections (:func:`workbench.analysis.tokens.expert_contexts`).
"""

from __future__ import annotations

import polars as pl

from workbench.analysis.specialisation import specialised_cells
from workbench.analysis.tokens import ExpertContexts, expert_contexts
from workbench.reports import html as H
from workbench.store import Store

__all__ = ["CONTEXTS_ID", "EXPERTS_SHOWN", "PER_EXPERT", "specialist_contexts"]

EXPERTS_SHOWN = 3
"""Specialised experts given example contexts (the strongest first)."""
PER_EXPERT = 5
"""Top contexts, and sampled contexts, listed per expert."""
WINDOW = 8
"""Tokens of text either side of a context's token."""
CONTEXTS_ID = "example-contexts"
"""The element id of the part (a link target)."""


_STYLE = (
    "<style>table.contexts td.ctx { font-family: monospace; overflow-wrap: anywhere; } "
    "table.contexts .ctx-side { color: #57606a; } "
    "table.contexts mark { background: #ffe08a; font-weight: 600; padding: 0 2px; }</style>"
)
"""The part's own few rules (kept here, so the report's shared stylesheet stays as it is)."""


def _rows(found: pl.DataFrame) -> str:
    cells = []
    for r in found.iter_rows(named=True):
        weight = "—" if r["weight"] is None else f"{r['weight']:.3f}"
        context = (
            f'<span class="ctx-side">{H.esc(r["before"] or "")}</span>'
            f'<mark title="{H.esc(r["hover"] or "")}">{H.esc(r["text"] or "")}</mark>'
            f'<span class="ctx-side">{H.esc(r["after"] or "")}</span>'
        )
        label = "(no label)" if r["label"] is None else r["label"]
        cells.append(
            f'<tr><td class="num">{weight}</td><td>{H.esc(label)}</td>'
            f'<td class="num">#{r["prompt_id"]}:{r["position"]}</td><td class="ctx">{context}</td></tr>'
        )
    head = "<tr><th>weight</th><th>label</th><th>prompt:pos</th><th>context</th></tr>"
    return f'<table class="contexts">{head}{"".join(cells)}</table>'


def _expert(found: ExpertContexts, label: str) -> str:
    mix = found.labels.rename({"n_top": "top", "n_sample": "sample", "n_all": "all selections"}).select(
        "label", "top", "sample", "all selections"
    )
    order = "by gate weight" if found.by_weight else "first by prompt and position (no gate weights stored)"
    return (
        f"<h3>Layer {found.layer} · expert {found.expert} (specialised to {H.esc(label)})</h3>"
        f"<p>Top {found.top.height} contexts {order}, and a random sample of {found.sample.height} of its "
        f"{found.n_selected:,} selections at this layer (seed {found.seed}), with their label mix:</p>"
        f"{H.table(mix, max_rows=20)}<h4>Top contexts</h4>{_rows(found.top)}"
        f"<h4>Random sample</h4>{_rows(found.sample)}"
    )


def specialist_contexts(store: Store, run_id: str, specialisation: pl.DataFrame | None) -> str:
    """The HTML part for the run (empty when the specialisation section found no specialised expert)."""
    if specialisation is None or specialisation.height == 0:
        return ""
    cells = specialised_cells(specialisation).unique(["layer", "expert"], keep="first", maintain_order=True)
    if cells.height == 0:
        return ""
    parts = [
        f'<section id="{CONTEXTS_ID}">{_STYLE}<h2>Example contexts of the strongest specialists</h2>'
        '<p class="summary">What the most specialised experts fire on, as text: · is a space, ⏎ a newline, '
        "→ a tab; hover a marked token for its id and bytes. The random sample shows whether the top contexts "
        "are typical.</p>"
    ]
    for r in cells.head(EXPERTS_SHOWN).iter_rows(named=True):
        found = expert_contexts(
            store, run_id, int(r["layer"]), int(r["expert"]), n=PER_EXPERT, window=WINDOW, seed=0
        )
        parts.append(_expert(found, str(r["label"])))
    parts.append("</section>")
    return "\n".join(parts)
