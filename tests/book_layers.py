"""Layers written as the book "Deep Learning from Scratch" writes them: classes with forward
and backward, params and grads dicts, loss layers with ``forward(x, t)`` and ``backward(dout=1)``;
each with a switch for the mistake a test injects."""

from __future__ import annotations

import book_verbatim
import numpy as np
import torch
from torch import nn


class Affine:
    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.params = {"W": W, "b": b}
        self.grads: dict = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self.grads["W"] = self.x.T @ dout
        self.grads["b"] = dout.sum(axis=0)
        return dout @ self.params["W"].T


class Sigmoid:
    """backward(dout) = dout * derivative(x, y), the derivative chosen per test."""

    def __init__(self, derivative=lambda x, y: y * (1 - y)) -> None:
        self.params: dict = {}
        self.grads: dict = {}
        self.derivative = derivative

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x, self.out = x, 1 / (1 + np.exp(-x))
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout * self.derivative(self.x, self.out)


class Tanh(Sigmoid):
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x, self.out = x, np.tanh(x)
        return self.out


class Relu:
    def __init__(self, blocks_zero: bool = True) -> None:
        self.params: dict = {}
        self.grads: dict = {}
        self.blocks_zero = blocks_zero

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x <= 0 if self.blocks_zero else x < 0
        out = x.copy()
        out[x <= 0] = 0
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dout = dout.copy()
        dout[self.mask] = 0
        return dout


class Softmax:
    def __init__(self, diagonal_only: bool = False) -> None:
        self.params: dict = {}
        self.grads: dict = {}
        self.diagonal_only = diagonal_only

    def forward(self, x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        self.s = e / e.sum(axis=1, keepdims=True)
        return self.s

    def backward(self, dout: np.ndarray) -> np.ndarray:
        s = self.s
        if self.diagonal_only:  # the bug: the elementwise derivative s (1 - s)
            return dout * s * (1 - s)
        return s * (dout - (dout * s).sum(axis=1, keepdims=True))


class SoftmaxWithLoss(book_verbatim.SoftmaxWithLoss):
    """The book's loss layer with ``slope(y)``, the bug injected per test, a factor on its
    backward (1: none)."""

    def __init__(self, slope=lambda y: 1) -> None:
        super().__init__()
        self.slope = slope

    def backward(self, dout: float = 1) -> np.ndarray:
        return super().backward(dout) * self.slope(self.y)


class SigmoidWithLoss:
    """Binary cross-entropy on one logit per example; returns dL/dp, the bug."""

    def forward(self, x: np.ndarray, t: np.ndarray) -> float:
        self.p, self.t = 1 / (1 + np.exp(-x)), t
        return float(-(t * np.log(self.p) + (1 - t) * np.log(1 - self.p)).mean())

    def backward(self, dout: float = 1) -> np.ndarray:
        return dout * (self.p - self.t) / (self.p * (1 - self.p)) / len(self.t)


def twin_linear(layer: Affine) -> nn.Linear:
    w = layer.params["W"]
    lin = nn.Linear(*w.shape).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w.T))
        lin.bias.copy_(torch.from_numpy(layer.params["b"]))
    return lin


class MSE:
    """Mean squared error over all elements, as torch's MSELoss."""

    def forward(self, y: np.ndarray, t: np.ndarray) -> float:
        self.diff = y - t
        return float((self.diff**2).mean())

    def backward(self, dout: float = 1) -> np.ndarray:
        return dout * 2 * self.diff / self.diff.size


class MaxPooling:
    """Book-style 2x2 max pool, stride 2: the gradient goes to ``x == max`` of each window, so
    every tied maximum gets it (``split``: they share it)."""

    def __init__(self, split: bool = False, scale: float = 1.0) -> None:
        self.params: dict = {}
        self.grads: dict = {}
        self.split, self.scale = split, scale

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        self.x = x
        self.out = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        n, c, h, w = self.x.shape
        windows = self.x.reshape(n, c, h // 2, 2, w // 2, 2)
        is_max = (windows == self.out[:, :, :, None, :, None]).astype(float)
        if self.split:
            is_max /= is_max.sum(axis=(3, 5), keepdims=True)
        return (self.scale * is_max * dout[:, :, :, None, :, None]).reshape(n, c, h, w)


class Flatten:
    def __init__(self) -> None:
        self.params: dict = {}
        self.grads: dict = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self.shape)
