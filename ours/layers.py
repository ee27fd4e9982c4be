"""Layers of the NumPy framework. Each follows the gradparity layer protocol:

    forward(x) -> y          caches what backward needs
    backward(grad_out) -> grad_in, and adds to ``grads`` (same keys as ``params``; like torch,
                              gradients add up until an optimiser's ``zero_grad``)

The maths sits in pure ``_fwd``/``_bwd`` functions next to each other; the classes only cache.
Every layer keeps its input's dtype (float32 stays float32, float64 stays float64).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class Layer:
    """Base class: empty ``params``/``grads`` and the protocol methods."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _accumulate(self, **grads: np.ndarray) -> None:
        """Add to the stored gradients, as torch does: an optimiser's ``zero_grad`` resets them
        between steps, and two backward passes without one add up."""
        for key, grad in grads.items():
            if key in self.grads:
                self.grads[key] += grad
            else:
                self.grads[key] = grad

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={v.shape}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"


# --- Linear -------------------------------------------------------------------------------


def _linear_fwd(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    return x @ W + b


def _linear_bwd(
    x: np.ndarray, W: np.ndarray, grad_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (grad_x, grad_W, grad_b)."""
    return grad_out @ W.T, x.T @ grad_out, grad_out.sum(axis=0)


class Linear(Layer):
    """y = x @ W + b.

    Shapes: x (N, in), W (in, out), b (out,), y (N, out).
    Init: W ~ U(-1/sqrt(in), 1/sqrt(in)) like torch.nn.Linear; b likewise (non-zero on purpose:
    a zero bias hides bias bugs).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rng: np.random.Generator | None = None,
        dtype: npt.DTypeLike = np.float64,
    ) -> None:
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        bound = 1.0 / np.sqrt(in_features)
        self.params["W"] = rng.uniform(-bound, bound, (in_features, out_features)).astype(dtype)
        self.params["b"] = rng.uniform(-bound, bound, (out_features,)).astype(dtype)
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return _linear_fwd(x, self.params["W"], self.params["b"])

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._x is None:
            raise RuntimeError("Linear.backward called before forward")
        grad_x, grad_W, grad_b = _linear_bwd(self._x, self.params["W"], grad_out)
        self._accumulate(W=grad_W, b=grad_b)
        return grad_x


# --- Elementwise activations ----------------------------------------------------------------


def _sigmoid_fwd(x: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows; both branches equal 1 / (1 + exp(-x)).
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def _sigmoid_bwd(y: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    return grad_out * y * (1.0 - y)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)), elementwise. Shapes: x (N, ...), y like x."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = _sigmoid_fwd(x)
        return self._y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return _sigmoid_bwd(self._y, grad_out)


def _tanh_bwd(y: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    return grad_out * (1.0 - y * y)


class Tanh(Layer):
    """y = tanh(x), elementwise. Shapes: x (N, ...), y like x."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = np.tanh(x)
        return self._y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return _tanh_bwd(self._y, grad_out)


def _relu_bwd(x: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    return grad_out * (x > 0)


class ReLU(Layer):
    """y = max(x, 0), elementwise; derivative 0 at x == 0 (torch's convention).

    Shapes: x (N, ...), y like x.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return np.maximum(x, 0).astype(x.dtype, copy=False)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return _relu_bwd(self._x, grad_out).astype(grad_out.dtype, copy=False)


# --- Softmax ------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, shifted by the row max for stability."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_jacobian(s: np.ndarray) -> np.ndarray:
    """Per-row Jacobian J[n, i, j] = d s_i / d z_j = s_i (delta_ij - s_j). s (N, C) -> (N, C, C)."""
    eye = np.eye(s.shape[-1], dtype=s.dtype)
    return s[:, :, None] * (eye[None] - s[:, None, :])


def _softmax_bwd(s: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    # grad_in[n, j] = sum_i grad_out[n, i] * J[n, i, j]; the full Jacobian, not the shortcut
    # s * (g - <g, s>), so each term can be checked (and broken) on its own.
    return np.einsum("ni,nij->nj", grad_out, _softmax_jacobian(s))


class Softmax(Layer):
    """Softmax over the last axis as a separate layer. Shapes: z (N, C), s (N, C)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._s = softmax(x)
        return self._s

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return _softmax_bwd(self._s, grad_out)
