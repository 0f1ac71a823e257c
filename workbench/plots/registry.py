"""Figure builders by analysis name: ``figure_for("load", df)`` draws what ``run_analysis("load", ...)`` returned.

``FIGURES`` is keyed by the same names as :data:`workbench.analysis.registry.ANALYSES` (a test
keeps the two in step, so a new analysis must come with a figure). Builders that need a choice
(a label, a layer, a mass p ...) pick a sensible default and take it as a keyword option:
``figure_for("specialisation", df, label="code")``. This module does not import the analyses,
so drawing a stored table never pulls in the store or the model stack.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import plotly.graph_objects as go
import polars as pl

from workbench.plots.coactivation import coactivation_matrix, fixed_partners_heatmap, pathways_sankey
from workbench.plots.compare import drift_lines, expert_similarity_heatmap
from workbench.plots.dynamic import dynamic_k_lines
from workbench.plots.health import balance_lines, load_bars, router_confidence_lines, super_expert_strip
from workbench.plots.home import collapse_panels, degradation_scatter, underfitting_bars
from workbench.plots.information import mutual_information_lines, probe_accuracy
from workbench.plots.relevance import agreement_heatmap, esft_heatmap, tcess_heatmap, vocab_lines
from workbench.plots.specialisation import resonance_heatmap, specialisation_heatmap

__all__ = ["FIGURES", "UnknownFigureError", "figure_for", "figure_options"]

FigureBuilder = Callable[..., go.Figure]

FIGURES: dict[str, FigureBuilder] = {
    "load": load_bars,
    "balance": balance_lines,
    "router-confidence": router_confidence_lines,
    "super-experts": super_expert_strip,
    "specialisation": specialisation_heatmap,
    "vocab": vocab_lines,
    "esft": esft_heatmap,
    "tcess": tcess_heatmap,
    "mutual-information": mutual_information_lines,
    "probe": probe_accuracy,
    "collapse": collapse_panels,
    "degradation": degradation_scatter,
    "underfitting": underfitting_bars,
    "coactivation": coactivation_matrix,
    "pathways": pathways_sankey,
    "fixed-partners": fixed_partners_heatmap,
    "dynamic-k": dynamic_k_lines,
    "agreement": agreement_heatmap,
    "drift": drift_lines,
    "expert-similarity": expert_similarity_heatmap,
    "resonance": resonance_heatmap,
}


class UnknownFigureError(KeyError):
    """A figure name that is not registered; the message lists every registered name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def _builder(name: str) -> FigureBuilder:
    try:
        return FIGURES[name]
    except KeyError:
        raise UnknownFigureError(
            f"no figure for analysis {name!r}; available: {', '.join(sorted(FIGURES))}"
        ) from None


def figure_options(name: str) -> dict[str, Any]:
    """The keyword options the figure for ``name`` accepts, with their defaults (e.g. ``{"label": None}``)."""
    params = list(inspect.signature(_builder(name)).parameters.values())[1:]
    return {p.name: p.default for p in params}


def figure_for(name: str, df: pl.DataFrame, **options: Any) -> go.Figure:
    """The figure for analysis ``name`` drawn from its table ``df``.

    ``options`` go to the builder as keywords (``label=``, ``layer=``, ``p=`` ...; see
    :func:`figure_options`). An unknown name raises :class:`UnknownFigureError` listing the
    registered names; an option the builder does not take raises ``TypeError`` listing those
    it does. Missing columns or an absent label/layer raise ``ValueError`` from the builder.
    """
    builder = _builder(name)
    accepted = figure_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"figure {name!r} does not take option(s) {unknown}; it takes: {sorted(accepted) or 'none'}"
        )
    return builder(df, **options)
