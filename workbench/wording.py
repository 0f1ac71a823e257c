"""Shared wording for findings sentences: the run context and number formatting.

Pure formatting over polars rows, with no workbench imports, so it sits on the bottom floor and
every findings builder can use it (the catalog's, a new analysis' own, the CLI demo's summary).
Formatting is shared so a sentence can be checked against its table: a share of 0.412 with
CI 0.371–0.453 reads "41% (95% CI 37–45%)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

__all__ = [
    "Context", "Findings", "correlation_words", "expert_name", "finite", "fmt_q", "is_missing", "label_name", "num",
    "pct", "pct_ci", "pct_decimals", "pct_ref", "rows_of",
]  # fmt: skip

#: What one findings function returns: sentences, most important first.
Findings = list[str]


@dataclass(frozen=True)
class Context:
    """What the findings need to know about the run besides the table."""

    n_experts: int
    top_k: int
    labels: tuple[str, ...] = ()
    alpha: float = 0.05
    compare: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- formatting -------------------------------------------------------------------------------


def is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct_decimals(x: float) -> int:
    """Decimals used for a percentage: 0 from 10% up, 1 from 1%, else 2 (so small shares keep digits)."""
    v = abs(100.0 * x)
    return 0 if v >= 10 or v == 0 else 1 if v >= 1 else 2


def pct(x: float | None, decimals: int | None = None) -> str:
    """``0.412`` → ``"41%"`` (decimals from :func:`pct_decimals` unless given); NaN → ``"n/a"``."""
    if x is None or is_missing(x):
        return "n/a"
    d = pct_decimals(x) if decimals is None else decimals
    return f"{100.0 * x:.{d}f}%"


def pct_ci(lo: float | None, hi: float | None, decimals: int) -> str:
    """``(0.371, 0.453)`` → ``"95% CI 37–45%"`` with the estimate's decimals."""
    if lo is None or hi is None or is_missing(lo) or is_missing(hi):
        return "no CI"
    return f"95% CI {100.0 * lo:.{decimals}f}–{100.0 * hi:.{decimals}f}%"


def pct_ref(x: float) -> str:
    """A reference share such as uniform ``1/E``: up to one decimal, no trailing zero (``"12.5%"``, ``"25%"``)."""
    if is_missing(x):
        return "n/a"
    return f"{100.0 * x:.1f}".rstrip("0").rstrip(".") + "%"


def fmt_q(q: float | None, name: str = "q") -> str:
    """A q- or p-value: ``"q = 0.0029"``, ``"q < 0.001"`` below 0.001, ``"q n/a"`` when missing."""
    if q is None or is_missing(q):
        return f"{name} n/a"
    if q < 0.001:
        return f"{name} < 0.001"
    return f"{name} = {q:.2g}"


def correlation_words(rho: float, lo: float | None = None, hi: float | None = None) -> str:
    """What a rank correlation says, in words that follow its sign, size and (when given) its CI.

    Size (|ρ|): < 0.1 "essentially uncorrelated", < 0.4 "weakly", < 0.7 "moderately", else
    "strongly" (the usual reading of correlation coefficients, e.g. Schober et al. 2018); the sign
    gives "correlated" or "anti-correlated". A 95% CI that includes 0 makes no claim ("no
    detectable correlation"), whatever the estimate. NaN → "not measurable".
    """
    if is_missing(rho):
        return "not measurable"
    if lo is not None and hi is not None and not is_missing(lo) and not is_missing(hi) and lo <= 0.0 <= hi:
        return "no detectable correlation (the 95% CI includes 0)"
    size = abs(rho)
    if size < 0.1:
        return "essentially uncorrelated"
    strength = "weakly" if size < 0.4 else "moderately" if size < 0.7 else "strongly"
    return f"{strength} {'correlated' if rho > 0 else 'anti-correlated'}"


def num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None or is_missing(x) else format(x + 0.0, fmt)  # + 0.0: no "-0.000"


def expert_name(row: dict[str, Any], column: str = "expert") -> str:
    return f"shared expert {row[column]}" if row.get("shared") else f"expert {row[column]}"


def label_name(value: Any) -> str:
    return "unlabelled" if value is None else str(value)


def rows_of(df: pl.DataFrame) -> list[dict[str, Any]]:
    return list(df.iter_rows(named=True))


def finite(df: pl.DataFrame, column: str) -> pl.DataFrame:
    return df.filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan())
