"""Stand-ins of third-party NumPy layers that store their parameters in their own layouts:
recurrent layers stacking their gates in another order than torch (chainer's LSTM: a, i, f, o
in blocks of rows of ``upward.W``; Keras' GRU: z, r, n), a convolution storing its kernel
flat, a batch norm storing gamma and beta (1, C, 1, 1), a dense layer storing W flat.
Plain NumPy, each with its own forward and backward, in the frameworks' own names."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class StackedLSTM:
    """An LSTM over x (N, T, D) -> h (N, T, H), its gates stacked in ``order`` ("aifo":
    chainer; "a" is the cell input, torch's g). ``rows``: upward.W is (4H, D) and used as
    x @ W.T (chainer's Linear); else (D, 4H), used as x @ W, gates in blocks of columns."""

    def __init__(self, d: int, h: int, seed: int, order: str = "aifo", rows: bool = True):
        rng = np.random.default_rng(seed)
        self.order, self.rows, self.h = order, rows, h
        w_x, w_h = rng.standard_normal((4 * h, d)) * 0.4, rng.standard_normal((4 * h, h)) * 0.4
        self.params = {
            "upward.W": w_x if rows else np.ascontiguousarray(w_x.T),
            "upward.b": rng.standard_normal(4 * h) * 0.2,
            "lateral.W": w_h if rows else np.ascontiguousarray(w_h.T),
            "lateral.b": rng.standard_normal(4 * h) * 0.2,
        }
        self.grads: dict[str, np.ndarray] = {}
        self.broken = False  # True: the output gate uses tanh (a forward bug)

    def _mat(self, key: str) -> np.ndarray:
        """The weight as (4H, in)."""
        return self.params[key] if self.rows else self.params[key].T

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, h = x.shape[0], self.h
        hid, cell = np.zeros((n, h)), np.zeros((n, h))
        self.cache, out = [], []
        for t in range(x.shape[1]):
            z = x[:, t] @ self._mat("upward.W").T + self.params["upward.b"]
            z = z + hid @ self._mat("lateral.W").T + self.params["lateral.b"]
            gate = {name: z[:, k * h : (k + 1) * h] for k, name in enumerate(self.order)}
            a = np.tanh(gate["a"])
            i, f = sigmoid(gate["i"]), sigmoid(gate["f"])
            o = np.tanh(gate["o"]) if self.broken else sigmoid(gate["o"])
            new_cell = a * i + f * cell
            self.cache.append((x[:, t], hid, cell, a, i, f, o, new_cell))
            hid, cell = o * np.tanh(new_cell), new_cell
            out.append(hid)
        return np.stack(out, axis=1)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grads = {k: np.zeros_like(self._mat(k)) for k in ("upward.W", "lateral.W")}
        grads |= {k: np.zeros_like(self.params[k]) for k in ("upward.b", "lateral.b")}
        dx = np.zeros((*grad_out.shape[:2], self._mat("upward.W").shape[1]))
        d_hid, d_cell = np.zeros_like(grad_out[:, 0]), np.zeros_like(grad_out[:, 0])
        for t in reversed(range(len(self.cache))):
            xt, hid, cell, a, i, f, o, new_cell = self.cache[t]
            d_hid = d_hid + grad_out[:, t]
            tanh_c = np.tanh(new_cell)
            d_o = d_hid * tanh_c
            d_cell = d_cell + d_hid * o * (1 - tanh_c**2)
            local = {"a": d_cell * i * (1 - a**2), "i": d_cell * a * i * (1 - i)}
            local |= {"f": d_cell * cell * f * (1 - f), "o": d_o * o * (1 - o)}
            dz = np.concatenate([local[name] for name in self.order], axis=1)
            grads["upward.W"] += dz.T @ xt
            grads["lateral.W"] += dz.T @ hid
            grads["upward.b"] += dz.sum(axis=0)
            grads["lateral.b"] += dz.sum(axis=0)
            dx[:, t] = dz @ self._mat("upward.W")
            d_hid, d_cell = dz @ self._mat("lateral.W"), d_cell * f
        if not self.rows:
            grads = {k: np.ascontiguousarray(g.T) if g.ndim == 2 else g for k, g in grads.items()}
        self.grads = grads
        return dx


class StackedGRU:
    """A GRU over x (T, N, D) -> h (T, N, H) (time first, as torch's default and Keras'
    time_major) with torch's equations (the reset gate applied to the recurrent product, Keras'
    reset_after), its gates stacked in ``order`` ("zrn": Keras' z, r, h) in blocks of rows of
    W_x (3H, D) and W_h (3H, H)."""

    def __init__(self, d: int, h: int, seed: int, order: str = "zrn"):
        rng = np.random.default_rng(seed)
        self.order, self.h = order, h
        self.params = {
            "W_x": rng.standard_normal((3 * h, d)) * 0.4,
            "W_h": rng.standard_normal((3 * h, h)) * 0.4,
            "b_x": rng.standard_normal(3 * h) * 0.2,
            "b_h": rng.standard_normal(3 * h) * 0.2,
        }
        self.grads: dict[str, np.ndarray] = {}

    def _blocks(self, z: np.ndarray) -> dict[str, np.ndarray]:
        return {name: z[:, k * self.h : (k + 1) * self.h] for k, name in enumerate(self.order)}

    def forward(self, x: np.ndarray) -> np.ndarray:
        p = self.params
        x = x.swapaxes(0, 1)  # batch first inside
        hid = np.zeros((x.shape[0], self.h))
        self.cache, out = [], []
        for t in range(x.shape[1]):
            gi = self._blocks(x[:, t] @ p["W_x"].T + p["b_x"])
            gh = self._blocks(hid @ p["W_h"].T + p["b_h"])
            r, z = sigmoid(gi["r"] + gh["r"]), sigmoid(gi["z"] + gh["z"])
            n = np.tanh(gi["n"] + r * gh["n"])
            self.cache.append((x[:, t], hid, r, z, n, gh["n"]))
            hid = (1 - z) * n + z * hid
            out.append(hid)
        return np.stack(out, axis=0)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        p = self.params
        grad_out = grad_out.swapaxes(0, 1)
        grads = {k: np.zeros_like(v) for k, v in p.items()}
        dx = np.zeros((*grad_out.shape[:2], p["W_x"].shape[1]))
        d_hid = np.zeros_like(grad_out[:, 0])
        for t in reversed(range(len(self.cache))):
            xt, hid, r, z, n, gh_n = self.cache[t]
            d_hid = d_hid + grad_out[:, t]
            d_n = d_hid * (1 - z) * (1 - n**2)
            d_r = d_n * gh_n * r * (1 - r)
            d_z = d_hid * (hid - n) * z * (1 - z)
            d_gi = np.concatenate([{"r": d_r, "z": d_z, "n": d_n}[g] for g in self.order], 1)
            d_gh = np.concatenate([{"r": d_r, "z": d_z, "n": d_n * r}[g] for g in self.order], 1)
            grads["W_x"] += d_gi.T @ xt
            grads["W_h"] += d_gh.T @ hid
            grads["b_x"] += d_gi.sum(axis=0)
            grads["b_h"] += d_gh.sum(axis=0)
            dx[:, t] = d_gi @ p["W_x"]
            d_hid = d_hid * z + d_gh @ p["W_h"]
        self.grads = grads
        return np.ascontiguousarray(dx.swapaxes(0, 1))


class FlatKernelConv:
    """A 2-D convolution (stride 1, no padding) storing its kernel flat: W (F*C*k*k,) in
    (F, C, k, k) order, or in the shape ``stored``; b (F,). x (N, C, H, W) -> (N, F, H-k+1,
    W-k+1)."""

    def __init__(self, c: int, f: int, k: int, seed: int, stored: tuple[int, ...] = ()):
        rng = np.random.default_rng(seed)
        self.shape = (f, c, k, k)
        kernel = rng.standard_normal(self.shape) * 0.3
        self.params = {"W": kernel.reshape(stored or (-1,)), "b": rng.standard_normal(f)}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        k = self.shape[-1]
        self.patches = sliding_window_view(x, (k, k), axis=(2, 3))  # (N, C, Ho, Wo, k, k)
        kernel = self.params["W"].reshape(self.shape)
        out = np.einsum("nchwij,fcij->nfhw", self.patches, kernel)
        return out + self.params["b"][None, :, None, None]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        k = self.shape[-1]
        kernel = self.params["W"].reshape(self.shape)
        d_kernel = np.einsum("nchwij,nfhw->fcij", self.patches, grad_out)
        self.grads = {"W": d_kernel.reshape(self.params["W"].shape), "b": grad_out.sum((0, 2, 3))}
        n, _, h_out, w_out = grad_out.shape
        dx = np.zeros((n, self.shape[1], h_out + k - 1, w_out + k - 1))
        for i in range(k):
            for j in range(k):
                dx[:, :, i : i + h_out, j : j + w_out] += np.einsum(
                    "nfhw,fc->nchw", grad_out, kernel[:, :, i, j]
                )
        return dx


class ChainerBatchNorm:
    """chainer's BatchNormalization in test mode: normalises x (N, C, H, W) by its running
    statistics ``avg_mean``, ``avg_var``; gamma and beta stored (1, C, 1, 1)."""

    def __init__(self, c: int, seed: int, eps: float = 1e-5):
        rng = np.random.default_rng(seed)
        self.params = {
            "gamma": rng.standard_normal((1, c, 1, 1)),
            "beta": rng.standard_normal((1, c, 1, 1)),
        }
        self.avg_mean = rng.standard_normal(c)
        self.avg_var = rng.uniform(0.5, 2.0, c)
        self.eps = eps
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        mean = self.avg_mean[None, :, None, None]
        self.scale = 1.0 / np.sqrt(self.avg_var[None, :, None, None] + self.eps)
        self.x_hat = (x - mean) * self.scale
        return self.params["gamma"] * self.x_hat + self.params["beta"]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self.grads = {
            "gamma": (grad_out * self.x_hat).sum(axis=(0, 2, 3), keepdims=True),
            "beta": grad_out.sum(axis=(0, 2, 3), keepdims=True),
        }
        return grad_out * self.params["gamma"] * self.scale


class FlatDense:
    """y = x @ W + b with W stored flat (in*out,) in (in, out) order."""

    def __init__(self, n_in: int, n_out: int, seed: int):
        rng = np.random.default_rng(seed)
        self.shape = (n_in, n_out)
        self.params = {"W": rng.standard_normal(n_in * n_out), "b": rng.standard_normal(n_out)}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return x @ self.params["W"].reshape(self.shape) + self.params["b"]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self.grads = {"W": (self.x.T @ grad_out).ravel(), "b": grad_out.sum(axis=0)}
        return grad_out @ self.params["W"].reshape(self.shape).T
