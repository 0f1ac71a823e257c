"""Rank correlations with an interval and a p-value (docs/methods.md §0, "Rank correlations").

Every rank correlation the workbench reports as a finding comes with a 95% interval and a
p-value, so "ρ = 0.16" cannot be read without its uncertainty:

* :func:`rank_correlation` — Spearman's ρ (or Kendall's τ-b) of paired items, a CI and a
  two-sided **permutation** p ``(1 + #{|ρ_perm| ≥ |ρ|}) / (n_perm + 1)``: the +1 counts the
  observed pairing, so p is never 0 and its floor ``1/(n_perm + 1)`` is reported. The CI is the
  Fisher z interval (``ci="fisher"``; Bonett–Wright variance ``(1 + ρ²/2)/(n − 3)`` for
  Spearman, Fieller ``0.437/(n − 4)`` for Kendall) or a percentile bootstrap over the paired
  items (``ci="bootstrap"``).
* :func:`fisher_interval` / :func:`fisher_p` — the same interval, and a normal-approximation p,
  from ρ and an (effective) number of independent items: for correlations over tokens, which
  are not independent, callers pass the number of prompts (see ``dynamic-k``).

Both assume the items are exchangeable under the null (no pairing structure beyond x ↔ y).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numpy as np
from scipy.stats import kendalltau, norm, rankdata, spearmanr

__all__ = ["fisher_interval", "fisher_p", "rank_correlation"]


def _se(rho: float, n: float, method: str) -> float:
    if method == "kendall":
        return math.sqrt(0.437 / (n - 4)) if n > 4 else math.nan
    return math.sqrt((1.0 + rho * rho / 2.0) / (n - 3)) if n > 3 else math.nan


def fisher_interval(
    rho: float, n: float, *, method: str = "spearman", conf: float = 0.95
) -> tuple[float, float]:
    """The Fisher z interval of a rank correlation ``rho`` over ``n`` independent items (NaN when undefined)."""
    se = _se(rho, n, method)
    if not math.isfinite(rho) or not math.isfinite(se):
        return math.nan, math.nan
    z = math.atanh(float(np.clip(rho, -1 + 1e-12, 1 - 1e-12)))
    half = float(norm.ppf(0.5 + conf / 2)) * se
    return min(math.tanh(z - half), rho), max(math.tanh(z + half), rho)  # |ρ| = 1 stays inside its interval


def fisher_p(rho: float, n: float, *, method: str = "spearman") -> float:
    """Two-sided normal-approximation p of ``rho`` against 0 (the Fisher z of the null, SE at ρ = 0)."""
    se = _se(0.0, n, method)
    if not math.isfinite(rho) or not math.isfinite(se):
        return math.nan
    z = math.atanh(float(np.clip(rho, -1 + 1e-12, 1 - 1e-12)))
    return float(2 * norm.sf(abs(z) / se))


def _rho(x: np.ndarray, y: np.ndarray, method: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stat = (kendalltau(x, y) if method == "kendall" else spearmanr(x, y)).statistic
    return float(stat)


#: permutation index matrices up to this many entries are cached (32 MB of int32) and shared by calls
_CACHE_ENTRIES = 8_000_000


def _permutations(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` permutations of ``range(n)`` as rows (int32), deterministic for ``seed``."""
    rng = np.random.default_rng([seed, n, 1])
    return (
        np.stack([rng.permutation(n) for _ in range(count)]).astype(np.int32)
        if count
        else np.zeros((0, n), np.int32)
    )


@functools.lru_cache(maxsize=2)
def _cached_permutations(n: int, count: int, seed: int) -> np.ndarray:
    out = _permutations(n, count, seed)
    out.flags.writeable = False
    return out


def _perm_stats(rx: np.ndarray, ry: np.ndarray, n_perm: int, seed: int) -> np.ndarray:
    """Spearman ρ of ``rx`` with ``n_perm`` permutations of ``ry`` (Pearson of the ranks, vectorised).

    The permutations depend only on (n, n_perm, seed), so calls over the same number of items
    (every scorer pair of ``agreement``) share one cached matrix of them.
    """
    xc = (rx - rx.mean()) / np.sqrt(((rx - rx.mean()) ** 2).sum())
    yc = (ry - ry.mean()) / np.sqrt(((ry - ry.mean()) ** 2).sum())
    n = rx.size
    if n * n_perm <= _CACHE_ENTRIES:
        cached: np.ndarray = yc[_cached_permutations(n, n_perm, seed)] @ xc
        return cached
    out = np.empty(n_perm)
    step = max(1, _CACHE_ENTRIES // n)
    for start in range(0, n_perm, step):
        m = min(step, n_perm - start)
        out[start : start + m] = yc[_permutations(n, m, seed + 7_919 * (1 + start))] @ xc
    return out


def rank_correlation(
    x: Any,
    y: Any,
    *,
    method: str = "spearman",
    n_perm: int = 999,
    ci: str = "fisher",
    n_boot: int = 1000,
    seed: int = 0,
    conf: float = 0.95,
) -> dict[str, float]:
    """``rho, ci_low, ci_high, p, p_floor, n`` of the paired items ``x``, ``y`` (pairs with a NaN dropped).

    NaN everywhere (``n`` still set) with fewer than 4 pairs or a constant side. ``p`` is the
    permutation p with the +1 correction (``n_perm`` shuffles of y against x); ``p_floor`` its
    smallest possible value. Deterministic for a given ``seed``.
    """
    if method not in ("spearman", "kendall"):
        raise ValueError(f"method must be 'spearman' or 'kendall', got {method!r}")
    if ci not in ("fisher", "bootstrap"):
        raise ValueError(f"ci must be 'fisher' or 'bootstrap', got {ci!r}")
    xa, ya = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must pair up, got {xa.size} and {ya.size} values")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    n = int(xa.size)
    out = {"rho": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan,
           "p_floor": 1.0 / (n_perm + 1) if n_perm > 0 else math.nan, "n": float(n)}  # fmt: skip
    if n < 4 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return out
    rho = _rho(xa, ya, method)
    out["rho"] = rho
    rng = np.random.default_rng(seed)
    if ci == "fisher":
        out["ci_low"], out["ci_high"] = fisher_interval(rho, n, method=method, conf=conf)
    else:
        reps = np.empty(n_boot)
        for b in range(n_boot):
            idx = rng.integers(0, n, n)
            reps[b] = (
                _rho(xa[idx], ya[idx], method) if np.ptp(xa[idx]) > 0 and np.ptp(ya[idx]) > 0 else np.nan
            )
        lo, hi = np.nanquantile(reps, [(1 - conf) / 2, (1 + conf) / 2])
        out["ci_low"], out["ci_high"] = float(lo), float(hi)
    if n_perm > 0:
        if method == "spearman":
            null = _perm_stats(rankdata(xa), rankdata(ya), n_perm, seed)
        else:
            null = np.array([_rho(xa, rng.permutation(ya), method) for _ in range(n_perm)])
        far = int((np.abs(null) >= abs(rho) - 1e-12).sum())
        out["p"] = (1 + far) / (1 + n_perm)
    return out
