"""The one look of every figure: the ``"workbench"`` plotly template, and the text styles pages share.

Every figure the workbench draws — the builders of :mod:`workbench.plots`, the dashboard's own
views, the HTML report — uses the template :data:`TEMPLATE`, registered with plotly under that
name when this module is imported (plotly's global default is left alone, so a notebook's other
figures keep theirs). It is plotly's white template with the pages' font and ink colour, the
workbench palette as the trace colours, and left-aligned hover labels. :func:`themed` applies it
to a figure built elsewhere (the dashboard and the report call it on every figure they show), so a
builder that forgot it still looks like the others.

:data:`FONT`, :data:`INK` and :data:`MUTED` are the text styles the dashboard's stylesheet
(``dashboards/assets/style.css``) and the report's page use too (a test checks the stylesheet),
so figure text and page text match.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import sample_colorscale, unlabel_rgb

__all__ = [
    "FONT", "INK", "MUTED", "PALETTE", "TEMPLATE", "integer_ticks", "label_colours", "readable_on", "themed",
    "workbench_template",
]  # fmt: skip

#: The name the template is registered under in ``plotly.io.templates``.
TEMPLATE = "workbench"
#: The font stack of every page and figure (system fonts only: nothing is fetched from the network).
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif'
#: Body text colour.
INK = "#1d2733"
#: Secondary text (notes, axis ticks).
MUTED = "#57606a"
#: Qualitative colours, cycled by position (labels, experts) so a colour means the same thing
#: across the traces of one figure; also the template's trace colours.
PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
#: At most this many tick labels on an integer axis (layers): more are thinned to a round step.
MAX_INTEGER_TICKS = 16


def workbench_template() -> go.layout.Template:
    """plotly's white template with the workbench font, ink, palette and hover labels."""
    base = pio.templates["plotly_white"]
    template = go.layout.Template(base)
    template.layout.update(
        font={"family": FONT, "color": INK, "size": 13},
        title={"font": {"size": 16, "color": INK}, "x": 0.0, "xref": "paper"},
        colorway=list(PALETTE),
        hoverlabel={"align": "left", "font": {"family": FONT}},
        hovermode="closest",
        legend={"font": {"size": 12}},
    )
    return template


pio.templates[TEMPLATE] = workbench_template()


def themed(fig: go.Figure) -> go.Figure:
    """``fig`` with the workbench template (in place; returned for chaining)."""
    fig.update_layout(template=TEMPLATE)
    return fig


def integer_ticks(values: Iterable[Any]) -> dict[str, Any]:
    """Axis settings that put ticks only on whole numbers, for an axis of ``values`` (layer indices).

    plotly's automatic ticks put 0.5 between two layers. Up to :data:`MAX_INTEGER_TICKS` distinct
    values get a tick each (the model's own layer indices, gaps included); more get a tick every
    ``step`` whole numbers, ``step`` the smallest of 1, 2, 5, 10, 20, 50 … that keeps at most that
    many ticks. No values: ``{}`` (plotly's default).
    """
    present = sorted({int(v) for v in values if v is not None and not _is_nan(v)})
    if not present:
        return {}
    if len(present) <= MAX_INTEGER_TICKS:
        return {"tickmode": "array", "tickvals": present, "ticktext": [str(v) for v in present]}
    span = present[-1] - present[0]
    step = 1
    while span / step > MAX_INTEGER_TICKS:
        step = _next_round(step)
    return {"tickmode": "linear", "tick0": present[0] - present[0] % step, "dtick": step, "tickformat": "d"}


def _luminance(colour: str) -> float:
    """WCAG relative luminance (0 black … 1 white) of ``#rrggbb`` or ``rgb(r, g, b)``."""
    if colour.startswith("#"):
        channels = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    else:
        channels = [int(c) for c in unlabel_rgb(colour)]
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def readable_on(fill: str) -> str:
    """The text colour, :data:`INK` or white, with the higher WCAG contrast on a ``fill`` background."""
    lum = _luminance(fill)
    on_ink = (lum + 0.05) / (_luminance(INK) + 0.05)
    on_white = 1.05 / (lum + 0.05)
    return INK if on_ink >= on_white else "white"


def label_colours(values: Iterable[float], colorscale: str, cmin: float, cmax: float) -> list[str]:
    """Per value, the text colour readable on the colour ``colorscale`` gives it between ``cmin`` and ``cmax``.

    For labels drawn on top of markers or cells coloured by a scale (a dark node needs white text).
    """
    span = cmax - cmin if cmax > cmin else 1.0
    where = np.clip((np.asarray(list(values), dtype=float) - cmin) / span, 0.0, 1.0)
    return [readable_on(c) for c in sample_colorscale(colorscale, where.tolist())]


def _next_round(step: int) -> int:
    """The round step after ``step`` in 1, 2, 5, 10, 20, 50, …"""
    lead = step // 10 ** int(math.log10(step))
    return step * 5 // 2 if lead == 2 else step * 2


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
