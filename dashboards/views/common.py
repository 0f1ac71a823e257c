"""Choices shared by every page: which run, which labels and layers it has, and their defaults."""

from __future__ import annotations

from typing import Any

import polars as pl

from dashboards import data

__all__ = [
    "ci_column", "compare_options", "default_run", "label_options", "layer_options", "pick", "run_options",
]  # fmt: skip

ALL = "__all__"
"""Dropdown value meaning "every label"."""


def run_options(db: str) -> list[dict[str, Any]]:
    """Dropdown options for the store's runs, newest first, with model and status in the label."""
    runs = data.runs(db)
    return [
        {"label": f"{r['run_id']} · {r['model']} · {r['probe']} ({r['status']})", "value": r["run_id"]}
        for r in reversed(list(runs.iter_rows(named=True)))
    ]


def compare_options(db: str, run: str | None) -> list[dict[str, Any]]:
    """Dropdown options for a run to compare ``run`` with: only runs sharing at least one prompt
    (matched by text and token ids), most shared first, with how many in the label."""
    if not run:
        return []
    info = {r["run_id"]: r for r in data.runs(db).iter_rows(named=True)}
    return [
        {
            "label": f"{other} · {info[other]['model']} · {info[other]['probe']} "
            f"({n_shared} of {n_prompts} prompts shared)",
            "value": other,
        }
        for other, n_shared, n_prompts in data.compatible_runs(db, run).iter_rows()
        if other in info
    ]


def default_run(db: str) -> str | None:
    """The most recent complete run (else the most recent run; None for an empty store)."""
    runs = data.runs(db)
    if runs.height == 0:
        return None
    complete = runs.filter(pl.col("status") == "complete")
    chosen = complete if complete.height else runs
    return str(chosen["run_id"][-1])


def label_options(db: str, run: str | None, with_all: bool = True) -> list[dict[str, Any]]:
    """Dropdown options for the run's labels (first "all labels" when ``with_all``)."""
    options = [{"label": "all labels", "value": ALL}] if with_all else []
    if run:
        options += [{"label": lab, "value": lab} for lab in data.labels(db, run)]
    return options


def layer_options(db: str, run: str | None) -> list[dict[str, Any]]:
    """Dropdown options for the run's MoE layers (the model's own block indices)."""
    if not run:
        return []
    return [{"label": f"layer {x}", "value": int(x)} for x in data.layers(db, run)["layer"].to_list()]


def pick(value: Any, options: list[dict[str, Any]], fallback_index: int = 0) -> Any:
    """``value`` if it is one of ``options``' values, else the option at ``fallback_index`` (or None)."""
    values = [o["value"] for o in options]
    if value in values:
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit() and int(value) in values:
        return int(value)
    return values[fallback_index] if len(values) > fallback_index else None


NO_INTERVAL = "none (n < 2)"
"""What an interval cell says when there are too few prompts to resample (docs/methods.md §0)."""


def ci_column(df: pl.DataFrame, name: str = "95% CI", digits: int = 4) -> pl.DataFrame:
    """``df`` with a ``name`` column "[lo, hi]" from ``ci_low``/``ci_high``; no interval where ``n`` < 2.

    With one prompt every bootstrap replicate equals the estimate, so a zero-width "interval"
    would be shown as if it were evidence; such rows (and rows whose bounds are missing) read
    :data:`NO_INTERVAL` instead.
    """
    from workbench.analysis.stats import MIN_CI_PROMPTS

    few = pl.col("n") < MIN_CI_PROMPTS if "n" in df.columns else pl.lit(False)
    missing = pl.col("ci_low").is_null() | pl.col("ci_low").is_nan() | pl.col("ci_high").is_null()
    missing = missing | pl.col("ci_high").is_nan()
    text = pl.format("[{}, {}]", pl.col("ci_low").round(digits), pl.col("ci_high").round(digits))
    return df.with_columns(pl.when(few | missing).then(pl.lit(NO_INTERVAL)).otherwise(text).alias(name))
