"""Named read queries over the store's tables, one small function per question an analysis asks.

Why: the analyses (``workbench.analysis``) compute statistics; which rows of ``routing``,
``prompts``, ``tokens``, ``layers`` and ``expert_stats`` they read, and how DuckDB groups them,
is the store's business. Keeping that SQL here means a schema change touches one module, each
query has a name that says what it fetches, and each is tested on its own
(tests/test_store_queries.py). Every function takes the :class:`~workbench.store.Store`, the
run id(s) and filters, and returns a polars DataFrame (or a count / a label list where that
is the whole answer).

Rules kept by every query: user values (run ids, labels, layers, experts, span bounds) reach
SQL only as ``?`` parameters; the few identifiers spliced into SQL (the layer column of a
filter) come from the fixed :data:`~workbench.store.queries.filters.LAYER_COLUMNS` allow-list. ``layers`` is ``None`` for
every layer of the run and an empty list for none. "Routed" experts are ids ``< n_experts``
of the row's layer (ids ``>= n_experts`` are shared pseudo-experts); "labelled" prompts are
those whose ``label`` is not NULL. No query checks that the run exists: callers that need
``UnknownRunError`` call ``store.layers(run_id)`` first. Rows come in no particular order
unless the docstring gives one.
"""

from __future__ import annotations

from workbench.store.queries.batches import BATCH_TABLES, batch_tables
from workbench.store.queries.contexts import (
    expert_contexts,
    first_symbols,
    marked_symbols,
    token_windows,
)
from workbench.store.queries.expert_stats import (
    expert_norm_maxima,
    expert_stats_means,
    n_expert_stats_rows,
    shared_norm_mass,
    shared_norm_totals,
)
from workbench.store.queries.filters import SPAN_HELP, TokenSpan
from workbench.store.queries.labels import (
    contrast_prompts,
    distinct_labels,
    pair_first_labels,
    paired_labels,
    prompt_labels,
    prompt_token_counts,
    token_nll,
    token_strings,
)
from workbench.store.queries.routing import (
    has_gate_weights,
    label_gate_sums,
    label_token_counts,
    label_token_totals,
    labelled_gate_mass,
    labelled_selections,
    matched_overlap,
    n_logit_rows,
    pair_counts,
    prompt_expert_counts,
    selections_per_layer,
    selections_per_prompt,
    tokens_per_layer,
    tokens_per_prompt,
    top1_label_counts,
    top1_token_counts,
    top1_token_maxima,
    top1_token_table,
    top1_transitions,
)
from workbench.store.queries.spans import span_selections, span_token_counts, span_token_selections
from workbench.store.queries.summary import (
    confidence_sums,
    dynamic_k_cells,
    dynamic_k_levels,
    dynamic_k_nll,
    label_logit_rows,
    label_score_sums,
    summary_pair_counts,
    summary_top1_token_counts,
    summary_top1_token_maxima,
    summary_transitions,
)

__all__ = [
    "BATCH_TABLES",
    "SPAN_HELP",
    "TokenSpan",
    "batch_tables",
    "confidence_sums",
    "contrast_prompts",
    "distinct_labels",
    "dynamic_k_cells",
    "dynamic_k_levels",
    "dynamic_k_nll",
    "expert_contexts",
    "expert_norm_maxima",
    "expert_stats_means",
    "first_symbols",
    "has_gate_weights",
    "label_gate_sums",
    "label_logit_rows",
    "label_score_sums",
    "label_token_counts",
    "label_token_totals",
    "labelled_gate_mass",
    "labelled_selections",
    "marked_symbols",
    "matched_overlap",
    "n_expert_stats_rows",
    "n_logit_rows",
    "pair_counts",
    "pair_first_labels",
    "paired_labels",
    "prompt_expert_counts",
    "prompt_labels",
    "prompt_token_counts",
    "selections_per_layer",
    "selections_per_prompt",
    "shared_norm_mass",
    "shared_norm_totals",
    "span_selections",
    "span_token_counts",
    "span_token_selections",
    "summary_pair_counts",
    "summary_top1_token_counts",
    "summary_top1_token_maxima",
    "summary_transitions",
    "token_nll",
    "token_strings",
    "token_windows",
    "tokens_per_layer",
    "tokens_per_prompt",
    "top1_label_counts",
    "top1_token_counts",
    "top1_token_maxima",
    "top1_token_table",
    "top1_transitions",
]
