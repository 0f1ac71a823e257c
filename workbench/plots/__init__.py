"""Figures from analysis tables: ``plots`` turn tables into figures and never query the store.

One builder per catalogued analysis, in themed modules (``health``, ``specialisation``,
``relevance``, ``information``, ``home``, ``coactivation``, ``dynamic``, ``compare``; shared
helpers in ``common``). This floor knows no analysis names: each analysis' catalog entry names its
builder, and :func:`workbench.catalog.figure_for` picks the builder by analysis name.
"""

from workbench.plots.coactivation import coactivation_matrix, fixed_partners_heatmap, pathways_sankey
from workbench.plots.compare import drift_lines, expert_similarity_heatmap
from workbench.plots.dynamic import dynamic_k_lines
from workbench.plots.health import balance_lines, load_bars, router_confidence_lines, super_expert_strip
from workbench.plots.home import collapse_panels, degradation_scatter, underfitting_bars
from workbench.plots.information import mutual_information_lines, probe_accuracy
from workbench.plots.relevance import agreement_heatmap, esft_heatmap, tcess_heatmap, vocab_lines
from workbench.plots.specialisation import resonance_heatmap, specialisation_heatmap, stored_resonance_heatmap

__all__ = [
    "agreement_heatmap",
    "balance_lines",
    "coactivation_matrix",
    "collapse_panels",
    "degradation_scatter",
    "drift_lines",
    "dynamic_k_lines",
    "esft_heatmap",
    "expert_similarity_heatmap",
    "fixed_partners_heatmap",
    "load_bars",
    "mutual_information_lines",
    "pathways_sankey",
    "probe_accuracy",
    "resonance_heatmap",
    "router_confidence_lines",
    "specialisation_heatmap",
    "stored_resonance_heatmap",
    "super_expert_strip",
    "tcess_heatmap",
    "underfitting_bars",
    "vocab_lines",
]
