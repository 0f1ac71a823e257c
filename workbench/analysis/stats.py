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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

__all__ = [
    "MIN_CI_PROMPTS",
    "auto_n_perm_max",
    "benjamini_hochberg",
    "bootstrap_weights",
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


#: float32 holds every whole number of magnitude below 2**24 exactly.
_F32_EXACT = 2.0**24


def fits_float32(x: np.ndarray, max_weight: float, weight_total: float) -> bool:
    """Whether sums ``w @ x`` of whole-number ``x`` stay exact in float32 for whole weights ``0 <= w <= max_weight``.

    Every partial sum of a column is at most ``min(max_weight · Σ|x|, weight_total · max|x|)`` in
    magnitude (``weight_total`` bounds ``Σ w``), so below 2**24 each partial sum is a whole number
    float32 holds exactly, whatever order BLAS adds in: the float32 product then equals the float64
    one bit for bit, at half the cost. Call only on data :func:`_integral` accepts.
    """
    if x.size == 0:
        return True
    mag = np.abs(x)
    bound = np.minimum(max_weight * mag.sum(axis=0), weight_total * mag.max(axis=0))
    return bool(float(bound.max()) < _F32_EXACT)


def bootstrap_weights(
    rng: np.random.Generator, n: int, size: int, dtype: type[np.floating[Any]] = np.float64
) -> np.ndarray:
    """``(size, n)`` cluster-bootstrap weights: how often each of ``n`` prompts is drawn in each replicate.

    Each replicate draws ``n`` prompt indices uniformly with replacement (``rng.integers``) and
    counts them (``np.bincount``). The count vector has exactly the multinomial(n, 1/n) distribution
    of the textbook bootstrap, but costs a sixth of ``rng.multinomial`` to draw, which walks n
    conditional binomials per replicate. Replicates are drawn in order from ``rng``, so a stream cut
    into blocks gives the same weights as one draw of all of them.
    """
    if n == 0 or size == 0:
        return np.zeros((size, n), dtype=dtype)
    idx = rng.integers(0, n, size=(size, n))
    idx += (np.arange(size, dtype=np.int64) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(dtype)


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
    count of how often each prompt is drawn is a weight vector ``w`` (:func:`bootstrap_weights`) —
    and computes ``(w @ num) / (w @ den)``; all replicates of a block are one matrix product, so
    every column shares the same draws (pass many statistics at once for one set of draws).
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
    # With whole-number statistics one product with [num | den] gives both sums exactly, in
    # float32 when its partial sums stay below 2**24 (the same bits at half the cost).
    both = np.hstack([num2, den2]) if _integral(num2, den2) else None
    dtype: type[np.floating[Any]] = np.float64
    if both is not None and fits_float32(both, n, n):
        dtype, both = np.float32, both.astype(np.float32)
    with one_blas_thread():
        for start in range(0, n_boot, BLOCK):
            b = min(BLOCK, n_boot - start)
            w = bootstrap_weights(rng, n, b, dtype)  # (b, n) draw counts
            if both is not None:
                sums = (w @ both).astype(np.float64)
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
    n_perm_max: int | Callable[[int], int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Label-permutation test of "the ratio in group g differs from the ratio in the other groups".

    ``num``/``den`` are per-prompt sums as in :func:`cluster_bootstrap`; ``groups`` gives
    each prompt's group as an integer code ``0..G-1`` (e.g. its label). For every group g
    and column, the statistic is ``d_g = Σ_{p∈g} num / Σ_{p∈g} den − Σ_{p∉g} num / Σ_{p∉g} den``
    (e.g. an expert's share of label-g tokens minus its share of all other tokens). The
    null distribution comes from shuffling the labels **across prompts** (each prompt
    keeps all its tokens), ``n_perm`` times; the same shuffles serve every group and column
    (pass many statistics at once — e.g. every layer's experts — for one set of shuffles).

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
    ``n_perm_max`` may be a function of the number of cells at the floor after the first stage
    (how :func:`auto_n_perm_max` sizes it from the whole map) that returns the total shuffle count.

    Returns ``(observed, p)``, each ``(G, m)``. Where a group or its complement has no
    denominator (e.g. only one group) the statistic and p are NaN.
    """
    num2, den2 = as_2d(num, den)
    codes = np.asarray(groups)
    if codes.shape != (num2.shape[0],):
        raise ValueError(f"groups must have shape ({num2.shape[0]},), got {codes.shape}")
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', not {alternative!r}")
    n_groups = int(codes.max()) + 1 if codes.size else 0
    if isinstance(n_perm_max, int) and n_perm_max < n_perm:
        raise ValueError(f"n_perm_max ({n_perm_max}) must be at least n_perm ({n_perm})")
    sums = _GroupSums(num2, den2)
    member = (codes[None, :] == np.arange(n_groups)[:, None]).astype(np.float64)  # (G, n)
    observed = sums.diff(sums.sums64(member))
    if n_groups == 0 or n_perm <= 0:
        return observed, np.full(observed.shape, np.nan)
    with one_blas_thread():
        p = _permutation_loop(
            observed, codes, n_groups, sums, num2, den2, n_perm, seed, alternative, n_perm_max
        )
    return observed, p


class _GroupSums:
    """``ratio(in) − ratio(out)`` of columns of ``[num | den]`` for 0/1 group memberships of the prompts.

    Whole-number data (:func:`_integral`) is summed in one exact product, in float32 where every
    partial sum stays below 2**24 (:func:`fits_float32`; the same bits as float64 at half the
    cost), and the last group's sums are the totals minus the others' (exact, one group fewer to
    multiply). Other data is summed in float64, every group multiplied.
    """

    def __init__(self, num2: np.ndarray, den2: np.ndarray) -> None:
        self.m = num2.shape[1]
        self.tot_num, self.tot_den = num2.sum(axis=0), den2.sum(axis=0)
        both = np.hstack([num2, den2])
        self.exact = _integral(num2, den2)
        self.tot = both.sum(axis=0)
        self.dtype: type[np.floating[Any]] = np.float64
        if self.exact and fits_float32(both, 1.0, float(num2.shape[0])):
            self.dtype = np.float32
        self.both = np.ascontiguousarray(both, dtype=self.dtype)

    def sums64(self, onehot: np.ndarray) -> np.ndarray:
        """Sums of every column over each membership row of ``onehot`` ``(..., n)``, as float64."""
        out: np.ndarray = (onehot.astype(self.dtype, copy=False) @ self.both).astype(np.float64, copy=False)
        return out

    def diff(self, sums: np.ndarray) -> np.ndarray:
        """``ratio(in) − ratio(out)`` ``(..., m)`` from in-group sums ``(..., m + d)``."""
        in_num, in_den = sums[..., : self.m], sums[..., self.m :]
        out: np.ndarray = safe_ratio(in_num, in_den) - safe_ratio(
            self.tot_num - in_num, self.tot_den - in_den
        )
        return out


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
    sums: _GroupSums,
    num2: np.ndarray,
    den2: np.ndarray,
    n_perm: int,
    seed: int | np.random.Generator,
    alternative: str,
    n_perm_max: int | Callable[[int], int] | None = None,
) -> np.ndarray:
    """The shuffles of :func:`cluster_permutation_pvalue`: the p-values ``(G, m)``.

    The refinement stage draws the same shuffles for every column but sums only the columns that
    have a cell at the floor: on a large map the extra shuffles then cost a fraction of the first ones.
    """
    rng = np.random.default_rng(seed)
    # Tolerance so that a permutation reproducing the observed split counts as ">=" despite
    # floating-point summation order.
    tol = 1e-12 * np.maximum(1.0, np.abs(np.nan_to_num(observed)))
    shuffles = _Shuffles(observed, codes, n_groups, sums, alternative, tol, rng)
    count = np.zeros(observed.shape)
    for start in range(0, n_perm, BLOCK):
        count += shuffles.hits(min(BLOCK, n_perm - start))
    p = (count + 1.0) / (n_perm + 1.0)
    floor = (count == 0) & ~np.isnan(observed)
    if callable(n_perm_max):
        n_perm_max = int(n_perm_max(int(floor.sum()))) if floor.any() else None
        if n_perm_max is not None and n_perm_max < n_perm:
            raise ValueError(f"n_perm_max ({n_perm_max}) must be at least n_perm ({n_perm})")
    if n_perm_max is not None and n_perm_max > n_perm and floor.any():
        cols = np.flatnonzero(floor.any(axis=0))
        if cols.size < observed.shape[1]:
            sub_den = den2 if den2.shape[1] == 1 else den2[:, cols]
            sub = _GroupSums(num2[:, cols], sub_den)
            shuffles = _Shuffles(observed[:, cols], codes, n_groups, sub, alternative, tol[:, cols], rng)
        extra = np.zeros((observed.shape[0], cols.size))
        for start in range(n_perm, n_perm_max, BLOCK):
            extra += shuffles.hits(min(BLOCK, n_perm_max - start))
        refined = p[:, cols]
        at_floor = floor[:, cols]
        refined[at_floor] = (extra[at_floor] + 1.0) / (n_perm_max + 1.0)
        p[:, cols] = refined
    p[np.isnan(observed)] = np.nan
    return p


class _Shuffles:
    """Blocks of label shuffles for :func:`_permutation_loop`: per cell, how many reach the observed value.

    Each shuffle is a row of ``rng.permuted`` over the prompts' group codes. The memberships of a
    block are one ``(G·b, n)`` 0/1 matrix (one group fewer for exact data, see :class:`_GroupSums`);
    its buffers are kept between blocks so that no block pays for fresh pages.
    """

    def __init__(
        self,
        observed: np.ndarray,
        codes: np.ndarray,
        n_groups: int,
        sums: _GroupSums,
        alternative: str,
        tol: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        self.observed, self.codes, self.n_groups, self.sums = observed, codes, n_groups, sums
        self.alternative, self.tol, self.rng = alternative, tol, rng
        self.n_mult = n_groups - 1 if sums.exact and n_groups > 1 else n_groups
        self.small_codes = np.min_scalar_type(-max(n_groups, 1))
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _buffers_for(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if b not in self._buffers:
            shape = (self.n_mult, b, self.codes.size)
            self._buffers[b] = (  # shuffled as int64: numpy's fastest item size for permuted()
                np.empty((b, self.codes.size), dtype=np.int64),
                np.empty(shape, dtype=bool),
                np.empty(shape, dtype=self.sums.dtype),
            )
        return self._buffers[b]

    def hits(self, b: int) -> np.ndarray:
        """``(G, m)`` counts of the next ``b`` shuffles whose statistic reaches the observed one."""
        perm, mask, onehot = self._buffers_for(b)
        # Shuffle each row of a row-major copy of the codes in place: the same draws as permuting
        # a fresh copy, and contiguous rows for the memberships below.
        perm[:] = self.codes
        self.rng.permuted(perm, axis=1, out=perm)
        small = perm.astype(self.small_codes)  # 8× less to read per group below than int64
        for g in range(self.n_mult):
            np.equal(small, g, out=mask[g])
        np.copyto(onehot, mask)
        part = self.sums.sums64(onehot.reshape(self.n_mult * b, -1)).reshape(self.n_mult, b, -1)
        if self.n_mult < self.n_groups:  # the last group: totals minus the others (exact whole numbers)
            part = np.concatenate([part, (self.sums.tot - part.sum(axis=0))[None]], axis=0)
        nulls = self.sums.diff(part)  # (G, b, m)
        observed, tol = self.observed[:, None, :], self.tol[:, None, :]
        if self.alternative == "greater":
            hit = nulls >= observed - tol
        elif self.alternative == "less":
            hit = nulls <= observed + tol
        else:
            hit = np.abs(nulls) >= np.abs(observed) - tol
        counts: np.ndarray = hit.sum(axis=1).astype(np.float64)
        return counts
