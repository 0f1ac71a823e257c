"""Formatting shared by the views: the confidence-interval column of their tables.

(The run, label and layer choices every page starts with are :mod:`dashboards.components.pickers`.)
"""

from __future__ import annotations

import polars as pl

__all__ = ["NO_INTERVAL", "ci_column"]

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
