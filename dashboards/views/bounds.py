"""Bounds on what the lab and circuits jobs accept, checked before any model runs.

A job's inputs come from the page, whose controls carry limits, but a request can carry anything
(a script, an edited address, a hand-made callback body). Unchecked, a 200 KB typed prompt made
the lab allocate 3.6 GB, and NaN or huge scales ran to meaningless numbers. Each check here returns
the clean value or raises ``ValueError`` with a sentence the page shows as is (:func:`guarded`):
what was wrong, and the allowed range.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "BIAS_RANGE",
    "CIRCUIT_PROMPTS",
    "LAB_PROMPTS",
    "MAX_PROMPT_CHARS",
    "SCALE_RANGE",
    "count_within",
    "number_within",
    "text_within",
]

MAX_PROMPT_CHARS = 2_000
"""The typed prompt's longest length: a few paragraphs, far inside any model's context."""
LAB_PROMPTS = (1, 64)
"""Prompts per label the lab runs on (the page's control has the same limits)."""
CIRCUIT_PROMPTS = (2, 256)
"""Prompts per label the circuits job runs on (two at least: importances are means with CIs)."""
SCALE_RANGE = (-10.0, 10.0)
"""Scale s of an expert's output: ±10 already drowns the other experts; beyond it is numerically meaningless."""
BIAS_RANGE = (-100.0, 100.0)
"""Bias δ added to a router logit: ±100 already forces an expert in or out of every top-k."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def text_within(text: Any, max_chars: int, what: str) -> str:
    """``text`` if it is a string of at most ``max_chars`` characters."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text, not {type(text).__name__}")
    if len(text) > max_chars:
        raise ValueError(
            f"{what} has {len(text):,} characters; the most allowed is {max_chars:,}: shorten it, "
            "or run longer prompts through `moe-workbench intervene` on a probe file"
        )
    return text


def count_within(value: Any, bounds: tuple[int, int], what: str, default: int) -> int:
    """``value`` as a whole number within ``bounds`` (None or "" → ``default``)."""
    low, high = bounds
    if value is None or value == "":
        return default
    number = _number(value)
    if number is None or not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}, not {_shown(value)}")
    return int(number)


def number_within(value: Any, bounds: tuple[float, float], what: str) -> float:
    """``value`` as a finite number within ``bounds`` (NaN and ±inf are refused)."""
    low, high = bounds
    number = _number(value)
    if number is None or not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{what} must be a finite number from {low:g} to {high:g}, not {_shown(value)}")
    return number


def _number(value: Any) -> float | None:
    """``value`` as a float (numbers and numeric strings; a bool is not a number here), else None."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None
