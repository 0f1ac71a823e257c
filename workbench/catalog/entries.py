"""The analysis catalog: one entry per analysis, the only place an analysis' name is declared.

Each :class:`~workbench.catalog.spec.AnalysisSpec` ties the name to its function, its
docs/methods.md chapter, its summary, what the run must hold, its figure, its finding sentences,
the report's table order and the dashboard's prewarm. Everything else derives from :data:`ENTRIES`:
``run_analysis`` and ``moe-workbench analyse`` (CLI), ``session.run(R).<name>()`` (notebook), the
report's sections, ``figure_for``, the dashboard's prewarm, the tests (parametrised over the
catalog) and the benchmark. The order here is the order of ``analyse --list`` and of the report.

Adding an analysis: see CONTRIBUTING.md ("How to add an analysis").
"""

from __future__ import annotations

from workbench.analysis.agreement import scorer_agreement
from workbench.analysis.coactivation import coactivation, fixed_partners, pathways
from workbench.analysis.compare import routing_drift
from workbench.analysis.dynamic import dynamic_k
from workbench.analysis.health import expert_load, load_balance, router_confidence, super_experts
from workbench.analysis.home import expert_collapse, expert_degradation, underfitting
from workbench.analysis.information import routing_mutual_information, routing_probe
from workbench.analysis.relevance import esft_scores, tcess, vocab_specialisation
from workbench.analysis.resonance import resonance
from workbench.analysis.specialisation import domain_specialisation
from workbench.catalog import findings_structure as structure
from workbench.catalog import findings_usage as usage
from workbench.catalog.spec import AnalysisSpec, Deferred, contrast_pair, default_options, every_row
from workbench.plots.coactivation import coactivation_matrix, fixed_partners_heatmap, pathways_sankey
from workbench.plots.compare import drift_lines, expert_similarity_heatmap
from workbench.plots.dynamic import dynamic_k_lines
from workbench.plots.health import balance_lines, load_bars, router_confidence_lines, super_expert_strip
from workbench.plots.home import collapse_panels, degradation_scatter, underfitting_bars
from workbench.plots.information import mutual_information_lines, probe_accuracy
from workbench.plots.relevance import agreement_heatmap, esft_heatmap, tcess_heatmap, vocab_lines
from workbench.plots.specialisation import resonance_heatmap, specialisation_heatmap

__all__ = ["ENTRIES"]

ENTRIES: tuple[AnalysisSpec, ...] = (
    # -- §1 load and router health --------------------------------------------------------------
    AnalysisSpec(
        "load",
        expert_load,
        "§1",
        "Per-expert load share with prompt-bootstrap CI; dead experts.",
        figure=load_bars,
        findings=usage.load,
        table_order=("f", True),
        prewarm=default_options,
    ),
    AnalysisSpec(
        "balance",
        load_balance,
        "§1",
        "Per-layer load balance: CV, entropy, dead experts.",
        figure=balance_lines,
        findings=usage.balance,
        prewarm=default_options,
    ),
    AnalysisSpec(
        "router-confidence",
        router_confidence,
        "§1",
        "Router entropy, margin and top-k stability under noise.",
        figure=router_confidence_lines,
        findings=usage.router_confidence,
        needs=("routing", "logits"),
    ),
    AnalysisSpec(
        "super-experts",
        super_experts,
        "§1",
        "Experts with extreme output-norm outliers (super experts).",
        figure=super_expert_strip,
        findings=usage.super_experts,
        needs=("routing", "expert_stats"),
        table_order=("max_out_norm", True),
        prewarm=default_options,
    ),
    # -- §2 specialisation and relevance --------------------------------------------------------
    AnalysisSpec(
        "specialisation",
        domain_specialisation,
        "§2",
        "Which experts each label over-uses vs the other labels: share, specificity, log-odds (CI), one-sided "
        "permutation p, BH q, specialised; lift over uniform as context.",
        figure=specialisation_heatmap,
        findings=usage.specialisation,
        table_order=("log_odds", True),
        figure_per_label=True,
        prewarm=default_options,
    ),
    AnalysisSpec(
        "vocab",
        vocab_specialisation,
        "§2",
        "Vocabulary specialisation of each expert's top-1 tokens.",
        figure=vocab_lines,
        findings=usage.vocab,
        prewarm=default_options,
    ),
    AnalysisSpec(
        "esft",
        esft_scores,
        "§2",
        "ESFT gate score and token-selection ratio with expert sets.",
        figure=esft_heatmap,
        findings=usage.esft,
        needs=("routing", "weights"),
        table_order=("gs", True),
    ),
    AnalysisSpec(
        "tcess",
        tcess,
        "§2",
        "Task-conditioned expected selection score (TCESS): mean router probability per label.",
        figure=tcess_heatmap,
        findings=usage.tcess,
        needs=("routing", "logits"),
        table_order=("tcess", True),
    ),
    AnalysisSpec(
        "mutual-information",
        routing_mutual_information,
        "§2",
        "Mutual information between routing and label.",
        figure=mutual_information_lines,
        findings=usage.mutual_information,
    ),
    AnalysisSpec(
        "probe",
        routing_probe,
        "§2",
        "Cross-validated label probe on routing features.",
        figure=probe_accuracy,
        findings=usage.probe,
    ),
    # -- §3 HoME --------------------------------------------------------------------------------
    AnalysisSpec(
        "collapse",
        expert_collapse,
        "§3",
        "HoME-style collapse: hidden-unit zero fraction and output norms.",
        figure=collapse_panels,
        findings=usage.collapse,
        needs=("routing", "expert_stats"),
        table_order=("mean_zero_frac", True),
        prewarm=default_options,
    ),
    AnalysisSpec(
        "degradation",
        expert_degradation,
        "§3",
        "HoME-style degradation: experts used by one label.",
        figure=degradation_scatter,
        findings=usage.degradation,
        table_order=("dominant_share", True),
        prewarm=default_options,
    ),
    AnalysisSpec(
        "underfitting",
        underfitting,
        "§3",
        "HoME-style underfitting of specialist vs shared experts.",
        figure=underfitting_bars,
        findings=usage.underfitting,
        needs=("routing", "weights"),
        prewarm=default_options,
    ),
    # -- §4 co-activation -----------------------------------------------------------------------
    AnalysisSpec(
        "coactivation",
        coactivation,
        "§4",
        "Co-activation over all expert pairs within a layer.",
        figure=coactivation_matrix,
        findings=structure.coactivation,
        table_order=("lift", True),
        prewarm=default_options,
    ),
    AnalysisSpec(
        "pathways",
        pathways,
        "§4",
        "Most frequent cross-layer expert pathways.",
        figure=pathways_sankey,
        findings=structure.pathways,
        table_order=("p", True),
        prewarm=every_row,
    ),
    AnalysisSpec(
        "fixed-partners",
        fixed_partners,
        "§4",
        "Experts that nearly always co-activate (fixed partners).",
        figure=fixed_partners_heatmap,
        findings=structure.fixed_partners,
    ),
    # -- §6 dynamic routing, §2 scorer agreement, §5 resonance, §7 comparison -------------------
    AnalysisSpec(
        "dynamic-k",
        dynamic_k,
        "§6",
        "Dynamic routing: k needed for mass p vs token NLL.",
        figure=dynamic_k_lines,
        findings=structure.dynamic_k,
        needs=("routing", "logits"),
    ),
    AnalysisSpec(
        "agreement",
        scorer_agreement,
        "§2",
        "Spearman rank agreement of the specialisation scorers (lift, ESFT GS/TSR, TCESS) per label.",
        figure=agreement_heatmap,
        findings=structure.agreement,
        needs=("routing", "weights"),
        prewarm=default_options,
    ),
    AnalysisSpec(
        "resonance",
        resonance,
        "§5",
        "Resonance map of a contrast set (target vs control label): rate difference (rd) and fTRI with CI, p, q.",
        figure=resonance_heatmap,
        findings=structure.resonance,
        needs=("routing", "contrast"),
        prewarm=contrast_pair,
    ),
    AnalysisSpec(
        "drift",
        routing_drift,
        "§7",
        "Routing drift: per-layer top-k overlap between two captures of the same prompts.",
        figure=drift_lines,
        findings=structure.drift,
        needs=("routing", "compare"),
    ),
    AnalysisSpec(
        "expert-similarity",
        # runs the model: imported (with torch) only when it is run or its options are read
        Deferred("workbench.interventions.expert_similarity:expert_similarity"),
        "§7",
        "Expert similarity: weight cosine and output angular similarity of expert pairs; merge candidates.",
        figure=expert_similarity_heatmap,
        findings=structure.expert_similarity,
        needs=("routing", "model"),
        table_order=("output_angular", True),
    ),
)
