"""Networks as their authors write them, with no torch twin, for the autodiff reference:

- a course-style conv net (naive-loop conv and max pool taking param dicts, the course's affine
  and ReLU from ``gradparity.corpus.naive_conv``, L2 ``reg * W``), ``loss(X, y)`` -> (loss, grads);
- a book-style two-layer net whose layers (``book_verbatim.py``) in an OrderedDict hold the
  same arrays as its ``params`` dict, with a loss layer, ``loss(x, t)`` and ``gradient(x, t)``;
- a function-style two-layer net tapping its forward values and their gradients.

Each has a switch for the mistake a test injects. Plain NumPy only.
"""

import book_verbatim
import numpy as np
from book_verbatim import Sigmoid, SoftmaxWithLoss

import gradparity as gp
from gradparity.corpus.naive_conv import (
    affine_backward,
    affine_forward,
    relu_backward,
    relu_forward,
)


def conv_forward_naive(x, w, b, conv_param):
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, _, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out = 1 + (H + 2 * pad - HH) // stride
    W_out = 1 + (W + 2 * pad - WW) // stride
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    out = np.zeros((N, F, H_out, W_out))
    for n in range(N):
        for f in range(F):
            for i in range(H_out):
                for j in range(W_out):
                    window = x_pad[n, :, i * stride : i * stride + HH, j * stride : j * stride + WW]
                    out[n, f, i, j] = np.sum(window * w[f]) + b[f]
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    x, w, _, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, F, H_out, W_out = dout.shape
    _, _, HH, WW = w.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(w)
    db = dout.sum(axis=(0, 2, 3))
    for n in range(N):
        for f in range(F):
            for i in range(H_out):
                for j in range(W_out):
                    rows = slice(i * stride, i * stride + HH)
                    cols = slice(j * stride, j * stride + WW)
                    dw[f] += x_pad[n, :, rows, cols] * dout[n, f, i, j]
                    dx_pad[n, :, rows, cols] += w[f] * dout[n, f, i, j]
    dx = dx_pad[:, :, pad : pad + x.shape[2], pad : pad + x.shape[3]]
    return dx, dw, db


def max_pool_forward_naive(x, pool_param):
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H, W = x.shape
    H_out, W_out = 1 + (H - ph) // stride, 1 + (W - pw) // stride
    out = np.zeros((N, C, H_out, W_out))
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    window = x[n, c, i * stride : i * stride + ph, j * stride : j * stride + pw]
                    out[n, c, i, j] = np.max(window)
    return out, (x, pool_param)


def max_pool_backward_naive(dout, cache, bug=None):
    x, pool_param = cache
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H_out, W_out = dout.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    rows = slice(i * stride, i * stride + ph)
                    cols = slice(j * stride, j * stride + pw)
                    window = x[n, c, rows, cols]
                    mask = window == np.max(window)
                    if bug == "every":  # routes the gradient to every position
                        dx[n, c, rows, cols] += dout[n, c, i, j]
                    elif bug == "quarter":  # averages as if it were an average pool
                        dx[n, c, rows, cols] += mask * dout[n, c, i, j] / 4
                    else:
                        dx[n, c, rows, cols] += mask * dout[n, c, i, j]
    return dx


def softmax_loss(x, y):
    shifted = x - np.max(x, axis=1, keepdims=True)
    log_probs = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    probs = np.exp(log_probs)
    n = x.shape[0]
    loss = -np.sum(log_probs[np.arange(n), y]) / n
    dx = probs.copy()
    dx[np.arange(n), y] -= 1
    return loss, dx / n


class ThreeLayerConvNet:
    """conv - relu - 2x2 max pool - affine - relu - affine - softmax, with L2 on the weights."""

    def __init__(self, reg=0.1, pool_bug=None, l2_in_grads=True, seed=0):
        rng = np.random.default_rng(seed)
        self.params = {
            "W1": rng.normal(scale=0.5, size=(2, 1, 3, 3)), "b1": rng.normal(size=2),
            "W2": rng.normal(scale=0.5, size=(18, 5)), "b2": rng.normal(size=5),
            "W3": rng.normal(scale=0.5, size=(5, 3)), "b3": rng.normal(size=3),
        }  # fmt: skip
        self.reg, self.pool_bug, self.l2_in_grads = reg, pool_bug, l2_in_grads

    def loss(self, X, y):
        W1, b1, W2, b2 = self.params["W1"], self.params["b1"], self.params["W2"], self.params["b2"]
        W3, b3 = self.params["W3"], self.params["b3"]
        conv, conv_cache = conv_forward_naive(X, W1, b1, {"stride": 1, "pad": 1})
        a1, relu1_cache = relu_forward(conv)
        pooled, pool_cache = max_pool_forward_naive(
            a1, {"pool_height": 2, "pool_width": 2, "stride": 2}
        )
        h, fc1_cache = affine_forward(pooled, W2, b2)
        a2, relu2_cache = relu_forward(h)
        scores, fc2_cache = affine_forward(a2, W3, b3)
        data_loss, dscores = softmax_loss(scores, y)
        loss = data_loss + 0.5 * self.reg * (np.sum(W1**2) + np.sum(W2**2) + np.sum(W3**2))

        grads = {}
        da2, grads["W3"], grads["b3"] = affine_backward(dscores, fc2_cache)
        dh = relu_backward(da2, relu2_cache)
        dpooled, grads["W2"], grads["b2"] = affine_backward(dh, fc1_cache)
        da1 = max_pool_backward_naive(dpooled, pool_cache, self.pool_bug)
        dconv = relu_backward(da1, relu1_cache)
        _, grads["W1"], grads["b1"] = conv_backward_naive(dconv, conv_cache)
        if self.l2_in_grads:
            for name in ("W1", "W2", "W3"):
                grads[name] += self.reg * self.params[name]
        return loss, grads


def conv_batch(seed=1, n=2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 6, 6)), rng.integers(0, 3, n)


class SigmoidDerivativeOfOutput(Sigmoid):
    """The book's Sigmoid whose backward takes the output for the derivative ``y (1 - y)``."""

    def backward(self, dout):
        return dout * self.out


class TwoLayerNet(book_verbatim.TwoLayerNet):
    """The book's two-layer net with a sigmoid hidden layer and the book's loss (1e-7 inside
    its log); ``sigmoid_bug`` takes the Sigmoid whose derivative is ``y`` alone."""

    def __init__(self, sigmoid_bug=False, seed=0):
        rng = np.random.default_rng(seed)
        params = {
            "W1": 0.5 * rng.standard_normal((4, 6)), "b1": rng.standard_normal(6),
            "W2": 0.5 * rng.standard_normal((6, 3)), "b2": rng.standard_normal(3),
        }  # fmt: skip
        sigmoid = SigmoidDerivativeOfOutput() if sigmoid_bug else Sigmoid()
        super().__init__(params, sigmoid, "Sigmoid1", last_layer=SoftmaxWithLoss(eps=1e-7))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def tapped_loss(params, X, y, tanh_bug=False):
    """A function-style net (tanh hidden layer, sigmoid output, mean squared error) returning
    ``(loss, grads)``, tapping each forward value and its gradient."""
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    z1 = gp.tap("z1", X @ W1 + b1)
    a1 = gp.tap("a1", np.tanh(z1))
    z2 = gp.tap("z2", a1 @ W2 + b2)
    out = sigmoid(z2)
    n = X.shape[0]
    loss = 0.5 * np.sum((out - y) ** 2) / n

    dz2 = gp.tap("z2", (out - y) * out * (1 - out) / n, grad=True)
    dW2, db2 = a1.T @ dz2, dz2.sum(axis=0)
    da1 = gp.tap("a1", dz2 @ W2.T, grad=True)
    dz1 = da1 * (1 - a1) if tanh_bug else da1 * (1 - a1**2)
    dz1 = gp.tap("z1", dz1, grad=True)
    dW1, db1 = X.T @ dz1, dz1.sum(axis=0)
    return loss, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def tapped_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(size=(3, 4)), "b1": rng.normal(size=4),
        "W2": rng.normal(size=(4, 2)), "b2": rng.normal(size=2),
    }  # fmt: skip


# Gist style: the parameters are module globals, read by name inside the functions.
_rng = np.random.default_rng(5)
Wxh = 0.5 * _rng.normal(size=(3, 4))
Why = 0.5 * _rng.normal(size=(4, 2))


def global_loss(X, y, hidden_bug=False):
    h = np.tanh(X @ Wxh)
    p = h @ Why
    loss = 0.5 * np.sum((p - y) ** 2)
    dp = p - y
    dWhy = h.T @ dp
    dh = dp @ Why.T
    dWxh = X.T @ (dh * (1 - h) if hidden_bug else dh * (1 - h * h))
    return loss, {"Wxh": dWxh, "Why": dWhy}
