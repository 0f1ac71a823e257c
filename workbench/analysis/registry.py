"""A typed registry of the analyses, by CLI name (lm-evaluation-harness style).

``ANALYSES`` maps a short name (``specialisation``, ``drift`` ...) to an :class:`AnalysisSpec`
describing the function, its docs/methods.md section, a one-line summary and what the run must
hold (``routing`` always; ``logits`` = stored router logits, ``expert_stats`` = captured with
``--expert-stats``, ``compare`` = a second run to compare against, ``model`` = the model the run
was captured from, loaded, because the analysis runs it — expert output similarity).
:func:`run_analysis` dispatches by name and returns the analysis' tidy polars DataFrame.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.analysis.agreement import scorer_agreement
from workbench.analysis.coactivation import coactivation, fixed_partners, pathways
from workbench.analysis.compare import routing_drift
from workbench.analysis.dynamic import dynamic_k
from workbench.analysis.expert_similarity import expert_similarity
from workbench.analysis.health import expert_load, load_balance, router_confidence, super_experts
from workbench.analysis.home import expert_collapse, expert_degradation, underfitting
from workbench.analysis.information import routing_mutual_information, routing_probe
from workbench.analysis.relevance import esft_scores, tcess, vocab_specialisation
from workbench.analysis.resonance import resonance
from workbench.analysis.specialisation import domain_specialisation

if TYPE_CHECKING:
    import polars as pl

    from workbench.store import Store

__all__ = [
    "ANALYSES",
    "AnalysisSpec",
    "UnknownAnalysisError",
    "analysis_options",
    "get_analysis",
    "list_options",
    "run_analysis",
]


class UnknownAnalysisError(KeyError):
    """An analysis name that is not registered; the message lists every registered name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class AnalysisSpec:
    """One registered analysis: ``fn(store, run_id, **kwargs)`` (or ``fn(store, run_a, run_b, ...)``)."""

    name: str
    fn: Callable[..., pl.DataFrame]
    section: str
    summary: str
    needs: tuple[str, ...] = ("routing",)

    @property
    def is_compare(self) -> bool:
        return "compare" in self.needs

    @property
    def needs_model(self) -> bool:
        return "model" in self.needs


_SPECS: tuple[AnalysisSpec, ...] = (
    AnalysisSpec("load", expert_load, "§1", "Per-expert load share with prompt-bootstrap CI; dead experts."),
    AnalysisSpec("balance", load_balance, "§1", "Per-layer load balance: CV, entropy, dead experts."),
    AnalysisSpec(
        "router-confidence",
        router_confidence,
        "§1",
        "Router entropy, margin and top-k stability under noise.",
        ("routing", "logits"),
    ),
    AnalysisSpec(
        "super-experts",
        super_experts,
        "§1",
        "Experts with extreme output-norm outliers (super experts).",
        ("routing", "expert_stats"),
    ),
    AnalysisSpec(
        "specialisation",
        domain_specialisation,
        "§2",
        "Which experts each label over-uses vs the other labels: share, specificity, log-odds (CI), one-sided "
        "permutation p, BH q, specialised; lift over uniform as context.",
    ),
    AnalysisSpec(
        "vocab", vocab_specialisation, "§2", "Vocabulary specialisation of each expert's top-1 tokens."
    ),
    AnalysisSpec("esft", esft_scores, "§2", "ESFT gate score and token-selection ratio with expert sets."),
    AnalysisSpec(
        "tcess",
        tcess,
        "§2",
        "Task-conditioned expected selection score (TCESS): mean router probability per label.",
        ("routing", "logits"),
    ),
    AnalysisSpec(
        "mutual-information",
        routing_mutual_information,
        "§2",
        "Mutual information between routing and label.",
    ),
    AnalysisSpec("probe", routing_probe, "§2", "Cross-validated label probe on routing features."),
    AnalysisSpec(
        "collapse",
        expert_collapse,
        "§3",
        "HoME-style collapse: hidden-unit zero fraction and output norms.",
        ("routing", "expert_stats"),
    ),
    AnalysisSpec(
        "degradation", expert_degradation, "§3", "HoME-style degradation: experts used by one label."
    ),
    AnalysisSpec(
        "underfitting", underfitting, "§3", "HoME-style underfitting of specialist vs shared experts."
    ),
    AnalysisSpec("coactivation", coactivation, "§4", "Co-activation over all expert pairs within a layer."),
    AnalysisSpec("pathways", pathways, "§4", "Most frequent cross-layer expert pathways."),
    AnalysisSpec(
        "fixed-partners", fixed_partners, "§4", "Experts that nearly always co-activate (fixed partners)."
    ),
    AnalysisSpec(
        "dynamic-k",
        dynamic_k,
        "§6",
        "Dynamic routing: k needed for mass p vs token NLL.",
        ("routing", "logits"),
    ),
    AnalysisSpec(
        "agreement",
        scorer_agreement,
        "§2",
        "Spearman rank agreement of the specialisation scorers (lift, ESFT GS/TSR, TCESS) per label.",
    ),
    AnalysisSpec(
        "resonance",
        resonance,
        "§5",
        "Resonance map of a contrast set (target vs control label): rate difference (rd) and fTRI with CI, p, q.",
        ("routing", "contrast"),
    ),
    AnalysisSpec(
        "drift",
        routing_drift,
        "§7",
        "Routing drift: per-layer top-k overlap between two captures of the same prompts.",
        ("routing", "compare"),
    ),
    AnalysisSpec(
        "expert-similarity",
        expert_similarity,
        "§7",
        "Expert similarity: weight cosine and output angular similarity of expert pairs; merge candidates.",
        ("routing", "model"),
    ),
)

ANALYSES: dict[str, AnalysisSpec] = {spec.name: spec for spec in _SPECS}


def get_analysis(name: str) -> AnalysisSpec:
    """The spec registered as ``name``; raises :class:`UnknownAnalysisError` listing every name."""
    try:
        return ANALYSES[name]
    except KeyError:
        raise UnknownAnalysisError(
            f"unknown analysis {name!r}; available: {', '.join(sorted(ANALYSES))}"
        ) from None


def _option_params(name: str) -> list[inspect.Parameter]:
    spec = get_analysis(name)
    params = list(inspect.signature(spec.fn).parameters.values())[3 if spec.is_compare else 2 :]
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in params if p.kind in kinds and p.name != "model"]


def analysis_options(name: str) -> dict[str, Any]:
    """The keyword options of analysis ``name`` with their defaults (``n_perm``, ``seed``, ``layers`` ...).

    These are what ``moe-workbench analyse NAME --set KEY=VALUE`` may change: every parameter
    after the store and the run id(s), except ``model`` (given by ``--model``).
    """
    return {p.name: None if p.default is inspect.Parameter.empty else p.default for p in _option_params(name)}


def list_options(name: str) -> set[str]:
    """The options of :func:`analysis_options` that take several values (``layers``, ``p_levels`` ...)."""
    many = ("Iterable[", "Sequence[", "list[", "tuple[")
    return {p.name for p in _option_params(name) if any(m in str(p.annotation) for m in many)}


def run_analysis(
    name: str,
    store: Store,
    run_id: str,
    compare: str | None = None,
    model: Any = None,
    **kwargs: Any,
) -> pl.DataFrame:
    """Run analysis ``name`` on ``run_id`` and return its tidy table.

    ``compare`` is the second run for comparison analyses (``needs`` has ``"compare"``).
    ``model`` is the loaded model (``workbench.models.loading.load_model``) for analyses whose
    ``needs`` has ``"model"``; it is passed on as ``model=`` and ignored by the others, so a
    caller holding a model may pass it to every analysis. Other keyword arguments go to the
    analysis function.
    """
    spec = get_analysis(name)
    if spec.needs_model:
        if model is None:
            raise ValueError(
                f"analysis {name!r} needs the model: give --model M on the CLI (model=... in Python), "
                "the model the run was captured from"
            )
        kwargs["model"] = model
    if spec.is_compare:
        if compare is None:
            raise ValueError(
                f"analysis {name!r} compares two runs: give the second run (--compare RUN2 on the CLI)"
            )
        return spec.fn(store, run_id, compare, **kwargs)
    if compare is not None:
        raise ValueError(
            f"analysis {name!r} reads one run; --compare is only for: {', '.join(_compare_names())}"
        )
    return spec.fn(store, run_id, **kwargs)


def _compare_names() -> list[str]:
    return sorted(n for n, s in ANALYSES.items() if s.is_compare)
