"""Compatibility module: the first five builders used to live here; they now sit in themed modules.

Import from :mod:`workbench.plots` instead.
"""

from workbench.plots.coactivation import coactivation_matrix
from workbench.plots.compare import drift_lines
from workbench.plots.health import load_bars
from workbench.plots.information import probe_accuracy
from workbench.plots.specialisation import specialisation_heatmap

__all__ = [
    "coactivation_matrix",
    "drift_lines",
    "load_bars",
    "probe_accuracy",
    "specialisation_heatmap",
]
