"""Layers whose forward output has another shape than torch's, written as chainer, dezero and
ML-From-Scratch write theirs (im2col, argmax indexes, ``cover_all``), with plain NumPy."""

from __future__ import annotations

import numpy as np


def get_conv_outsize(size: int, k: int, s: int, p: int, cover_all: bool = False) -> int:
    """chainer.utils.conv.get_conv_outsize: rounds up when ``cover_all``."""
    if cover_all:
        return (size + p * 2 - k + s - 1) // s + 1
    return (size + p * 2 - k) // s + 1


def im2col(x: np.ndarray, kh: int, kw: int, sy: int, sx: int, ph: int, pw: int,
           pval: float = 0.0, cover_all: bool = False) -> np.ndarray:  # fmt: skip
    """chainer.utils.conv.im2col_cpu: (n, c, h, w) -> (n, c, kh, kw, out_h, out_w)."""
    n, c, h, w = x.shape
    out_h = get_conv_outsize(h, kh, sy, ph, cover_all)
    out_w = get_conv_outsize(w, kw, sx, pw, cover_all)
    img = np.pad(x, ((0, 0), (0, 0), (ph, ph + sy - 1), (pw, pw + sx - 1)),
                 mode="constant", constant_values=(pval,))  # fmt: skip
    col = np.ndarray((n, c, kh, kw, out_h, out_w), dtype=img.dtype)
    for j in range(kh):
        j_lim = j + sy * out_h
        for i in range(kw):
            i_lim = i + sx * out_w
            col[:, :, j, i, :, :] = img[:, :, j:j_lim:sy, i:i_lim:sx]
    return col


def col2im(col: np.ndarray, sy: int, sx: int, ph: int, pw: int, h: int, w: int) -> np.ndarray:
    """chainer.utils.conv.col2im_cpu: the adjoint of ``im2col``."""
    n, c, kh, kw, out_h, out_w = col.shape
    img = np.zeros((n, c, h + 2 * ph + sy - 1, w + 2 * pw + sx - 1), dtype=col.dtype)
    for j in range(kh):
        j_lim = j + sy * out_h
        for i in range(kw):
            i_lim = i + sx * out_w
            img[:, :, j:j_lim:sy, i:i_lim:sx] += col[:, :, j, i, :, :]
    return img[:, :, ph : h + ph, pw : w + pw]


class MaxPooling2D:
    """chainer.functions.MaxPooling2D, ``cover_all=True`` by default as chainer has it: a 5x5
    input pooled 2x2 gives 3x3 where torch's ``nn.MaxPool2d(2)`` gives 2x2."""

    def __init__(self, ksize: int = 2, stride: int | None = None, pad: int = 0,
                 cover_all: bool = True) -> None:  # fmt: skip
        self.kh = self.kw = ksize
        self.sy = self.sx = ksize if stride is None else stride
        self.ph = self.pw = pad
        self.cover_all = cover_all
        self.params: dict = {}
        self.grads: dict = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._in_shape = x.shape
        col = im2col(x, self.kh, self.kw, self.sy, self.sx, self.ph, self.pw,
                     pval=-float("inf"), cover_all=self.cover_all)  # fmt: skip
        n, c, kh, kw, out_h, out_w = col.shape
        col = col.reshape(n, c, kh * kw, out_h, out_w)
        self.indexes = col.argmax(axis=2)
        return col.max(axis=2)

    def backward(self, gy: np.ndarray) -> np.ndarray:
        n, c, out_h, out_w = gy.shape
        h, w = self._in_shape[2:]
        kh, kw = self.kh, self.kw
        gcol = np.zeros(n * c * out_h * out_w * kh * kw)
        indexes = self.indexes.flatten()
        indexes += np.arange(0, indexes.size * kh * kw, kh * kw)
        gcol[indexes] = gy.ravel()
        gcol = gcol.reshape(n, c, out_h, out_w, kh, kw)
        gcol = np.swapaxes(gcol, 2, 4)
        gcol = np.swapaxes(gcol, 3, 5)
        return col2im(gcol, self.sy, self.sx, self.ph, self.pw, h, w)


class Convolution2D:
    """chainer.links.Convolution2D (W: (out, in, kh, kw), b), no padding unless ``pad``."""

    def __init__(self, W: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0) -> None:
        self.params = {"W": W, "b": b}
        self.grads: dict = {}
        self.stride, self.pad = stride, pad

    def forward(self, x: np.ndarray) -> np.ndarray:
        W, b = self.params["W"], self.params["b"]
        kh, kw = W.shape[2:]
        self._in_shape = x.shape
        self.col = im2col(x, kh, kw, self.stride, self.stride, self.pad, self.pad)
        y = np.tensordot(self.col, W, ((1, 2, 3), (1, 2, 3))) + b  # (n, out_h, out_w, out_c)
        return np.rollaxis(y, 3, 1)

    def backward(self, gy: np.ndarray) -> np.ndarray:
        W = self.params["W"]
        h, w = self._in_shape[2:]
        self.grads["W"] = np.tensordot(gy, self.col, ((0, 2, 3), (0, 4, 5)))
        self.grads["b"] = gy.sum(axis=(0, 2, 3))
        gcol = np.tensordot(W, gy, (0, 1))  # (in, kh, kw, n, out_h, out_w)
        gcol = np.rollaxis(gcol, 3)
        return col2im(gcol, self.stride, self.stride, self.pad, self.pad, h, w)


class Flatten:
    """ML-From-Scratch's Flatten; ``channels_last`` flattens as a TensorFlow-style (NHWC) port
    does, (h, w, c) order where torch's ``nn.Flatten`` takes (c, h, w)."""

    def __init__(self, channels_last: bool = False) -> None:
        self.channels_last = channels_last
        self.params: dict = {}
        self.grads: dict = {}

    def forward(self, X: np.ndarray) -> np.ndarray:
        self.prev_input_shape = X.shape
        if self.channels_last:
            X = X.transpose(0, 2, 3, 1)
        return X.reshape((X.shape[0], -1))

    def backward(self, accum_grad: np.ndarray) -> np.ndarray:
        if self.channels_last:
            n, c, h, w = self.prev_input_shape
            return accum_grad.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        return accum_grad.reshape(self.prev_input_shape)


class Tanh:
    def __init__(self) -> None:
        self.params: dict = {}
        self.grads: dict = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.y = np.tanh(x)
        return self.y

    def backward(self, gy: np.ndarray) -> np.ndarray:
        return gy * (1 - self.y**2)
