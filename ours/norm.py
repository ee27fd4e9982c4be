"""Normalisation and dropout layers: BatchNorm1d, BatchNorm2d, LayerNorm, Dropout.

Torch's conventions throughout. Batch norm in training normalises with the batch's mean and
biased variance and moves its running statistics by ``momentum`` (the new batch's weight)
towards the batch mean and the unbiased variance; in eval it normalises with the running
statistics. Each layer has a ``training`` flag and ``train()``/``eval()`` as torch's modules.
The maths sits in pure ``_fwd``/``_bwd`` functions; the classes only cache and keep state.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from gradparity.ours.layers import Layer

# --- shared normalisation maths -------------------------------------------------------------


def _normalize_fwd(
    x: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """(xhat, inv_std): x centred by ``mean`` and divided by sqrt(var + eps); ``mean`` and
    ``var`` broadcast against x."""
    inv_std = 1.0 / np.sqrt(var + eps)
    return (x - mean) * inv_std, inv_std


def _normalize_bwd(
    dxhat: np.ndarray, xhat: np.ndarray, inv_std: np.ndarray, axes: tuple[int, ...]
) -> np.ndarray:
    """dL/dx of xhat = (x - mean(x)) / sqrt(var(x) + eps), statistics over ``axes`` of x:
    the direct term less the mean term and the variance term."""
    count = math.prod(dxhat.shape[a] for a in axes)
    mean_term = dxhat.sum(axis=axes, keepdims=True)
    var_term = xhat * (dxhat * xhat).sum(axis=axes, keepdims=True)
    return inv_std * (count * dxhat - mean_term - var_term) / count


def _affine_bwd(
    grad_out: np.ndarray, xhat: np.ndarray, axes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(dL/dgamma, dL/dbeta) of y = gamma * xhat + beta, summed over ``axes``."""
    return (grad_out * xhat).sum(axis=axes), grad_out.sum(axis=axes)


def _init_affine(
    shape: tuple[int, ...], rng: np.random.Generator | None, dtype: npt.DTypeLike
) -> dict[str, np.ndarray]:
    """gamma near 1 and beta near 0 but not exactly: an identity affine hides gamma and beta
    bugs (torch starts at 1 and 0)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    return {
        "gamma": (1.0 + 0.1 * rng.standard_normal(shape)).astype(dtype),
        "beta": (0.1 * rng.standard_normal(shape)).astype(dtype),
    }


def _check_mode(training: object) -> None:
    if not isinstance(training, bool):
        raise ValueError(f"training must be True or False, not {training!r}")


_M = TypeVar("_M", bound="_Moded")


class _Moded(Layer):
    """A layer that computes something else in training and eval, switched as torch's."""

    def __init__(self) -> None:
        super().__init__()
        self.training = True

    def train(self: _M, mode: bool = True) -> _M:
        """Training mode (``mode=False``: eval mode); returns the layer, as torch does."""
        _check_mode(mode)
        self.training = mode
        return self

    def eval(self: _M) -> _M:
        return self.train(False)


# --- batch norm -----------------------------------------------------------------------------


def _batch_axes(x: np.ndarray) -> tuple[int, ...]:
    """The axes batch norm reduces over: all but the channel axis 1."""
    return (0, *range(2, x.ndim))


def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector against x (N, C, ...)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _batch_norm_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, biased variance, unbiased variance) per channel of x (N, C, ...)."""
    axes = _batch_axes(x)
    count = x.size // x.shape[1]
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    return mean, var, var * (count / (count - 1))


def _running_update(running: np.ndarray, batch: np.ndarray, momentum: float) -> np.ndarray:
    """torch's rule: the new batch weighs ``momentum``, the old average 1 - momentum."""
    return (1.0 - momentum) * running + momentum * batch


class _BatchNorm(_Moded):
    """Batch norm over the channel axis 1; subclasses fix the accepted input ranks."""

    RANKS: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        rng: np.random.Generator | None = None,
        dtype: npt.DTypeLike = np.float64,
    ) -> None:
        super().__init__()
        if momentum is None:
            raise ValueError("momentum=None (a cumulative average) is not supported")
        if not track_running_stats:
            raise ValueError("track_running_stats=False is not supported")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], not {momentum}")
        self.num_features, self.eps = num_features, eps
        self.momentum, self.affine = momentum, affine
        if affine:
            self.params.update(_init_affine((num_features,), rng, dtype))
        self.running_mean = np.zeros(num_features, dtype=dtype)
        self.running_var = np.ones(num_features, dtype=dtype)

    def _check(self, x: np.ndarray) -> None:
        name = type(self).__name__
        if x.ndim not in self.RANKS or x.shape[1] != self.num_features:
            ranks = " or ".join(f"{r}-D" for r in self.RANKS)
            raise ValueError(
                f"{name}({self.num_features}) takes {ranks} input with {self.num_features} "
                f"channels on axis 1, got shape {x.shape}"
            )
        if self.training and x.size // x.shape[1] < 2:
            raise ValueError(f"{name} in training needs more than one value per channel")

    def _update_running(self, mean: np.ndarray, unbiased_var: np.ndarray) -> None:
        """Move the running statistics towards this batch's (both (C,))."""
        self.running_mean = _running_update(self.running_mean, mean, self.momentum)
        self.running_var = _running_update(self.running_var, unbiased_var, self.momentum)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check(x)
        shape = _channel_shape(x)
        if self.training:
            mean, var, unbiased = _batch_norm_stats(x)
            self._update_running(mean, unbiased)
        else:
            mean, var = self.running_mean, self.running_var
        self._xhat, self._inv_std = _normalize_fwd(
            x, mean.reshape(shape), var.reshape(shape), self.eps
        )
        y = self._xhat
        if self.affine:
            y = self.params["gamma"].reshape(shape) * y + self.params["beta"].reshape(shape)
        return y.astype(x.dtype, copy=False)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        axes, shape = _batch_axes(grad_out), _channel_shape(grad_out)
        dxhat = grad_out
        if self.affine:
            grad_gamma, grad_beta = _affine_bwd(grad_out, self._xhat, axes)
            self._accumulate(gamma=grad_gamma, beta=grad_beta)
            dxhat = grad_out * self.params["gamma"].reshape(shape)
        if self.training:
            grad_x = _normalize_bwd(dxhat, self._xhat, self._inv_std, axes)
        else:  # the running statistics are constants
            grad_x = dxhat * self._inv_std
        return grad_x.astype(grad_out.dtype, copy=False)


class BatchNorm1d(_BatchNorm):
    """Batch norm per feature (torch.nn.BatchNorm1d).

    Shapes: x (N, C) or (N, C, L), y like x; gamma, beta, running_mean, running_var (C,).
    Options: eps, momentum (the new batch's weight in the running averages), affine (False:
    no gamma/beta). Training (default) normalises with the batch's biased variance and updates
    the running statistics (unbiased variance); ``eval()`` normalises with them.
    Refused: momentum=None, track_running_stats=False.
    """

    RANKS = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm per channel of images (torch.nn.BatchNorm2d).

    Shapes: x (N, C, H, W), y like x; gamma, beta, running_mean, running_var (C,).
    Options and modes as ``BatchNorm1d``.
    """

    RANKS = (4,)


# --- layer norm -----------------------------------------------------------------------------


class LayerNorm(Layer):
    """Normalises each example over its last dims (torch.nn.LayerNorm), the same in training
    and eval.

    Shapes: x (..., *normalized_shape), y like x; gamma, beta normalized_shape.
    Options: normalized_shape (an int or a tuple of the last dims), eps, elementwise_affine
    (False: no gamma/beta), bias (False: gamma only).
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        rng: np.random.Generator | None = None,
        dtype: npt.DTypeLike = np.float64,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape = tuple(int(d) for d in shape)
        self.eps, self.elementwise_affine, self.bias = eps, elementwise_affine, bias
        if elementwise_affine:
            affine = _init_affine(self.normalized_shape, rng, dtype)
            self.params["gamma"] = affine["gamma"]
            if bias:
                self.params["beta"] = affine["beta"]

    def _axes(self, x: np.ndarray) -> tuple[int, ...]:
        k = len(self.normalized_shape)
        if x.ndim < k or x.shape[x.ndim - k :] != self.normalized_shape:
            raise ValueError(
                f"LayerNorm{self.normalized_shape} takes input ending in "
                f"{self.normalized_shape}, got shape {x.shape}"
            )
        return tuple(range(x.ndim - k, x.ndim))

    def forward(self, x: np.ndarray) -> np.ndarray:
        axes = self._axes(x)
        mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        self._xhat, self._inv_std = _normalize_fwd(x, mean, var, self.eps)
        y = self._xhat
        if "gamma" in self.params:
            y = y * self.params["gamma"]
        if "beta" in self.params:
            y = y + self.params["beta"]
        return y.astype(x.dtype, copy=False)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        axes = self._axes(grad_out)
        leading = tuple(range(grad_out.ndim - len(axes)))
        dxhat = grad_out
        if "gamma" in self.params:
            grad_gamma, grad_beta = _affine_bwd(grad_out, self._xhat, leading)
            self._accumulate(gamma=grad_gamma)
            if "beta" in self.params:
                self._accumulate(beta=grad_beta)
            dxhat = grad_out * self.params["gamma"]
        grad_x = _normalize_bwd(dxhat, self._xhat, self._inv_std, axes)
        return grad_x.astype(grad_out.dtype, copy=False)


# --- dropout --------------------------------------------------------------------------------


def _dropout_scale(p: float) -> float:
    """1 / (1 - p), the factor that keeps the expected output; 0 when everything drops."""
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)


def _dropout_fwd(x: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
    return x * keep * _dropout_scale(p)


def _dropout_bwd(grad_out: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
    return grad_out * keep * _dropout_scale(p)


class Dropout(_Moded):
    """Zeroes each element with probability p in training and scales the kept ones by
    1 / (1 - p) (torch.nn.Dropout); the identity in eval.

    Shapes: x (N, ...), y like x; ``mask`` (like x, bool: True where kept) is the mask the last
    training forward applied, None after an eval one.
    Masks: drawn from ``rng``, or given: ``next_mask`` (like x) is used by the next forward
    only; ``pinned_mask`` by every training forward until set back to None (what a comparison
    that runs the layer several times needs). The torch mirror applies the mask ours applied
    (``gradparity.reference.mirror_norm``). A user's own ``nn.Dropout`` draws its own masks:
    match it with both sides in eval mode, or with p=0.
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability p must lie in [0, 1], not {p}")
        self.p = float(p)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.mask: np.ndarray | None = None
        self.next_mask: np.ndarray | None = None
        self.pinned_mask: np.ndarray | None = None

    def _keep_mask(self, x: np.ndarray) -> np.ndarray:
        given, self.next_mask = self.next_mask, None
        if given is None:
            given = self.pinned_mask
        if given is None:
            return self.rng.random(x.shape) >= self.p
        keep = np.asarray(given)
        if keep.shape != x.shape:
            raise ValueError(f"Dropout mask of shape {keep.shape} given for input {x.shape}")
        return keep.astype(bool)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.training:
            self.mask = None
            return x
        self.mask = self._keep_mask(x)
        return _dropout_fwd(x, self.mask, self.p).astype(x.dtype, copy=False)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self.mask is None:
            return grad_out
        return _dropout_bwd(grad_out, self.mask, self.p).astype(grad_out.dtype, copy=False)
