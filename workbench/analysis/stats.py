"""Statistics shared by the analyses: BH q-values, prompt-cluster bootstrap and permutation.

Tokens of one prompt are correlated (same topic, same context), so treating tokens as
independent draws gives CIs that are far too narrow and p-values that are far too small.
Every estimate in the workbench is therefore a *ratio of sums over prompts* — e.g. the
share of label-t tokens routed to expert e is ``sum_p count[p, e] / sum_p tokens[p]`` — and
uncertainty comes from resampling or relabelling whole prompts (the clusters), never tokens
(docs/methods.md, preamble). The functions here take the per-prompt sufficient statistics
(numerator and denominator arrays with one row per prompt), so the heavy counting can happen
elsewhere (DuckDB) and the resampling is a few matrix products in numpy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

__all__ = [
    "MIN_CI_PROMPTS",
    "auto_n_perm_max",
    "benjamini_hochberg",
    "cluster_bootstrap",
    "cluster_permutation_pvalue",
    "one_blas_thread",
    "percentile_interval",
]

#: Fewer prompts than this give no interval: resampling one prompt reproduces it in every
#: replicate, so a "95% CI" would have zero width and be no evidence (issue 12 item 6).
MIN_CI_PROMPTS = 2

#: Resamples are processed in blocks of this many so that the (block, n_prompts) weight
#: matrix stays small whatever ``n_boot`` / ``n_perm`` is.
BLOCK = 256


_CONTROLLER: Any = None
_LIMIT_LOCK = threading.Lock()
_LIMIT_DEPTH = 0
_LIMITER: Any = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the resampling products on one BLAS thread (results are the same bits).

    They are many small ``(block, n_prompts) @ (n_prompts, m)`` products, for which BLAS
    threads cost more in hand-offs than they save (several times slower on a busy 2-core
    machine). Re-entrant and thread-safe (analyses resample layers on several threads): the
    first entry sets the limit, the last exit restores it. A no-op when threadpoolctl (a
    scikit-learn dependency) is missing.
    """
    global _CONTROLLER, _LIMIT_DEPTH, _LIMITER
    with _LIMIT_LOCK:
        if _CONTROLLER is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:  # pragma: no cover
                _CONTROLLER = False
            else:
                _CONTROLLER = ThreadpoolController()
        if _CONTROLLER is not False and _LIMIT_DEPTH == 0:
            _LIMITER = _CONTROLLER.limit(limits=1, user_api="blas")
        _LIMIT_DEPTH += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT_DEPTH -= 1
            if _LIMIT_DEPTH == 0 and _LIMITER is not None:
                _LIMITER.restore_original_limits()
                _LIMITER = None


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values (step-up FDR adjustment) of the p-values ``p``.

    ``q_(i) = min_{j >= i} p_(j) * m / j`` over the sorted p-values, capped at 1, so q is
    monotone in p and rejecting ``q <= α`` controls the false discovery rate at α (under
    independence or positive dependence). NaN p-values (untestable rows) are ignored: they
    do not count towards ``m`` and their q-value is NaN. Any shape is accepted; the result
    has the same shape.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    flat = p.ravel()
    ok = np.flatnonzero(~np.isnan(flat))
    m = ok.size
    if m == 0:
        return q
    order = ok[np.argsort(flat[ok], kind="stable")]
    ranked = flat[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = q.ravel()
    out[order] = np.minimum(ranked, 1.0)
    return out.reshape(p.shape)


def as_2d(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    if num.ndim == 1:
        num = num[:, None]
    if num.ndim != 2:
        raise ValueError(f"num must be (n_prompts,) or (n_prompts, m), got shape {num.shape}")
    if den.ndim == 1:
        den = den[:, None]
    if den.shape[0] != num.shape[0] or den.shape[1] not in (1, num.shape[1]):
        raise ValueError(f"den shape {den.shape} does not match num shape {num.shape}")
    return num, den


def _integral(*arrays: np.ndarray) -> bool:
    """Whether every value is a whole number small enough that weighted sums of it stay exact.

    Then ``w @ x`` is exact in float64 for whole-number weights ``w`` (draw counts, 0/1
    memberships) whatever order BLAS sums in, so products may be fused or stacked freely
    without changing a single bit. Counts (tokens, selections) always qualify.
    """
    for x in arrays:
        if x.size and (not np.all(np.isfinite(x)) or not np.array_equal(x, np.round(x))):
            return False
        if x.size and float(np.abs(x).sum(axis=0).max()) * max(x.shape[0], 1) >= 2.0**52:
            return False
    return True


def safe_ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def cluster_bootstrap(
    num: np.ndarray,
    den: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int | np.random.Generator = 0,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the ratio of sums ``Σ_p num[p] / Σ_p den[p]``, resampling prompts.

    ``num`` is ``(n_prompts, m)`` (or ``(n_prompts,)``): one row of per-prompt sums per
    cluster, one column per statistic (e.g. per-prompt token counts routed to each expert).
    ``den`` is ``(n_prompts,)`` (shared by all columns, e.g. the prompt's token count) or
    ``(n_prompts, m)``. Each replicate draws ``n_prompts`` prompts with replacement — the
    multinomial count of how often each prompt is drawn is a weight vector ``w`` — and
    computes ``(w @ num) / (w @ den)``; all replicates of a block are one matrix product.
    Resampling whole prompts keeps within-prompt token correlation in every replicate,
    which is what makes the interval honest for token-level shares.

    Returns ``(estimate, low, high)``, each of shape ``(m,)``; the interval is the
    ``(1-level)/2`` and ``(1+level)/2`` percentiles of the replicates. Columns whose
    denominator is 0 give NaN. With no prompts everything is NaN. With fewer than
    :data:`MIN_CI_PROMPTS` prompts the interval is NaN (no interval is shown), though the draws
    are still made so that a shared generator advances as before.
    """
    num2, den2 = as_2d(num, den)
    n, m = num2.shape
    estimate = safe_ratio(num2.sum(axis=0), den2.sum(axis=0))
    if n == 0 or n_boot <= 0:
        nan = np.full(m, np.nan)
        return estimate, nan, nan.copy()
    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, m))
    uniform = np.full(n, 1.0 / n)
    # With whole-number statistics one product with [num | den] gives both sums exactly.
    both = np.hstack([num2, den2]) if _integral(num2, den2) else None
    with one_blas_thread():
        for start in range(0, n_boot, BLOCK):
            b = min(BLOCK, n_boot - start)
            w = rng.multinomial(n, uniform, size=b).astype(np.float64)  # (b, n) draw counts
            if both is not None:
                sums = w @ both
                reps[start : start + b] = safe_ratio(sums[:, :m], sums[:, m:])
            else:
                reps[start : start + b] = safe_ratio(w @ num2, w @ den2)
    alpha = (1.0 - level) / 2.0
    low, high = percentile_interval(reps, alpha) if m else (np.empty(0), np.empty(0))
    if n < MIN_CI_PROMPTS:  # every replicate is the estimate: a zero-width "interval" is no evidence
        return estimate, np.full(m, np.nan), np.full(m, np.nan)
    return estimate, np.asarray(low), np.asarray(high)


def percentile_interval(reps: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``alpha`` and ``1 − alpha`` quantiles of each column of ``reps``, ignoring NaN replicates.

    ``np.nanquantile`` loops over the columns in Python; without NaNs ``np.quantile`` gives the
    same values (same linear interpolation) in one call, ~10× faster.
    """
    with np.errstate(invalid="ignore"):
        if np.isnan(reps).any():
            low, high = np.nanquantile(reps, [alpha, 1.0 - alpha], axis=0)
        else:
            low, high = np.quantile(reps, [alpha, 1.0 - alpha], axis=0)
    return low, high


def cluster_permutation_pvalue(
    num: np.ndarray,
    den: np.ndarray,
    groups: np.ndarray,
    *,
    n_perm: int = 1000,
    seed: int | np.random.Generator = 0,
    alternative: Literal["greater", "less", "two-sided"] = "greater",
    n_perm_max: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Label-permutation test of "the ratio in group g differs from the ratio in the other groups".

    ``num``/``den`` are per-prompt sums as in :func:`cluster_bootstrap`; ``groups`` gives
    each prompt's group as an integer code ``0..G-1`` (e.g. its label). For every group g
    and column, the statistic is ``d_g = Σ_{p∈g} num / Σ_{p∈g} den − Σ_{p∉g} num / Σ_{p∉g} den``
    (e.g. an expert's share of label-g tokens minus its share of all other tokens). The
    null distribution comes from shuffling the labels **across prompts** (each prompt
    keeps all its tokens), ``n_perm`` times; the same shuffles serve every group and column.

    ``alternative``: ``"greater"`` (default) tests ``d_g > 0`` — "is this expert used more
    by label g than by the rest" — ``"less"`` tests ``d_g < 0``, ``"two-sided"`` compares
    ``|d|``. p-values use the +1 correction ``(count + 1) / (n_perm + 1)`` so that a Monte
    Carlo p-value is never 0 and the test stays valid.

    ``n_perm_max`` (> ``n_perm``) refines the cells at the floor: where no shuffle of the first
    ``n_perm`` reached the observed value, shuffling continues (the same stream, so the other
    cells keep their p exactly) until ``n_perm_max`` shuffles in all, and their p becomes
    ``(count + 1) / (n_perm_max + 1)``. On a large map BH needs p far below ``1/(n_perm + 1)``
    (one true effect among 768 tests has q ≥ 0.77 at the 1000-shuffle floor); this buys it only
    where it matters. The two-stage p is still valid: below ``2/(n_perm + 1)`` it rejects only
    when the full ``n_perm_max``-shuffle p would, and above it no more often than the first stage.

    Returns ``(observed, p)``, each ``(G, m)``. Where a group or its complement has no
    denominator (e.g. only one group) the statistic and p are NaN.
    """
    num2, den2 = as_2d(num, den)
    codes = np.asarray(groups)
    if codes.shape != (num2.shape[0],):
        raise ValueError(f"groups must have shape ({num2.shape[0]},), got {codes.shape}")
    n_groups = int(codes.max()) + 1 if codes.size else 0
    tot_num, tot_den = num2.sum(axis=0), den2.sum(axis=0)

    m = num2.shape[1]
    both = np.hstack([num2, den2]) if _integral(num2, den2) else None

    def diff(onehot: np.ndarray) -> np.ndarray:
        # onehot: (..., n) 0/1 membership; returns ratio(in) - ratio(out) with shape (..., m)
        if both is not None:  # exact whole-number sums: one product for numerator and denominator
            sums = onehot @ both
            in_num, in_den = sums[..., :m], sums[..., m:]
        else:
            in_num, in_den = onehot @ num2, onehot @ den2
        out: np.ndarray = safe_ratio(in_num, in_den) - safe_ratio(tot_num - in_num, tot_den - in_den)
        return out

    def narrow(cols: np.ndarray) -> Any:
        """``diff`` restricted to the columns ``cols`` (same values: the sums are exact, see _integral)."""
        sub_num = num2[:, cols]
        sub_den = den2 if den2.shape[1] == 1 else den2[:, cols]
        sub_tot_den = tot_den if den2.shape[1] == 1 else tot_den[cols]
        sub_both, k = np.hstack([sub_num, sub_den]), cols.size

        def sub_diff(onehot: np.ndarray) -> np.ndarray:
            sums = onehot @ sub_both
            in_num, in_den = sums[..., :k], sums[..., k:]
            out: np.ndarray = safe_ratio(in_num, in_den) - safe_ratio(
                tot_num[cols] - in_num, sub_tot_den - in_den
            )
            return out

        return sub_diff

    member = (codes[None, :] == np.arange(n_groups)[:, None]).astype(np.float64)  # (G, n)
    with one_blas_thread():
        return _permutation_loop(
            diff(member), codes, n_groups, diff, n_perm, seed, alternative, both is not None, n_perm_max,
            narrow if both is not None else None,
        )  # fmt: skip


def auto_n_perm_max(n_tests: int, n_perm: int, alpha: float = 0.05, cap: int = 1_000_000) -> int:
    """How many shuffles the floor refinement needs so that a lone effect among ``n_tests`` can reach q < α.

    A cell no shuffle reaches gets ``p = 1/(n_perm_max + 1)`` and, alone among ``n_tests`` BH tests,
    ``q = n_tests/(n_perm_max + 1)``. This returns the smallest ``n_perm_max`` with that q at most
    ``α/2`` (headroom for a hit or two in the extra shuffles), at least ``n_perm`` and at most ``cap``.
    E.g. 192 tests at α = 0.05 → 7,679 shuffles, 3,072 tests → 122,879. Only cells at the first-stage
    floor pay for them (:func:`cluster_permutation_pvalue`, ``n_perm_max``).
    """
    need = int(np.ceil(2.0 * max(int(n_tests), 1) / alpha)) - 1
    return int(max(n_perm, min(cap, need)))


def _permutation_loop(
    observed: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    diff: Any,
    n_perm: int,
    seed: int | np.random.Generator,
    alternative: str,
    stacked_ok: bool,
    n_perm_max: int | None = None,
    narrow: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The shuffles of :func:`cluster_permutation_pvalue` (its ``diff`` closure does the sums).

    The refinement stage draws the same shuffles for every column but, given ``narrow(cols)`` (a
    ``diff`` over the columns ``cols`` only), sums only the columns that have a cell at the floor:
    on a large map the extra shuffles then cost a fraction of the first ones.
    """
    if n_groups == 0 or n_perm <= 0:
        return observed, np.full(observed.shape, np.nan)
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', not {alternative!r}")
    if n_perm_max is not None and n_perm_max < n_perm:
        raise ValueError(f"n_perm_max ({n_perm_max}) must be at least n_perm ({n_perm})")
    rng = np.random.default_rng(seed)
    count = np.zeros(observed.shape)
    # Tolerance so that a permutation reproducing the observed split counts as ">=" despite
    # floating-point summation order.
    tol = 1e-12 * np.maximum(1.0, np.abs(np.nan_to_num(observed)))
    shuffles = _Shuffles(observed, codes, n_groups, diff, alternative, stacked_ok, tol, rng)
    for start in range(0, n_perm, BLOCK):
        count += shuffles.hits(min(BLOCK, n_perm - start))
    p = (count + 1.0) / (n_perm + 1.0)
    floor = (count == 0) & ~np.isnan(observed)
    if n_perm_max is not None and n_perm_max > n_perm and floor.any():
        cols = np.flatnonzero(floor.any(axis=0))
        if narrow is not None and cols.size < observed.shape[1]:
            sub = observed[:, cols]
            shuffles = _Shuffles(
                sub, codes, n_groups, narrow(cols), alternative, stacked_ok, tol[:, cols], rng
            )
        else:
            cols = np.arange(observed.shape[1])
        extra = np.zeros((observed.shape[0], cols.size))
        for start in range(n_perm, n_perm_max, BLOCK):
            extra += shuffles.hits(min(BLOCK, n_perm_max - start))
        refined = p[:, cols]
        at_floor = floor[:, cols]
        refined[at_floor] = (extra[at_floor] + 1.0) / (n_perm_max + 1.0)
        p[:, cols] = refined
    p[np.isnan(observed)] = np.nan
    return observed, p


class _Shuffles:
    """Blocks of label shuffles for :func:`_permutation_loop`: per cell, how many reach the observed value."""

    def __init__(
        self,
        observed: np.ndarray,
        codes: np.ndarray,
        n_groups: int,
        diff: Any,
        alternative: str,
        stacked_ok: bool,
        tol: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        self.observed, self.codes, self.n_groups, self.diff = observed, codes, n_groups, diff
        self.alternative, self.stacked_ok, self.tol, self.rng = alternative, stacked_ok, tol, rng

    def hits(self, b: int) -> np.ndarray:
        """``(G, m)`` counts of the next ``b`` shuffles whose statistic reaches the observed one."""
        observed, n_groups, tol = self.observed, self.n_groups, self.tol
        count = np.zeros(observed.shape)
        # permuted() returns a column-major array: make it row-major so the stacked indicator
        # below reshapes without a copy and feeds BLAS contiguous rows (same values).
        perm = np.ascontiguousarray(
            self.rng.permuted(np.broadcast_to(self.codes, (b, self.codes.size)), axis=1)
        )
        if self.stacked_ok:  # all groups in one (G·b, n) product (exact, see _integral)
            stacked = (perm[None, :, :] == np.arange(n_groups)[:, None, None]).astype(np.float64)
            nulls = self.diff(stacked.reshape(n_groups * b, -1)).reshape(n_groups, b, -1)
        for g in range(n_groups):
            null = nulls[g] if self.stacked_ok else self.diff((perm == g).astype(np.float64))  # (b, m)
            if self.alternative == "greater":
                hit = null >= observed[g] - tol[g]
            elif self.alternative == "less":
                hit = null <= observed[g] + tol[g]
            else:
                hit = np.abs(null) >= np.abs(observed[g]) - tol[g]
            count[g] += hit.sum(axis=0)
        return count
