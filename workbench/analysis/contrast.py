"""Target-vs-control contrast of per-prompt rates: difference, bootstrap CI, permutation p.

Used by resonance (fTRI and rd): per statistic, ``rate_T − rate_C`` where each rate is a ratio of
sums over prompts, a prompt-cluster bootstrap CI, and a permutation p of the *studentized*
difference (difference ÷ its delta-method SE, prompts as clusters; pair differences when paired),
which stays valid when the classes differ in size and spread (docs/methods.md §0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.analysis.stats import BLOCK, MIN_CI_PROMPTS, as_2d, safe_ratio

__all__ = ["Contrast", "contrast_test"]


@dataclass(frozen=True)
class Contrast:
    """Result of :func:`contrast_test`: each array has one entry per statistic (column)."""

    diff: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p: np.ndarray
    rate_target: np.ndarray
    rate_control: np.ndarray


def contrast_test(
    num: np.ndarray,
    den: np.ndarray,
    is_target: np.ndarray,
    *,
    pairs: np.ndarray | None = None,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int | np.random.SeedSequence = 0,
    level: float = 0.95,
) -> Contrast:
    """Two-class difference of ratios of sums, ``Σ_T num/Σ_T den − Σ_C num/Σ_C den``, with CI and p.

    Rows are prompts (clusters); rows whose denominator is 0 everywhere take no part.
    Unpaired: the CI is a stratified percentile bootstrap (target and control prompts
    resampled separately, so each class keeps its size) and p a two-sided permutation test
    shuffling the class labels across prompts. With ``pairs`` (``(P, 2)`` row indices of
    matched (target, control) prompts, which must cover every participating row) the
    bootstrap resamples whole pairs and the permutation swaps the two members of each pair
    with probability ½ — the matching is kept in every replicate. p uses the +1 correction.

    The permuted statistic is *studentized* (:class:`_Studentized`: the difference over its
    delta-method standard error), not the raw difference. With unbalanced classes whose prompts
    differ in length (so in variance), the raw difference's permutation null has the wrong
    spread and the test rejects too often (14% at α = 0.05 in a length-only null with 30 long vs
    18 short prompts); the studentized test is exact under exchangeability and asymptotically
    valid without it (Janssen 1997; Chung & Romano 2013). ``diff``, the CI and ``rate_*`` are
    unchanged. With fewer than 2 target or control prompts (2 pairs when paired) the CI is NaN:
    resampling one prompt reproduces it, so the interval would understate the uncertainty.
    """
    num2, den2 = as_2d(num, den)
    target = np.asarray(is_target, dtype=bool)
    active = np.asarray((den2 > 0).any(axis=1), dtype=bool)
    rng = np.random.default_rng(seed)

    def rates(w_t: np.ndarray, w_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return safe_ratio(w_t @ num2, w_t @ den2), safe_ratio(w_c @ num2, w_c @ den2)

    t_mask, c_mask = (target & active).astype(np.float64), (~target & active).astype(np.float64)
    rate_t, rate_c = rates(t_mask, c_mask)
    diff = rate_t - rate_c
    m = diff.shape[0]
    alpha = (1.0 - level) / 2.0
    reps = np.empty((max(n_boot, 0), m))
    n = num2.shape[0]
    for start in range(0, max(n_boot, 0), BLOCK):
        b = min(BLOCK, n_boot - start)
        w_t, w_c = np.zeros((b, n)), np.zeros((b, n))
        if pairs is not None:
            draws = rng.multinomial(len(pairs), np.full(len(pairs), 1.0 / len(pairs)), size=b).astype(float)
            w_t[:, pairs[:, 0]], w_c[:, pairs[:, 1]] = draws, draws
        else:
            for mask, w in ((t_mask > 0, w_t), (c_mask > 0, w_c)):
                idx = np.flatnonzero(mask)
                if idx.size:
                    w[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=b)
        r_t, r_c = rates(w_t, w_c)
        reps[start : start + b] = r_t - r_c
    nan = np.full(m, np.nan)
    low, high = nan, nan.copy()
    # Fewer than MIN_CI_PROMPTS units on a side: its resampling has no spread, so no interval.
    units = (len(pairs),) if pairs is not None else (int(t_mask.sum()), int(c_mask.sum()))
    if n_boot > 0 and m and min(units) >= MIN_CI_PROMPTS:
        with np.errstate(invalid="ignore"):
            low, high = np.nanquantile(reps, [alpha, 1.0 - alpha], axis=0)
    count = np.zeros(m)
    student = _Studentized(num2, den2, pairs)
    observed = student(t_mask[None], c_mask[None], np.zeros((1, 0 if pairs is None else len(pairs))))[0]
    tol = 1e-9 * np.maximum(1.0, np.abs(np.nan_to_num(observed)))
    idx = np.flatnonzero(active)
    n_t = int((target & active).sum())
    for start in range(0, max(n_perm, 0), BLOCK):
        b = min(BLOCK, n_perm - start)
        w_t = np.zeros((b, n))
        flip = np.zeros((b, 0))
        if pairs is not None:
            flip = (rng.random((b, len(pairs))) < 0.5).astype(np.float64)
            w_t[:, pairs[:, 0]], w_t[:, pairs[:, 1]] = 1.0 - flip, flip
        else:
            order = rng.permuted(np.broadcast_to(np.arange(idx.size), (b, idx.size)), axis=1)
            w_t[np.arange(b)[:, None], idx[order[:, :n_t]]] = 1.0
        w_c = np.logical_and(active[None, :], w_t == 0).astype(np.float64)
        count += (np.abs(student(w_t, w_c, flip)) >= np.abs(observed) - tol).sum(axis=0)
    p = (count + 1.0) / (n_perm + 1.0) if n_perm > 0 else nan.copy()
    p = np.where(np.isnan(diff), np.nan, p)
    return Contrast(diff, np.asarray(low), np.asarray(high), p, rate_t, rate_c)


class _Studentized:
    """``(rate_T − rate_C) / SE`` per column for blocks of class assignments (see :func:`contrast_test`).

    Each class's rate is a ratio of sums ``R = Σ w·num / Σ w·den`` over its prompts; its delta-method
    variance is ``Σ w (num − R·den)² / (Σ w·den)² · n/(n − 1)`` (prompts as clusters). Unpaired, SE² is
    the sum of the two classes' variances; paired, it is the variance of the per-pair differences of
    the linearised terms, ``Σ_p a_p² · P/(P − 1)`` with ``a_p = (num_tp − R_T den_tp)/Σ_T den −
    (num_cp − R_C den_cp)/Σ_C den``. Where SE is 0 the statistic is 0 for a zero difference, else ±inf.
    """

    def __init__(self, num: np.ndarray, den: np.ndarray, pairs: np.ndarray | None) -> None:
        self.num, self.den, self.pairs = num, den, pairs
        self.nn, self.nd, self.dd = num * num, num * den, den * den
        if pairs is not None:
            nx, ny, dx, dy = num[pairs[:, 0]], num[pairs[:, 1]], den[pairs[:, 0]], den[pairs[:, 1]]
            self.nx_ny, self.dx_dy = (nx * ny).sum(axis=0), (dx * dy).sum(axis=0)
            self.nx_dy, self.ny_dx, self.dx_ny, self.dy_nx = nx * dy, ny * dx, dx * ny, dy * nx

    def _sums(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rate ``R``, ``Σ w (num − R den)²`` and ``Σ w den`` of the class weighted by ``w``."""
        s_n, s_d = w @ self.num, w @ self.den
        rate = safe_ratio(s_n, s_d)
        return (
            rate,
            np.maximum(w @ self.nn - 2.0 * rate * (w @ self.nd) + rate * rate * (w @ self.dd), 0.0),
            s_d,
        )

    def _unpaired(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rate, ss, s_d = self._sums(w)
        k = w.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            var = ss / (s_d * s_d) * np.where(k > 1, k / np.maximum(k - 1, 1), np.nan)
        return rate, var

    def _paired(self, w_t: np.ndarray, w_c: np.ndarray, flip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rates and paired variance from matrix products only.

        With u = num_t − R_T den_t and v = num_c − R_C den_c per pair, ``Σ a² = Σu²/D_T² + Σv²/D_C² −
        2 Σuv/(D_T D_C)``; ``Σuv`` needs the cross products of the two members of each pair, of which
        ``num_x num_y`` and ``den_x den_y`` do not depend on the swap and the mixed ones are
        ``(1 − f) @ (num_x den_y) + f @ (num_y den_x)``.
        """
        (r_t, ss_t, d_t), (r_c, ss_c, d_c) = self._sums(w_t), self._sums(w_c)
        keep = 1.0 - flip
        nt_dc = keep @ self.nx_dy + flip @ self.ny_dx
        dt_nc = keep @ self.dx_ny + flip @ self.dy_nx
        cross = self.nx_ny - r_c * nt_dc - r_t * dt_nc + r_t * r_c * self.dx_dy
        n_pairs = flip.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            var = ss_t / (d_t * d_t) + ss_c / (d_c * d_c) - 2.0 * cross / (d_t * d_c)
        return r_t - r_c, np.maximum(var, 0.0) * (n_pairs / max(n_pairs - 1, 1))

    def __call__(self, w_t: np.ndarray, w_c: np.ndarray, flip: np.ndarray) -> np.ndarray:
        if self.pairs is not None:
            diff, var = self._paired(w_t, w_c, flip)
        else:
            (r_t, v_t), (r_c, v_c) = self._unpaired(w_t), self._unpaired(w_c)
            diff, var = r_t - r_c, v_t + v_c
        se = np.sqrt(var)
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = np.where(
                se > 0, diff / np.where(se > 0, se, 1.0), np.where(diff == 0, 0.0, np.sign(diff) * np.inf)
            )
        return np.where(np.isnan(diff), np.nan, stat)
