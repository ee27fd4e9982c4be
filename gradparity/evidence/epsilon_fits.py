"""Small constants fitted from a layer's input: the epsilon inside a loss's log, a
normalisation's variance epsilon, a clipping bound. Each fit is checked by recomputing ours'
value from the reference's with the fitted constant: a fit that does not reproduce ours within
the tolerance is no fit (None). Torch-free."""

from __future__ import annotations

import numpy as np

from gradparity.core.tolerance import Tolerance

# How small a fitted epsilon may be called one: larger constants change results visibly, and a
# difference they explain is a bug, not a detail.
LARGEST_EPSILON = 1e-2


def _softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _one_hot(target: np.ndarray, classes: int) -> np.ndarray | None:
    """Targets as (N, C) weights: integer classes one-hot, probability rows as they are."""
    t = np.asarray(target)
    if t.ndim == 1 and np.issubdtype(t.dtype, np.number) and np.all(t == np.round(t)):
        if t.min() < 0 or t.max() >= classes:
            return None
        return np.eye(classes)[t.astype(int)]
    return t.astype(np.float64) if t.ndim == 2 and t.shape[1] == classes else None


def loss_epsilon(
    logits: np.ndarray, target: np.ndarray, ours: float, reference: float, tol: Tolerance
) -> float | None:
    """The eps of a cross-entropy written ``-sum(t * log(softmax(z) + eps)) / N`` that turns
    the reference's loss into ours, or None when no such eps reproduces ours.

    logits: (N, C); target: (N,) classes or (N, C) probabilities; ours, reference: the two
    loss values. To first order the loss moves by -eps * sum(t / p) / N, which gives eps;
    the exact loss with that eps must then match ours within ``tol``.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        return None
    t = _one_hot(target, z.shape[1])
    if t is None:
        return None
    p = _softmax(z)
    slope = -float(np.sum(t / p)) / z.shape[0]
    eps = (ours - reference) / slope
    if not 0 < eps < LARGEST_EPSILON:
        return None
    refitted = -float(np.sum(t * np.log(p + eps))) / z.shape[0]
    return eps if tol.matches(np.array(ours), np.array(refitted)) else None


def variance_epsilon(
    variance: np.ndarray,
    ours: np.ndarray,
    reference: np.ndarray,
    reference_eps: float,
    axes: tuple[int, ...],
    tol: Tolerance,
) -> float | None:
    """Ours' variance epsilon, from a normalisation's outputs (same shape, features on axis
    1) and the variance it divided by (one per feature): around each feature's mean, ours is
    the reference scaled by sqrt((var + eps_ref) / (var + eps_ours)). None when no single eps
    reproduces ours within ``tol``. ``axes``: the axes each feature's statistics run over."""
    o, r = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64).reshape(-1)
    ro = r - r.mean(axis=axes, keepdims=True)
    oo = o - o.mean(axis=axes, keepdims=True)
    power = np.sum(ro * ro, axis=axes)
    usable = power > 0
    if not usable.any():
        return None
    k = np.sum(oo * ro, axis=axes)[usable] / power[usable]  # least-squares ratio per feature
    estimates = (var[usable] + reference_eps) / k**2 - var[usable]
    eps = float(np.median(estimates))
    if not 0 <= eps < LARGEST_EPSILON:
        return None
    shape = [1] * r.ndim
    shape[1] = -1
    scale = np.sqrt((var + reference_eps) / (var + eps)).reshape(shape)
    # Each feature's mean is the layer's shift (beta, or where running statistics centre it):
    # ours' is taken as it is, and the fitted eps must explain the spread around it.
    refitted = o.mean(axis=axes, keepdims=True) + ro * scale
    return eps if tol.matches(o, refitted) else None


def clip_bound(ours: np.ndarray, reference: np.ndarray, tol: Tolerance) -> dict | None:
    """{"side", "low", "high"} when every element out of tolerance sits, on one side, on the
    bound of a clip to [low, high] (low = eps, high = 1 - eps, or either alone) that the other
    side does not apply; None otherwise."""
    o, r = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    differs = tol.mismatch(o, r)
    if not differs.any():
        return None
    for side, values, other in (("ours", o, r), ("the reference", r, o)):
        low, high = float(values.min()), float(values.max())
        at = values[differs]
        on_low, on_high = at == low, at == high
        if not np.all(on_low | on_high):
            continue
        beyond = other[differs]
        if np.all(beyond[on_low] < low) and np.all(beyond[on_high] > high):
            return {
                "side": side,
                "low": low if on_low.any() else None,
                "high": high if on_high.any() else None,
            }
    return None
