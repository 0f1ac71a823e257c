"""Figures from analysis tables: ``plots`` turn tables into figures and never query the store."""

from workbench.plots.figures import (
    coactivation_matrix,
    drift_lines,
    load_bars,
    probe_accuracy,
    specialisation_heatmap,
)

__all__ = [
    "coactivation_matrix",
    "drift_lines",
    "load_bars",
    "probe_accuracy",
    "specialisation_heatmap",
]
