"""Analyses over a run store (docs/methods.md §1–§7): each returns a tidy polars DataFrame.

The names below load on first use (PEP 562), so a process that needs one analysis, or only the
summary builders, does not pay for scikit-learn and scipy: ``moe-workbench capture`` imports
:mod:`workbench.analysis.summaries` to register the summary parts it builds when a run completes.
Importing this package registers them too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# the function, bound over the submodule of the same name that importing summaries binds here
from workbench.analysis.coactivation import coactivation

# importing it registers the logits, pairs and transitions parts of the store's per-prompt summaries
from workbench.analysis.summaries import build_logit_summaries

if TYPE_CHECKING:  # the same names, for type checkers (at run time they load in __getattr__)
    from workbench.analysis.agreement import scorer_agreement
    from workbench.analysis.coactivation import fixed_partners, pathways
    from workbench.analysis.compare import routing_drift
    from workbench.analysis.dynamic import dynamic_k, k_at_p
    from workbench.analysis.health import expert_load, load_balance, router_confidence, super_experts
    from workbench.analysis.home import expert_collapse, expert_degradation, underfitting
    from workbench.analysis.information import routing_mutual_information, routing_probe
    from workbench.analysis.relevance import esft_scores, expert_top_tokens, tcess, vocab_specialisation
    from workbench.analysis.scores import router_scores
    from workbench.analysis.specialisation import domain_share_polars, domain_specialisation
    from workbench.analysis.stats import benjamini_hochberg, cluster_bootstrap, cluster_permutation_pvalue

#: where each exported name lives (its submodule of workbench.analysis)
_HOMES: dict[str, str] = {
    "scorer_agreement": "agreement",
    **dict.fromkeys(("fixed_partners", "pathways"), "coactivation"),
    "routing_drift": "compare",
    **dict.fromkeys(("dynamic_k", "k_at_p"), "dynamic"),
    **dict.fromkeys(("expert_load", "load_balance", "router_confidence", "super_experts"), "health"),
    **dict.fromkeys(("expert_collapse", "expert_degradation", "underfitting"), "home"),
    **dict.fromkeys(("routing_mutual_information", "routing_probe"), "information"),
    **dict.fromkeys(("esft_scores", "expert_top_tokens", "tcess", "vocab_specialisation"), "relevance"),
    "router_scores": "scores",
    **dict.fromkeys(("domain_share_polars", "domain_specialisation"), "specialisation"),
    **dict.fromkeys(("benjamini_hochberg", "cluster_bootstrap", "cluster_permutation_pvalue"), "stats"),
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'workbench.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"workbench.analysis.{home}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
