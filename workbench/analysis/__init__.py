"""Analyses over a run store (METHODS.md §1–§7): each returns a tidy polars DataFrame."""

from __future__ import annotations

from workbench.analysis.specialisation import domain_share_polars, domain_specialisation
from workbench.analysis.stats import benjamini_hochberg, cluster_bootstrap, cluster_permutation_pvalue

__all__ = [
    "benjamini_hochberg",
    "cluster_bootstrap",
    "cluster_permutation_pvalue",
    "domain_share_polars",
    "domain_specialisation",
]
