"""More losses: NLLLoss (on log-probabilities) and BCEWithLogits (on logits).

Same protocol as ``gradparity.ours.losses``: ``forward(prediction, target) -> float`` and
``backward() -> dL/dprediction``; pure ``_fwd``/``_bwd`` functions, classes that only cache.
"""

from __future__ import annotations

import numpy as np

from gradparity.ours.layers import _sigmoid_fwd

# --- NLLLoss --------------------------------------------------------------------------------


def _nll_fwd(log_probs: np.ndarray, target: np.ndarray) -> float:
    """-mean over the batch of log_probs[n, target[n]]."""
    return float(-log_probs[np.arange(len(target)), target].mean())


def _nll_bwd(log_probs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """-1/N at each row's target class, 0 elsewhere; (N, C)."""
    grad = np.zeros_like(log_probs)
    grad[np.arange(len(target)), target] = -1.0 / len(target)
    return grad


def _check_nll_target(log_probs: np.ndarray, target: np.ndarray) -> np.ndarray:
    target = np.asarray(target)
    if log_probs.ndim != 2:
        raise ValueError(f"NLLLoss input must be (N, C) log-probabilities, got {log_probs.shape}")
    if target.shape != (log_probs.shape[0],) or target.dtype.kind not in "iu":
        raise ValueError(
            f"NLLLoss target must be integer classes of shape ({log_probs.shape[0]},), got "
            f"{target.dtype} {target.shape}"
        )
    if target.size and (target.min() < 0 or target.max() >= log_probs.shape[1]):
        raise ValueError(f"NLLLoss target classes must lie in [0, {log_probs.shape[1]})")
    return target


class NLLLoss:
    """Negative log-likelihood, mean over the batch (torch.nn.NLLLoss): put it after a
    ``LogSoftmax``. Shapes: log_probs (N, C); target (N,) integer classes; loss scalar;
    grad (N, C)."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, log_probs: np.ndarray, target: np.ndarray) -> float:
        self._target = _check_nll_target(log_probs, target)
        self._log_probs = log_probs
        return _nll_fwd(log_probs, self._target)

    def backward(self) -> np.ndarray:
        return _nll_bwd(self._log_probs, self._target)


# --- BCEWithLogits --------------------------------------------------------------------------


def _bce_logits_fwd(z: np.ndarray, y: np.ndarray) -> float:
    """mean of max(z, 0) - z y + log(1 + exp(-|z|)): equal to -(y log s + (1 - y) log(1 - s))
    with s = sigmoid(z), without overflow or log(0) for large |z|."""
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def _bce_logits_bwd(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(sigmoid(z) - y) / number of elements; like z."""
    return ((_sigmoid_fwd(z) - y) / z.size).astype(z.dtype, copy=False)


class BCEWithLogits:
    """Binary cross-entropy on logits, mean over all elements (torch.nn.BCEWithLogitsLoss).

    Shapes: logits (N, ...); target like logits, floats in [0, 1]; loss scalar; grad like
    logits.
    """

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, logits: np.ndarray, target: np.ndarray) -> float:
        target = np.asarray(target)
        if target.shape != logits.shape:
            raise ValueError(
                f"BCEWithLogits target shape {target.shape} differs from logits {logits.shape}"
            )
        if target.size and (target.min() < 0 or target.max() > 1):
            raise ValueError("BCEWithLogits target must lie in [0, 1]")
        self._logits = logits
        self._target = target.astype(logits.dtype, copy=False)
        return _bce_logits_fwd(logits, self._target)

    def backward(self) -> np.ndarray:
        return _bce_logits_bwd(self._logits, self._target)
