"""Losses: ``forward(prediction, target) -> float`` and ``backward() -> dL/dprediction``."""

from __future__ import annotations

import numpy as np

from gradparity.ours.layers import softmax


def _check_class_targets(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    target = np.asarray(target)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {logits.shape}")
    if target.shape == logits.shape and np.issubdtype(target.dtype, np.floating):
        return target  # class probabilities (one-hot rows included)
    if target.shape != (logits.shape[0],) or not np.issubdtype(target.dtype, np.integer):
        raise ValueError(
            f"target must be integer class indices of shape ({logits.shape[0]},) or float "
            f"class probabilities of shape {logits.shape}, got {target.dtype} {target.shape}"
        )
    if target.size and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(f"target classes must lie in [0, {logits.shape[1]}), got {target}")
    return target


def _softmax_ce_fwd(z: np.ndarray, target: np.ndarray) -> float:
    """Mean over the batch of logsumexp(z) - z[target] (probabilities p: sum_c p_c (logsumexp(z)
    - z_c)), computed from logsumexp: exact even where softmax underflows."""
    # Both terms relative to the row max, which cancels: adding it back first would leave a
    # confident row's small loss with an error of an ulp of the logits (1.7e-7 on a loss of
    # 8.8e-4 in float32), where torch's log_softmax keeps it to an ulp of the loss.
    shifted = z - z.max(axis=-1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=-1))
    if target.ndim == 2:
        return float(((log_sum[:, None] - shifted) * target).sum(axis=-1).mean())
    return float((log_sum - shifted[np.arange(len(target)), target]).mean())


def _softmax_ce_bwd(s: np.ndarray, target: np.ndarray) -> np.ndarray:
    if target.ndim == 2:  # d/dz of sum_c p_c (lse - z_c) is softmax * sum(p) - p
        return (s * target.sum(axis=-1, keepdims=True) - target) / len(target)
    grad = s.copy()
    grad[np.arange(len(target)), target] -= 1.0
    return grad / len(target)


class SoftmaxCrossEntropy:
    """Fused softmax + cross-entropy, mean over the batch (torch.nn.CrossEntropyLoss).

    Shapes: logits (N, C); target (N,) integer classes or (N, C) float class probabilities
    (one-hot rows included), as torch takes them; loss scalar; grad (N, C).
    """

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, logits: np.ndarray, target: np.ndarray) -> float:
        self._target = _check_class_targets(logits, target)
        self._s = softmax(logits)
        return _softmax_ce_fwd(logits, self._target)

    def backward(self) -> np.ndarray:
        return _softmax_ce_bwd(self._s, self._target).astype(self._s.dtype, copy=False)


class MSE:
    """Mean squared error over all elements (torch.nn.MSELoss).

    Shapes: prediction (N, ...), target like prediction; loss scalar; grad like prediction.
    """

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> float:
        target = np.asarray(target)
        if target.shape != prediction.shape:
            raise ValueError(
                f"MSE target shape {target.shape} differs from prediction {prediction.shape}"
            )
        self._diff = prediction - target.astype(prediction.dtype, copy=False)
        return float(np.mean(self._diff**2))

    def backward(self) -> np.ndarray:
        return 2.0 * self._diff / self._diff.size
