"""The layers and two-layer net of "Deep Learning from Scratch" as its code writes them, the
way users copy them: each parameter an attribute (``W``, ``b``) with its gradient next to it
(``dW``, ``db``), so gradparity takes them through ``gp.wrap(layer, params=["W", "b"],
grads=["dW", "db"])``; a ``SoftmaxWithLoss`` last layer taking one-hot or integer labels.

``book_layers.py`` holds the other book style (``params``/``grads`` dicts, with switches for
the bugs its tests inject); a test that varies one of these layers subclasses it next to the
test. Plain user code: ``np`` is ``import numpy as np``."""

from collections import OrderedDict

import numpy as np


def softmax(x):
    x = x - np.max(x, axis=1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=1, keepdims=True)


class Affine:
    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.dW = None
        self.db = None

    def forward(self, x):
        self.x = x
        return np.dot(x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx


class Relu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dx = dout.copy()
        dx[self.mask] = 0
        return dx


class Sigmoid:
    def __init__(self):
        self.out = None

    def forward(self, x):
        self.out = 1 / (1 + np.exp(-x))
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out) * self.out


class SoftmaxWithLoss:
    """Softmax cross-entropy. The book adds ``eps=1e-7`` inside the log; left out by default
    so that backward is exactly the derivative of forward."""

    def __init__(self, eps=0.0):
        self.eps = eps
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.t = t
        self.y = softmax(x)
        labels = t.argmax(axis=1) if t.size == self.y.size else t  # one-hot or integer
        batch_size = x.shape[0]
        self.loss = -np.sum(np.log(self.y[np.arange(batch_size), labels] + self.eps)) / batch_size
        return self.loss

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        if self.t.size == self.y.size:  # one-hot labels
            dx = (self.y - self.t) / batch_size
        else:
            dx = self.y.copy()
            dx[np.arange(batch_size), self.t] -= 1
            dx = dx / batch_size
        return dx * dout


class TwoLayerNet:
    """The book's two-layer net: its layers hold the arrays of ``params`` (W1, b1, W2, b2).
    ``hidden`` (named ``hidden_name``), ``affine2`` (a class) and ``last_layer`` are what a
    test varies."""

    def __init__(self, params, hidden=None, hidden_name="Relu1", affine2=Affine, last_layer=None):
        self.params = params
        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"])
        self.layers[hidden_name] = Relu() if hidden is None else hidden
        self.layers["Affine2"] = affine2(self.params["W2"], self.params["b2"])
        self.lastLayer = SoftmaxWithLoss() if last_layer is None else last_layer

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.lastLayer.forward(self.predict(x), t)

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.lastLayer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        a1, a2 = self.layers["Affine1"], self.layers["Affine2"]
        return {"W1": a1.dW, "b1": a1.db, "W2": a2.dW, "b2": a2.db}
