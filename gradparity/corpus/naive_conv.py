"""A convolutional network written the way a course assignment writes it: a params dict,
each layer a pair of naive-loop functions ``out, cache = f_forward(...)`` /
``dx, ... = f_backward(dout, cache)`` (convolution as Python loops over output positions on an
``np.pad``-ed input, a 2x2 max pool with loops), and ``loss(X, y)`` returning ``(loss, grads)``
with an L2 penalty. conv 3x3 (pad 1) - relu - 2x2 max pool - affine - relu - affine - softmax.

A reusable user-style network (benchmarks, examples); it is plain user code: ``np`` is
``import numpy as np`` and nothing here knows about gradparity.
"""

import numpy as np


def conv_forward_naive(x, w, b, pad):
    N, _, H, W = x.shape
    F, _, HH, WW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    H_out, W_out = H + 2 * pad - HH + 1, W + 2 * pad - WW + 1
    out = np.zeros((N, F, H_out, W_out))
    for i in range(H_out):
        for j in range(W_out):
            window = xp[:, :, i : i + HH, j : j + WW]
            for f in range(F):
                out[:, f, i, j] = np.sum(window * w[f], axis=(1, 2, 3)) + b[f]
    return out, (x, w, b, pad)


def conv_backward_naive(dout, cache):
    x, w, _, pad = cache
    _, _, HH, WW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    db = dout.sum(axis=(0, 2, 3))
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            window = xp[:, :, i : i + HH, j : j + WW]
            for f in range(w.shape[0]):
                d = dout[:, f, i, j][:, None, None, None]
                dw[f] += np.sum(window * d, axis=0)
                dxp[:, :, i : i + HH, j : j + WW] += w[f] * d
    return dxp[:, :, pad:-pad, pad:-pad], dw, db


def max_pool_forward_naive(x):
    N, C, H, W = x.shape
    out = np.zeros((N, C, H // 2, W // 2))
    for i in range(H // 2):
        for j in range(W // 2):
            window = x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            out[:, :, i, j] = np.max(window, axis=(2, 3))
    return out, x


def max_pool_backward_naive(dout, cache):
    x = cache
    dx = np.zeros_like(x)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            window = x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            mask = window == window.max(axis=(2, 3), keepdims=True)
            dx[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2] += (
                mask * dout[:, :, i, j][:, :, None, None]
            )
    return dx


def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w)


def affine_backward(dout, cache):
    x, w = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    return dx, dw, dout.sum(axis=0)


def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, cache):
    return dout * (cache > 0)


def softmax_loss(scores, y):
    shifted = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.sum(np.exp(shifted), axis=1, keepdims=True)
    N = scores.shape[0]
    loss = -np.sum(np.log(probs[np.arange(N), y])) / N
    dscores = probs.copy()
    dscores[np.arange(N), y] -= 1
    return loss, dscores / N


class ThreeLayerConvNet:
    """conv - relu - 2x2 max pool - affine - relu - affine - softmax, on (N, C, H, W) input."""

    def __init__(self, input_dim=(3, 8, 8), num_filters=4, hidden_dim=10, num_classes=5,
                 reg=0.01, seed=0):  # fmt: skip
        rng = np.random.default_rng(seed)
        C, H, W = input_dim
        pooled = num_filters * (H // 2) * (W // 2)
        self.reg = reg
        self.params = {
            "W1": rng.normal(scale=0.3, size=(num_filters, C, 3, 3)),
            "b1": rng.normal(scale=0.1, size=num_filters),
            "W2": rng.normal(scale=0.2, size=(pooled, hidden_dim)),
            "b2": rng.normal(scale=0.1, size=hidden_dim),
            "W3": rng.normal(scale=0.3, size=(hidden_dim, num_classes)),
            "b3": rng.normal(scale=0.1, size=num_classes),
        }

    def forward(self, X):
        p = self.params
        conv, conv_cache = conv_forward_naive(X, p["W1"], p["b1"], pad=1)
        a1, relu1_cache = relu_forward(conv)
        pooled, pool_cache = max_pool_forward_naive(a1)
        h, fc1_cache = affine_forward(pooled, p["W2"], p["b2"])
        a2, relu2_cache = relu_forward(h)
        scores, fc2_cache = affine_forward(a2, p["W3"], p["b3"])
        return scores, (conv_cache, relu1_cache, pool_cache, fc1_cache, relu2_cache, fc2_cache)

    def penalty(self):
        p = self.params
        return 0.5 * self.reg * sum(np.sum(p[k] * p[k]) for k in ("W1", "W2", "W3"))

    def loss(self, X, y):
        """(softmax cross-entropy + L2 penalty, {name: gradient})."""
        scores, caches = self.forward(X)
        conv_cache, relu1_cache, pool_cache, fc1_cache, relu2_cache, fc2_cache = caches
        data_loss, dscores = softmax_loss(scores, y)
        grads = {}
        da2, grads["W3"], grads["b3"] = affine_backward(dscores, fc2_cache)
        dh = relu_backward(da2, relu2_cache)
        dpooled, grads["W2"], grads["b2"] = affine_backward(dh, fc1_cache)
        da1 = max_pool_backward_naive(dpooled, pool_cache)
        dconv = relu_backward(da1, relu1_cache)
        _, grads["W1"], grads["b1"] = conv_backward_naive(dconv, conv_cache)
        for k in ("W1", "W2", "W3"):
            grads[k] += self.reg * self.params[k]
        return data_loss + self.penalty(), grads

    def cost(self, X, y):
        """The loss alone (the forward only)."""
        scores, _ = self.forward(X)
        return softmax_loss(scores, y)[0] + self.penalty()


def batch(n=4, input_dim=(3, 8, 8), num_classes=5, seed=1):
    """X (n, C, H, W) standard normal, y (n,) classes."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *input_dim)), rng.integers(0, num_classes, size=n)
