"""Small in-repository stand-ins of layers from frameworks that keep state between calls.

``FullyConnected`` follows numpy-ml (``numpy_ml.neural_nets.layers.FullyConnected``): each
forward appends its input to ``self.X`` and the next backward pairs its upstream gradients with
that list until ``flush_gradients()`` empties it; gradients accumulate in ``self.gradients``.
``Dense`` follows ML-From-Scratch (``mlfromscratch.deep_learning.layers.Dense``): backward
updates ``W`` and ``w0`` itself through per-parameter optimisers and keeps no gradient.
"""

from __future__ import annotations

import copy
import math

import numpy as np


class FullyConnected:
    """numpy-ml style: ``parameters``/``gradients`` dicts, an input list flushed on demand."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        self.parameters = {
            "W": rng.standard_normal((n_in, n_out)) / np.sqrt(n_in),
            "b": rng.standard_normal((1, n_out)) * 0.5,
        }
        self.gradients = {k: np.zeros_like(v) for k, v in self.parameters.items()}
        self.X: list[np.ndarray] = []

    def forward(self, X, retain_derived=True):
        if retain_derived:
            self.X.append(X)
        return X @ self.parameters["W"] + self.parameters["b"]

    def backward(self, dLdy, retain_grads=True):
        if not isinstance(dLdy, list):
            dLdy = [dLdy]
        dX = []
        for dy, x in zip(dLdy, self.X):
            dX.append(dy @ self.parameters["W"].T)
            if retain_grads:
                self.gradients["W"] += x.T @ dy
                self.gradients["b"] += dy.sum(axis=0, keepdims=True)
        return dX[0] if len(dLdy) == 1 else dX

    def flush_gradients(self):
        self.X = []
        self.gradients = {k: np.zeros_like(v) for k, v in self.gradients.items()}


class StochasticGradientDescent:
    """ML-From-Scratch's SGD: ``update(w, grad)`` returns the new weights."""

    def __init__(self, learning_rate=0.01, momentum=0):
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.w_updt = None

    def update(self, w, grad_wrt_w):
        if self.w_updt is None:
            self.w_updt = np.zeros(np.shape(w))
        self.w_updt = self.momentum * self.w_updt + (1 - self.momentum) * grad_wrt_w
        return w - self.learning_rate * self.w_updt


class Adam:
    """ML-From-Scratch's Adam: the step is not the gradient times a constant."""

    def __init__(self, learning_rate=0.001, b1=0.9, b2=0.999):
        self.learning_rate = learning_rate
        self.eps = 1e-8
        self.m = None
        self.v = None
        self.b1 = b1
        self.b2 = b2

    def update(self, w, grad_wrt_w):
        if self.m is None:
            self.m = np.zeros(np.shape(grad_wrt_w))
            self.v = np.zeros(np.shape(grad_wrt_w))
        self.m = self.b1 * self.m + (1 - self.b1) * grad_wrt_w
        self.v = self.b2 * self.v + (1 - self.b2) * np.power(grad_wrt_w, 2)
        m_hat = self.m / (1 - self.b1)
        v_hat = self.v / (1 - self.b2)
        self.w_updt = self.learning_rate * m_hat / (np.sqrt(v_hat) + self.eps)
        return w - self.w_updt


class Dense:
    """ML-From-Scratch style: weights (in, out), bias ``w0`` (1, out), updated in backward."""

    def __init__(self, n_units, input_shape=None):
        self.layer_input = None
        self.input_shape = input_shape
        self.n_units = n_units
        self.trainable = True
        self.W = None
        self.w0 = None

    def initialize(self, optimizer, rng: np.random.Generator):
        limit = 1 / math.sqrt(self.input_shape[0])
        self.W = rng.uniform(-limit, limit, (self.input_shape[0], self.n_units))
        self.w0 = rng.uniform(-limit, limit, (1, self.n_units))
        self.W_opt = copy.copy(optimizer)
        self.w0_opt = copy.copy(optimizer)

    def forward_pass(self, X, training=True):
        self.layer_input = X
        return X.dot(self.W) + self.w0

    def backward_pass(self, accum_grad):
        W = self.W
        if self.trainable:
            grad_w = self.layer_input.T.dot(accum_grad)
            grad_w0 = np.sum(accum_grad, axis=0, keepdims=True)
            self.W = self.W_opt.update(self.W, grad_w)
            self.w0 = self.w0_opt.update(self.w0, grad_w0)
        accum_grad = accum_grad.dot(W.T)
        return accum_grad
