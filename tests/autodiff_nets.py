"""Networks written as new users write them, for the autodiff engine's tests: a course-style
params-dict MLP with a loss function; a course-style conv net with naive loops whose ``loss``
returns ``(loss, grads)``; book-style layers in an OrderedDict sharing arrays with a params
dict; a gist-style character RNN whose parameters are module globals."""

import book_verbatim
import numpy as np

import gradparity as gp
from gradparity.corpus.naive_conv import (
    conv_backward_naive,
    conv_forward_naive,
    max_pool_backward_naive,
    max_pool_forward_naive,
)

REG = 0.1


# -- course style: a params dict and a loss function ------------------------------------------
def mlp_loss(params, X, y):
    z = gp.tap("z1", X @ params["W1"] + params["b1"])
    h = np.maximum(0, z)
    scores = h @ params["W2"] + params["b2"]
    scores = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(scores) / np.sum(np.exp(scores), axis=1, keepdims=True)
    data_loss = -np.mean(np.log(probs[np.arange(X.shape[0]), y]))
    return data_loss + 0.5 * REG * np.sum(params["W1"] ** 2)


def mlp_grads(params, X, y):
    N = X.shape[0]
    z = X @ params["W1"] + params["b1"]
    h = np.maximum(0, z)
    scores = h @ params["W2"] + params["b2"]
    scores = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(scores) / np.sum(np.exp(scores), axis=1, keepdims=True)
    dscores = probs.copy()
    dscores[np.arange(N), y] -= 1
    dscores /= N
    grads = {"W2": h.T @ dscores, "b2": dscores.sum(axis=0)}
    dz = (dscores @ params["W2"].T) * (z > 0)
    gp.tap("z1", dz, grad=True)
    grads["W1"] = X.T @ dz + REG * params["W1"]
    grads["b1"] = dz.sum(axis=0)
    return grads


# -- course style: naive-loop conv net, loss(X, y) returning (loss, grads) --------------------
class ConvNet:
    def __init__(self, seed=0, C=1, F=2, H=6, classes=3, reg=0.05):
        rng = np.random.default_rng(seed)
        self.reg = reg
        self.params = {
            "W1": rng.normal(0, 0.5, (F, C, 3, 3)),
            "b1": rng.normal(0, 0.1, F),
            "W2": rng.normal(0, 0.5, (F * (H // 2) ** 2, classes)),
            "b2": rng.normal(0, 0.1, classes),
        }

    def loss(self, X, y=None):
        W1, b1, W2, b2 = (self.params[k] for k in ("W1", "b1", "W2", "b2"))
        conv, conv_cache = conv_forward_naive(X, W1, b1, pad=1)
        relu = np.maximum(0, conv)
        pooled, pool_cache = max_pool_forward_naive(relu)
        flat = pooled.reshape(X.shape[0], -1)
        scores = flat @ W2 + b2
        if y is None:
            return scores
        shifted = scores - np.max(scores, axis=1, keepdims=True)
        probs = np.exp(shifted) / np.sum(np.exp(shifted), axis=1, keepdims=True)
        N = X.shape[0]
        loss = -np.sum(np.log(probs[np.arange(N), y])) / N
        loss += 0.5 * self.reg * (np.sum(W1 * W1) + np.sum(W2 * W2))
        dscores = probs.copy()
        dscores[np.arange(N), y] -= 1
        dscores /= N
        grads = {"W2": flat.T @ dscores + self.reg * W2, "b2": np.sum(dscores, axis=0)}
        dpooled = (dscores @ W2.T).reshape(pooled.shape)
        drelu = max_pool_backward_naive(dpooled, pool_cache)
        dconv = drelu * (conv > 0)
        _, dW1, db1 = conv_backward_naive(dconv, conv_cache)
        grads["W1"] = dW1 + self.reg * W1
        grads["b1"] = db1
        return loss, grads


# -- book style: layer classes in an OrderedDict, a loss layer, a shared params dict ----------
class TwoLayerNet(book_verbatim.TwoLayerNet):
    """The book's two-layer net, its parameters drawn from a standard normal."""

    def __init__(self, seed=0, sizes=(4, 5, 3)):
        rng = np.random.default_rng(seed)
        super().__init__({
            "W1": rng.normal(size=sizes[:2]),
            "b1": rng.normal(size=sizes[1]),
            "W2": rng.normal(size=sizes[1:]),
            "b2": rng.normal(size=sizes[2]),
        })  # fmt: skip


# -- gist style: a character RNN whose parameters are module globals --------------------------
vocab_size, hidden_size = 5, 4
_rng = np.random.default_rng(3)
Wxh = _rng.normal(0, 0.3, (hidden_size, vocab_size))
Whh = _rng.normal(0, 0.3, (hidden_size, hidden_size))
Why = _rng.normal(0, 0.3, (vocab_size, hidden_size))
bh = _rng.normal(0, 0.1, (hidden_size, 1))
by = _rng.normal(0, 0.1, (vocab_size, 1))


def lossFun(inputs, targets, hprev):
    xs, hs, ys, ps = {}, {}, {}, {}
    hs[-1] = np.copy(hprev)
    loss = 0
    for t in range(len(inputs)):
        xs[t] = np.zeros((vocab_size, 1))
        xs[t][inputs[t]] = 1
        hs[t] = np.tanh(np.dot(Wxh, xs[t]) + np.dot(Whh, hs[t - 1]) + bh)
        ys[t] = np.dot(Why, hs[t]) + by
        ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))
        loss += -np.log(ps[t][targets[t], 0])
    dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    dbh, dby = np.zeros_like(bh), np.zeros_like(by)
    dhnext = np.zeros_like(hs[0])
    for t in reversed(range(len(inputs))):
        dy = np.copy(ps[t])
        dy[targets[t]] -= 1
        dWhy += np.dot(dy, hs[t].T)
        dby += dy
        dh = np.dot(Why.T, dy) + dhnext
        dhraw = (1 - hs[t] * hs[t]) * dh
        dbh += dhraw
        dWxh += np.dot(dhraw, xs[t].T)
        dWhh += np.dot(dhraw, hs[t - 1].T)
        dhnext = np.dot(Whh.T, dhraw)
    return loss, dWxh, dWhh, dWhy, dbh, dby, hs[len(inputs) - 1]


# -- code that cannot run on tensors, or whose loss is not differentiable as given -------------
from numpy import exp  # noqa: E402  (a binding new users write)


def loss_with_numpy_binding(params, X):
    return np.sum(exp(X @ params["W"]))


def loss_with_dropout(params, X):
    mask = np.random.rand(*X.shape) < 0.5
    return np.sum((X * mask) @ params["W"])


def loss_through_float(params, X):
    scale = float(np.sum(X @ params["W"]))
    return np.sum(X) * scale


def loss_through_item(params, X):
    # item() mid-graph: the number returned is computed from it, so the graph is cut (a loss
    # returned as item() or float() of its last value is fine: see loss_as_float)
    return 2.0 * (X @ params["W"]).sum().item()


def loss_as_float(params, X):
    return float(np.sum(X @ params["W"] + params["b"]) ** 2)


def loss_not_scalar(params, X):
    return np.sum(X @ params["W"], axis=1)


def loss_ignoring_b(params, X):
    return np.sum(X @ params["W"])


def loss_with_missing_function(params, X):
    return np.nansum(X @ params["W"]) + np.sum(params["b"])


def loss_with_relu_at_zero(params, X):
    return np.sum(np.maximum(0, X @ params["W"] + params["b"]) * params["v"])


def loss_that_raises(params, X):
    global CACHE
    CACHE = np.tanh(X @ params["W"])
    raise RuntimeError("the user's own error")


CACHE = None


def loss_scaled_by_a_float(params, X):
    scale = float(np.max(np.abs(params["W"])))
    return np.sum(X @ params["W"] + params["b"]) / scale


class TappedNet:
    """``loss(X, y)`` returning (loss, grads) with forward and gradient taps, one in a loop."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.params = {"W": rng.normal(size=(3, 3)), "V": rng.normal(size=(3, 2))}

    def loss(self, X, y):
        h = X
        hs = []
        for _ in range(2):
            hs.append(h)
            h = gp.tap("h", np.tanh(h @ self.params["W"]))
        scores = gp.tap("scores", h @ self.params["V"])
        loss = 0.5 * np.sum((scores - y) ** 2)
        dscores = gp.tap("scores", scores - y, grad=True)
        grads = {"V": h.T @ dscores}
        dh = dscores @ self.params["V"].T
        grads["W"] = np.zeros_like(self.params["W"])
        outs = [hs[1], h]
        for step in (1, 0):
            gp.tap("h", dh, grad=True)
            dz = dh * (1 - outs[step] ** 2)
            grads["W"] += hs[step].T @ dz
            dh = dz @ self.params["W"].T
        return loss, grads


def embedding_loss(params, words, target):
    """Word vectors summed per sentence; its backward scatters with np.add.at (repeated words)."""
    vectors = params["E"][words]  # (N, T, D)
    out = vectors.sum(axis=1) @ params["W"]
    loss = 0.5 * np.sum((out - target) ** 2)
    dout = out - target
    grads = {"W": vectors.sum(axis=1).T @ dout, "E": np.zeros_like(params["E"])}
    dvectors = np.broadcast_to((dout @ params["W"].T)[:, None, :], vectors.shape)
    np.add.at(grads["E"], words, dvectors)
    return loss, grads
