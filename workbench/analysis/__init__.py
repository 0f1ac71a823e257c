"""Analyses over a run store (docs/methods.md §1–§7): each returns a tidy polars DataFrame."""

from __future__ import annotations

from workbench.analysis.agreement import scorer_agreement
from workbench.analysis.coactivation import coactivation, fixed_partners, pathways
from workbench.analysis.compare import routing_drift
from workbench.analysis.dynamic import dynamic_k, k_at_p
from workbench.analysis.health import expert_load, load_balance, router_confidence, super_experts
from workbench.analysis.home import expert_collapse, expert_degradation, underfitting
from workbench.analysis.information import routing_mutual_information, routing_probe
from workbench.analysis.relevance import esft_scores, expert_top_tokens, tcess, vocab_specialisation
from workbench.analysis.scores import router_scores
from workbench.analysis.specialisation import domain_share_polars, domain_specialisation
from workbench.analysis.stats import benjamini_hochberg, cluster_bootstrap, cluster_permutation_pvalue

# importing it registers the logits part of the store's per-prompt summaries (workbench.store.summaries)
from workbench.analysis.summaries import build_logit_summaries

__all__ = [
    "benjamini_hochberg",
    "build_logit_summaries",
    "cluster_bootstrap",
    "cluster_permutation_pvalue",
    "coactivation",
    "domain_share_polars",
    "domain_specialisation",
    "dynamic_k",
    "esft_scores",
    "expert_collapse",
    "expert_degradation",
    "expert_load",
    "expert_top_tokens",
    "fixed_partners",
    "k_at_p",
    "load_balance",
    "pathways",
    "router_confidence",
    "router_scores",
    "routing_drift",
    "routing_mutual_information",
    "routing_probe",
    "scorer_agreement",
    "super_experts",
    "tcess",
    "underfitting",
    "vocab_specialisation",
]
