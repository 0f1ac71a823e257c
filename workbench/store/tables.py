"""The store's tables and columns, by the schema version that added them: the public contract.

Table and column names are public API (tests, notebooks and analyses rely on them; ARCHITECTURE.md,
"Store"). They only ever change through a new migration (:mod:`workbench.store.schema`), never by
editing a version's definition in place: ``TABLES`` is v1 plus every later addition, in order.
"""

from __future__ import annotations

#: The manifest of routing shards (schema v4): one row per committed Parquet file.
MANIFEST = "routing_shards"

#: Allowed values of ``runs.status``.
RUN_STATUSES: tuple[str, ...] = ("running", "complete", "failed")

Columns = tuple[tuple[str, str], ...]

#: Schema v1, table -> ((column, DuckDB type), ...). Order is the physical column order.
SCHEMA_V1: dict[str, Columns] = {
    "runs": (
        ("run_id", "VARCHAR PRIMARY KEY"),
        ("model", "VARCHAR"),
        ("architecture", "VARCHAR"),
        ("probe", "VARCHAR"),
        ("n_experts", "INTEGER"),
        ("top_k", "INTEGER"),
        ("created_at", "TIMESTAMP"),
        ("status", "VARCHAR"),
        ("config", "JSON"),
    ),
    "layers": (
        ("run_id", "VARCHAR"),
        ("layer", "INTEGER"),
        ("module_path", "VARCHAR"),
        ("n_experts", "INTEGER"),
        ("top_k", "INTEGER"),
        ("n_shared", "INTEGER"),
        ("score_fn", "VARCHAR"),
    ),
    "prompts": (
        ("run_id", "VARCHAR"),
        ("prompt_id", "INTEGER"),
        ("text", "VARCHAR"),
        ("label", "VARCHAR"),
        ("pair_id", "VARCHAR"),
        ("split", "VARCHAR"),
        ("meta", "JSON"),
        ("n_tokens", "INTEGER"),
    ),
    "tokens": (
        ("run_id", "VARCHAR"),
        ("prompt_id", "INTEGER"),
        ("position", "INTEGER"),
        ("token_id", "INTEGER"),
        ("token", "VARCHAR"),
        ("nll", "FLOAT"),
    ),
    "routing": (
        ("run_id", "VARCHAR"),
        ("prompt_id", "INTEGER"),
        ("position", "INTEGER"),
        ("layer", "INTEGER"),
        ("experts", "SMALLINT[]"),
        ("weights", "FLOAT[]"),
        ("logits", "FLOAT[]"),
    ),
    "expert_stats": (
        ("run_id", "VARCHAR"),
        ("prompt_id", "INTEGER"),
        ("position", "INTEGER"),
        ("layer", "INTEGER"),
        ("expert", "SMALLINT"),
        ("out_norm", "FLOAT"),
        ("zero_frac", "FLOAT"),
    ),
    "interventions": (
        ("intervention_id", "VARCHAR PRIMARY KEY"),
        ("run_id", "VARCHAR"),
        ("kind", "VARCHAR"),
        ("spec", "JSON"),
        ("created_at", "TIMESTAMP"),
    ),
    "evaluations": (
        ("intervention_id", "VARCHAR"),
        ("label", "VARCHAR"),
        ("metric", "VARCHAR"),
        ("value", "DOUBLE"),
        ("ci_low", "DOUBLE"),
        ("ci_high", "DOUBLE"),
        ("n", "INTEGER"),
        ("meta", "JSON"),
    ),
    "schema_version": (
        ("version", "INTEGER"),
        ("applied_at", "TIMESTAMP"),
    ),
}

#: Tables added after v1, by the version that adds them. Same shape as ``SCHEMA_V1``.
SCHEMA_ADDED: dict[int, dict[str, Columns]] = {
    2: {
        "resonance": (
            ("map_id", "VARCHAR"),
            ("run_id", "VARCHAR"),
            ("target", "VARCHAR"),
            ("control", "VARCHAR"),
            ("span", "VARCHAR"),
            ("method", "VARCHAR"),
            ("layer", "INTEGER"),
            ("expert", "INTEGER"),
            ("rd", "DOUBLE"),
            ("ftri", "DOUBLE"),
            ("effect", "DOUBLE"),
            ("attribution", "DOUBLE"),
            ("ci_low", "DOUBLE"),
            ("ci_high", "DOUBLE"),
            ("p", "DOUBLE"),
            ("q", "DOUBLE"),
            ("n_target", "INTEGER"),
            ("n_control", "INTEGER"),
            ("created_at", "TIMESTAMP"),
        ),
    },
    4: {
        MANIFEST: (
            ("run_id", "VARCHAR"),
            ("path", "VARCHAR"),
            ("n_rows", "BIGINT"),
            ("n_bytes", "BIGINT"),
            ("created_at", "TIMESTAMP"),
        ),
    },
    5: {
        # what each summary part of a run was built from: valid while this still matches the run
        "summary_builds": (
            ("run_id", "VARCHAR"),
            ("part", "VARCHAR"),
            ("n_prompts", "BIGINT"),
            ("n_shards", "BIGINT"),
            ("n_rows", "BIGINT"),
            ("built_at", "TIMESTAMP"),
            ("build_s", "DOUBLE"),
        ),
        # per (prompt, layer): routing rows, and those with gate weights
        "summary_tokens": (
            ("run_id", "VARCHAR"),
            ("prompt_id", "INTEGER"),
            ("layer", "INTEGER"),
            ("n_tokens", "BIGINT"),
            ("n_weights", "BIGINT"),
        ),
        # per (prompt, layer, expert id as stored): list entries, top-1 routed choices, Σ gate weight
        "summary_experts": (
            ("run_id", "VARCHAR"),
            ("prompt_id", "INTEGER"),
            ("layer", "INTEGER"),
            ("expert", "INTEGER"),
            ("n", "BIGINT"),
            ("n_top1", "BIGINT"),
            ("w_sum", "DOUBLE"),
        ),
        # per (prompt, layer, expert) of expert_stats: rows, non-NULL values, sums and the largest |out_norm|
        "summary_stats": (
            ("run_id", "VARCHAR"),
            ("prompt_id", "INTEGER"),
            ("layer", "INTEGER"),
            ("expert", "INTEGER"),
            ("n", "BIGINT"),
            ("n_norm", "BIGINT"),
            ("norm_sum", "DOUBLE"),
            ("n_zero", "BIGINT"),
            ("zero_sum", "DOUBLE"),
            ("norm_absmax", "FLOAT"),
        ),
        # per (prompt, layer) of the rows with logits: rows, Σ entropy, Σ margin, fragile rows (σ 0.01, seed 0)
        "summary_confidence": (
            ("run_id", "VARCHAR"),
            ("prompt_id", "INTEGER"),
            ("layer", "INTEGER"),
            ("n", "BIGINT"),
            ("entropy_sum", "DOUBLE"),
            ("margin_sum", "DOUBLE"),
            ("n_fragile", "BIGINT"),
        ),
        # per (prompt, layer, routed expert) of the rows with logits: Σ router score π
        "summary_scores": (
            ("run_id", "VARCHAR"),
            ("prompt_id", "INTEGER"),
            ("layer", "INTEGER"),
            ("expert", "INTEGER"),
            ("score_sum", "DOUBLE"),
        ),
        # per (layer, routed a ≠ b) over the whole run: tokens choosing both, each, and the layer's tokens
        "summary_pairs": (
            ("run_id", "VARCHAR"),
            ("layer", "INTEGER"),
            ("a", "INTEGER"),
            ("b", "INTEGER"),
            ("n_ab", "BIGINT"),
            ("n_a", "BIGINT"),
            ("n_b", "BIGINT"),
            ("n_tokens", "BIGINT"),
        ),
        # per top-1 expert pair of consecutive MoE layers over the whole run: tokens
        "summary_transitions": (
            ("run_id", "VARCHAR"),
            ("layer_from", "INTEGER"),
            ("layer_to", "INTEGER"),
            ("expert_from", "INTEGER"),
            ("expert_to", "INTEGER"),
            ("n", "BIGINT"),
        ),
    },
    7: {
        # per (layer, token id, top-1 routed expert) over the whole run: tokens
        "summary_vocab": (
            ("run_id", "VARCHAR"),
            ("layer", "INTEGER"),
            ("token_id", "INTEGER"),
            ("expert", "INTEGER"),
            ("n", "BIGINT"),
        ),
        # per (layer, label or NULL, level p, k) over the whole run: rows, rows with an NLL, Σ centred NLL rank
        "summary_dynamic_k": (
            ("run_id", "VARCHAR"),
            ("layer", "INTEGER"),
            ("label", "VARCHAR"),
            ("p", "DOUBLE"),
            ("k", "INTEGER"),
            ("n", "BIGINT"),
            ("n_nll", "BIGINT"),
            ("rank_sum", "DOUBLE"),
        ),
        # per (layer, label or NULL): Σ squared centred NLL rank, the label's prompts with an NLL
        "summary_dynamic_nll": (
            ("run_id", "VARCHAR"),
            ("layer", "INTEGER"),
            ("label", "VARCHAR"),
            ("rank_ss", "DOUBLE"),
            ("n_prompts", "BIGINT"),
        ),
    },
}

#: Tables that v4 turned into views over files (same columns and types as before).
VIEWS: frozenset[str] = frozenset({"routing"})

#: Columns appended to existing tables after v1, by the version that adds them.
COLUMNS_ADDED: dict[int, dict[str, Columns]] = {
    3: {"prompts": (("content_hash", "VARCHAR"),)},
    6: {
        # which part of the text a token belongs to: 'prompt' (read) or 'response' (generated by capture)
        "tokens": (("segment", "VARCHAR"),),
        # who is capturing a running run, and when it last wrote: a dead capture reads as interrupted
        "runs": (("pid", "INTEGER"), ("host", "VARCHAR"), ("heartbeat_at", "TIMESTAMP")),
    },
}

#: Column defaults of the columns added after v1 (those not listed default to NULL).
COLUMN_DEFAULTS: dict[tuple[str, str], str] = {("tokens", "segment"): "'prompt'"}


def _current_tables() -> dict[str, Columns]:
    tables = {**SCHEMA_V1, **{t: c for added in SCHEMA_ADDED.values() for t, c in added.items()}}
    for version in sorted(COLUMNS_ADDED):
        for table, columns in COLUMNS_ADDED[version].items():
            tables[table] = (*tables[table], *columns)
    return tables


#: Every table of the current schema.
TABLES: dict[str, Columns] = _current_tables()

#: Natural row order of each per-run table (used by readers and exports).
ORDER_BY: dict[str, str] = {
    "runs": "created_at, run_id",
    "layers": "layer",
    "prompts": "prompt_id",
    "tokens": "prompt_id, position",
    "routing": "prompt_id, position, layer",
    "expert_stats": "prompt_id, position, layer, expert",
    "interventions": "created_at, intervention_id",
    "evaluations": "intervention_id, label, metric",
    "resonance": "created_at, map_id, layer, expert",
    MANIFEST: "created_at, path",
}


def column_names(table: str) -> list[str]:
    """Column names of ``table`` in the current schema (the public contract)."""
    return [name for name, _ in TABLES[table]]


def column_type(table: str, column: str) -> str:
    """DuckDB type of ``table.column`` without constraints (e.g. ``VARCHAR``)."""
    for name, typ in TABLES[table]:
        if name == column:
            return typ.replace(" PRIMARY KEY", "")
    raise KeyError(f"{table}.{column}")
