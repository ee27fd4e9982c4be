"""A network in the style of "Deep Learning from Scratch": layer classes with ``params`` and
``grads``, an OrderedDict of layers, and a SoftmaxWithLoss layer whose loss carries an epsilon
inside the log; a batch norm layer with its own variance epsilon (inference mode: running
statistics, as ``gp.compare`` runs the reference in eval mode). Also the factories the CLI
test loads (``ours_setup``, ``reference_setup``)."""

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


def softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=1, keepdims=True)


class Affine:
    def __init__(self, W, b):
        self.params = {"W": W, "b": b}
        self.grads = {}

    def forward(self, x):
        self.x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, dout):
        self.grads["W"] = self.x.T @ dout
        self.grads["b"] = dout.sum(axis=0)
        return dout @ self.params["W"].T


class Relu:
    def __init__(self):
        self.params, self.grads = {}, {}

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout = dout.copy()
        dout[self.mask] = 0
        return dout


class BatchNormalization:
    """Inference mode: normalises with the running statistics (0 and 1 when fresh)."""

    def __init__(self, n, eps=1e-5):
        self.params = {"gamma": np.ones(n), "beta": np.zeros(n)}
        self.grads = {}
        self.eps = eps
        self.running_mean, self.running_var = np.zeros(n), np.ones(n)

    def forward(self, x):
        self.xn = (x - self.running_mean) / np.sqrt(self.running_var + self.eps)
        return self.params["gamma"] * self.xn + self.params["beta"]

    def backward(self, dout):
        self.grads["gamma"] = (self.xn * dout).sum(axis=0)
        self.grads["beta"] = dout.sum(axis=0)
        return self.params["gamma"] * dout / np.sqrt(self.running_var + self.eps)


class SoftmaxWithLoss:
    def __init__(self, eps=1e-7):
        self.eps = eps

    def forward(self, x, t):
        self.t = t
        self.y = softmax(x)
        batch_size = x.shape[0]
        return -np.sum(np.log(self.y[np.arange(batch_size), t] + self.eps)) / batch_size

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(batch_size), self.t] -= 1
        return dx / batch_size


class TwoLayerNet:
    def __init__(self, batchnorm_eps=None, loss_eps=1e-7, seed=0):
        rng = np.random.default_rng(seed)
        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(rng.standard_normal((6, 8)) * 0.5, np.zeros(8))
        if batchnorm_eps is not None:
            self.layers["BatchNorm1"] = BatchNormalization(8, batchnorm_eps)
        self.layers["Relu1"] = Relu()
        self.layers["Affine2"] = Affine(rng.standard_normal((8, 3)) * 0.5, np.zeros(3))
        self.lastLayer = SoftmaxWithLoss(loss_eps)


def torch_twin(batchnorm=False):
    modules = OrderedDict(Affine1=nn.Linear(6, 8))
    if batchnorm:
        modules["BatchNorm1"] = nn.BatchNorm1d(8)
    modules["Relu1"] = nn.ReLU()
    modules["Affine2"] = nn.Linear(8, 3)
    # In eval mode, as the book's BatchNormalization above (it normalises with its running
    # statistics); the reference runs in the mode it is given.
    return nn.Sequential(modules).double().eval()


def batch(seed=1, n=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)), rng.integers(0, 3, n)


def ours_setup():
    net = TwoLayerNet()
    x, t = batch()
    return {"model": list(net.layers.items()), "loss": net.lastLayer, "x": x, "target": t}


def reference_setup():
    return {"model": torch_twin(), "loss": torch.nn.functional.cross_entropy}
