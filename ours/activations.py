"""More activations: GELU (exact and tanh-approximated), LeakyReLU and LogSoftmax.

Follows the layer protocol of ``gradparity.ours.layers``: pure ``_fwd``/``_bwd`` functions next
to each other, classes that only cache, the input's dtype kept.
"""

from __future__ import annotations

import math

import numpy as np

from gradparity.ours.layers import Layer, _sigmoid_fwd

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715  # the cubic coefficient of torch's GELU(approximate="tanh")
# NumPy has no erf; math.erf, mapped over the array, is exact to float64 and needs no SciPy.
_erf = np.frompyfunc(math.erf, 1, 1)


# --- GELU -----------------------------------------------------------------------------------


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, computed in float64."""
    erf = np.asarray(_erf(x.astype(np.float64) / math.sqrt(2.0)), dtype=np.float64)
    return 0.5 * (1.0 + erf)


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    """phi(x) = exp(-x^2 / 2) / sqrt(2 pi), computed in float64."""
    x64 = x.astype(np.float64)
    return np.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)


def _gelu_fwd(x: np.ndarray) -> np.ndarray:
    """x Phi(x)."""
    return (x * _normal_cdf(x)).astype(x.dtype, copy=False)


def _gelu_bwd(x: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    """grad_out (Phi(x) + x phi(x)): the product rule on x Phi(x)."""
    local = _normal_cdf(x) + x * _normal_pdf(x)
    return (grad_out * local).astype(grad_out.dtype, copy=False)


def _tanh_inner(x: np.ndarray) -> np.ndarray:
    """u = sqrt(2/pi) (x + 0.044715 x^3), the argument of tanh in the approximation."""
    return _SQRT_2_OVER_PI * (x + _TANH_CUBIC * x**3)


def _gelu_tanh_fwd(x: np.ndarray) -> np.ndarray:
    """x (1 + tanh(u)) / 2, as x sigmoid(2u): the same value without the cancellation of
    1 + tanh(u) near -1, which in float32 leaves no digit of y for x below about -4."""
    return (x * _sigmoid_fwd(2.0 * _tanh_inner(x))).astype(x.dtype, copy=False)


def _gelu_tanh_bwd(x: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    """grad_out ((1 + t) / 2 + x (1 - t^2) u' / 2), t = tanh(u), u' = sqrt(2/pi) (1 + 3 c x^2),
    as grad_out (s + 2 x s s' u') with s = sigmoid(2u), s' = sigmoid(-2u) = 1 - s: no
    cancellation in 1 + t or 1 - t^2."""
    inner = 2.0 * _tanh_inner(x)
    s, s_neg = _sigmoid_fwd(inner), _sigmoid_fwd(-inner)
    du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_CUBIC * x * x)
    local = s + 2.0 * x * s * s_neg * du
    return (grad_out * local).astype(grad_out.dtype, copy=False)


_GELU_FORMS = {"none": (_gelu_fwd, _gelu_bwd), "tanh": (_gelu_tanh_fwd, _gelu_tanh_bwd)}


class GELU(Layer):
    """y = x Phi(x) (Phi the standard normal CDF), elementwise (torch.nn.GELU).

    ``approximate="none"`` is the exact erf form; ``"tanh"`` is torch's approximation
    x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2. Shapes: x (N, ...), y like x.
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in _GELU_FORMS:
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return _GELU_FORMS[self.approximate][0](x)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return _GELU_FORMS[self.approximate][1](self._x, grad_out)


# --- LeakyReLU ------------------------------------------------------------------------------


def _leaky_relu_fwd(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x > 0, x, slope * x).astype(x.dtype, copy=False)


def _leaky_relu_bwd(x: np.ndarray, grad_out: np.ndarray, slope: float) -> np.ndarray:
    # At x == 0 the slope applies, as in torch.
    return np.where(x > 0, grad_out, slope * grad_out).astype(grad_out.dtype, copy=False)


class LeakyReLU(Layer):
    """y = x where x > 0, negative_slope * x elsewhere (torch.nn.LeakyReLU); derivative
    negative_slope at x == 0 (torch's convention). Shapes: x (N, ...), y like x."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return _leaky_relu_fwd(x, self.negative_slope)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return _leaky_relu_bwd(self._x, grad_out, self.negative_slope)


# --- LogSoftmax -----------------------------------------------------------------------------


def _log_softmax_fwd(z: np.ndarray, axis: int) -> np.ndarray:
    """z - logsumexp(z) along ``axis``, shifted by the max so exp never overflows."""
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _log_softmax_bwd(y: np.ndarray, grad_out: np.ndarray, axis: int) -> np.ndarray:
    """grad_out - softmax * sum(grad_out) along ``axis`` (softmax = exp(y))."""
    return grad_out - np.exp(y) * grad_out.sum(axis=axis, keepdims=True)


class LogSoftmax(Layer):
    """y = z - log(sum(exp(z))) along ``dim`` (torch.nn.LogSoftmax).

    Shapes: z (N, ..., C, ...), y like z; ``dim`` (default -1, the last axis) is the axis
    normalised, checked against the input at each forward.
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"LogSoftmax dim={self.dim} is out of range for {x.ndim}-d input")
        self._y = _log_softmax_fwd(x, self.dim)
        return self._y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return _log_softmax_bwd(self._y, grad_out, self.dim)
