"""The router's score distribution ``π`` recomputed from stored logits (docs/methods.md notation).

``π`` is what the model computes from its raw logits ``z``: softmax for most routers, sigmoid
for DeepSeek-V3-style ones (the correction bias only steers selection and is not stored),
sqrt-softplus for a few, and the stored values themselves for routers that return probabilities.
Non-softmax scores do not sum to 1; ``normalise=True`` rescales them so they do (for entropies
and cumulative-mass thresholds), ``normalise=False`` keeps the model's own scale (for margins).
"""

from __future__ import annotations

import numpy as np

SCORE_FNS = ("softmax", "sigmoid", "sqrtsoftplus", "probs")


def _scores(z: np.ndarray, score_fn: str | None, normalise: bool, axis: int) -> np.ndarray:
    """``π`` of float64 logits ``z`` with each token's scores along ``axis`` (1: ``(N, E)``, 0: ``(E, N)``)."""
    fn = "softmax" if score_fn is None else score_fn
    if fn == "softmax":
        e: np.ndarray = z - z.max(axis=axis, keepdims=True)
        np.exp(e, out=e)
        e /= e.sum(axis=axis, keepdims=True)
        return e
    if fn == "probs":
        s = z
    elif fn == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
    elif fn == "sqrtsoftplus":
        s = np.sqrt(np.logaddexp(0.0, z))
    else:
        raise ValueError(f"unknown score_fn {score_fn!r}; expected one of {', '.join(SCORE_FNS)}")
    return s / s.sum(axis=axis, keepdims=True) if normalise and fn != "probs" else s


def router_scores(logits: np.ndarray, score_fn: str | None, *, normalise: bool = True) -> np.ndarray:
    """``π`` as float64 from ``(N, E)`` logits under the layer's ``score_fn`` (None means softmax)."""
    return _scores(np.asarray(logits, dtype=np.float64), score_fn, normalise, axis=1)


def router_scores_t(z_t: np.ndarray, score_fn: str | None, *, normalise: bool = True) -> np.ndarray:
    """:func:`router_scores` in the transposed ``(E, N)`` layout (one row per expert), float64.

    The same formula, with every per-token reduction taken along axis 0 (contiguous, so fast);
    results agree with :func:`router_scores` up to the rounding of the sums (~1e-16 relative).
    """
    return _scores(np.asarray(z_t, dtype=np.float64), score_fn, normalise, axis=0)
