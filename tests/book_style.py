"""A network in the style of "Deep Learning from Scratch": layer classes with ``params`` and
``grads`` (``book_layers.py``), an OrderedDict of layers, and the book's SoftmaxWithLoss layer
whose loss carries an epsilon inside the log; a batch norm layer with its own variance epsilon
(inference mode: running statistics, as ``gp.compare`` runs the reference in eval mode). Also
the factories the CLI test loads (``ours_setup``, ``reference_setup``)."""

from collections import OrderedDict

import numpy as np
import torch
from book_layers import Affine, Relu
from book_verbatim import SoftmaxWithLoss
from torch import nn


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
