"""Convolution, pooling and flattening layers of the NumPy framework (images are NCHW).

Windows are strided views made by ``sliding_window_view``, so nothing loops over pixels: the
convolution is one ``einsum`` forward and one each for its weight and input gradients, and the
pools send their gradient back with one ``bincount``. The input gradient of a convolution is
written as the textbook identity: the upstream gradient, spread back onto the stride-1 grid,
fully correlated with the kernel flipped by 180 degrees. As in ``layers``, the maths sits in
pure functions and the classes only cache; every layer keeps its input's dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from gradparity.ours.layers import Layer

Pair = tuple[int, int]


def _pair(value: int | tuple[int, int], name: str) -> Pair:
    """(v, v) from an int, or the pair itself; ValueError naming ``name`` otherwise."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    raise ValueError(f"{name} must be an int or a pair of ints, not {value!r}")


def _pad(x: np.ndarray, padding: Pair, value: float = 0.0) -> np.ndarray:
    """x (N, C, H, W) -> (N, C, H + 2 ph, W + 2 pw), the border filled with ``value``."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(xp: np.ndarray, kernel: Pair, stride: Pair, dilation: Pair) -> np.ndarray:
    """A view (N, C, Ho, Wo, kh, kw) of xp (N, C, Hp, Wp): [n, c, h, w, i, j] is
    xp[n, c, h sh + i dh, w sw + j dw]."""
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    if xp.shape[2] < span[0] or xp.shape[3] < span[1]:
        raise ValueError(f"input {xp.shape[2:]} (padded) is smaller than the window {span}")
    view = sliding_window_view(xp, span, axis=(2, 3))
    return view[:, :, :: stride[0], :: stride[1], :: dilation[0], :: dilation[1]]


def _padded_size(x_shape: tuple[int, ...], padding: Pair) -> Pair:
    """(Hp, Wp) of an input (N, C, H, W) padded by ``padding`` on each side."""
    return x_shape[2] + 2 * padding[0], x_shape[3] + 2 * padding[1]


def _crop(grad_padded: np.ndarray, padding: Pair, size: tuple[int, ...]) -> np.ndarray:
    """The gradient of the unpadded input (N, C, H, W) from that of the padded one."""
    ph, pw = padding
    return grad_padded[:, :, ph : ph + size[0], pw : pw + size[1]]


# --- Conv2d --------------------------------------------------------------------------------


def _grouped_windows(x: np.ndarray, W: np.ndarray, conv: dict) -> np.ndarray:
    """x's windows split by group: (N, G, C/G, Ho, Wo, kh, kw), a view."""
    cols = _windows(_pad(x, conv["padding"]), W.shape[2:], conv["stride"], conv["dilation"])
    n, _, ho, wo, kh, kw = cols.shape
    return cols.reshape(n, conv["groups"], W.shape[1], ho, wo, kh, kw)


def _grouped(W: np.ndarray, groups: int) -> np.ndarray:
    """W (F, C/G, kh, kw) -> (G, F/G, C/G, kh, kw)."""
    return W.reshape(groups, W.shape[0] // groups, *W.shape[1:])


def _conv2d_fwd(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, conv: dict) -> np.ndarray:
    """y[n, f] = sum over f's group of channels c and kernel (i, j) of
    W[f, c, i, j] xp[n, c, h sh + i dh, w sw + j dw] + b[f]. x (N, C, H, W) -> y (N, F, Ho, Wo)."""
    cols = _grouped_windows(x, W, conv)
    y = np.einsum("ngchwij,gfcij->ngfhw", cols, _grouped(W, conv["groups"]), optimize=True)
    y = y.reshape(x.shape[0], W.shape[0], *cols.shape[3:5])
    return y if b is None else y + b[:, None, None]


def _conv2d_bwd_weight(x: np.ndarray, W: np.ndarray, grad_out: np.ndarray, conv: dict):
    """dL/dW (F, C/G, kh, kw): each weight times the input values it met, summed."""
    cols = _grouped_windows(x, W, conv)
    g = grad_out.reshape(grad_out.shape[0], conv["groups"], -1, *grad_out.shape[2:])
    return np.einsum("ngfhw,ngchwij->gfcij", g, cols, optimize=True).reshape(W.shape)


def _spread_by_stride(grad_out: np.ndarray, stride: Pair) -> np.ndarray:
    """grad_out (N, F, Ho, Wo) on the stride-1 grid: (N, F, (Ho-1) sh + 1, (Wo-1) sw + 1),
    zeros where no output position started."""
    n, f, ho, wo = grad_out.shape
    spread = np.zeros((n, f, (ho - 1) * stride[0] + 1, (wo - 1) * stride[1] + 1), grad_out.dtype)
    spread[:, :, :: stride[0], :: stride[1]] = grad_out
    return spread


def _flip(W: np.ndarray) -> np.ndarray:
    """The kernel rotated by 180 degrees: W[:, :, ::-1, ::-1]."""
    return W[:, :, ::-1, ::-1]


def _full_correlation(
    spread: np.ndarray, W_flipped: np.ndarray, padded: tuple[int, ...], conv: dict
) -> np.ndarray:
    """dL/d(padded input) (N, C, Hp, Wp): ``spread`` zero-padded to full size and correlated,
    with the layer's dilation, with the flipped kernel, channels mapped back F -> C/G."""
    kernel, dilation, groups = W_flipped.shape[2:], conv["dilation"], conv["groups"]
    before = [d * (k - 1) for k, d in zip(kernel, dilation)]
    after = [p - s for p, s in zip(padded, spread.shape[2:])]
    full = np.pad(spread, ((0, 0), (0, 0), (before[0], after[0]), (before[1], after[1])))
    cols = _windows(full, kernel, (1, 1), dilation)
    n, f = cols.shape[:2]
    cols = cols.reshape(n, groups, f // groups, *cols.shape[2:])
    grad = np.einsum("ngfuvij,gfcij->ngcuv", cols, _grouped(W_flipped, groups), optimize=True)
    return grad.reshape(n, -1, *padded)


def _conv2d_bwd_input(x_shape: tuple[int, ...], W: np.ndarray, grad_out: np.ndarray, conv: dict):
    """dL/dx (N, C, H, W): the transposed convolution of grad_out (N, F, Ho, Wo)."""
    padded = _padded_size(x_shape, conv["padding"])
    spread = _spread_by_stride(grad_out, conv["stride"])
    return _crop(_full_correlation(spread, _flip(W), padded, conv), conv["padding"], x_shape[2:])


class Conv2d(Layer):
    """2-D convolution (torch's cross-correlation), NCHW.

    Shapes: x (N, C, H, W), W (F, C/groups, kh, kw) in torch's layout (the weight converts by
    identity), b (F,), y (N, F, Ho, Wo) with Ho = (H + 2 ph - dh (kh - 1) - 1) // sh + 1.
    Options: stride, padding (zeros), dilation (ints or pairs), groups (dividing C and F),
    bias. padding_mode other than "zeros" and string paddings ("same") are refused.
    Init: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C/groups kh kw, like torch.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        rng: np.random.Generator | None = None,
        dtype: npt.DTypeLike = np.float64,
    ) -> None:
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(
                f"Conv2d padding_mode={padding_mode!r} is not supported (only 'zeros')"
            )
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d groups={groups} must divide in_channels and out_channels")
        kernel = _pair(kernel_size, "Conv2d kernel_size")
        self.stride = _pair(stride, "Conv2d stride")
        self.padding = _pair(padding, "Conv2d padding")
        self.dilation = _pair(dilation, "Conv2d dilation")
        self.groups = groups
        rng = rng if rng is not None else np.random.default_rng(0)
        bound = 1.0 / np.sqrt(in_channels // groups * kernel[0] * kernel[1])
        shape = (out_channels, in_channels // groups, *kernel)
        self.params["W"] = rng.uniform(-bound, bound, shape).astype(dtype)
        if bias:
            self.params["b"] = rng.uniform(-bound, bound, (out_channels,)).astype(dtype)
        self._x: np.ndarray | None = None

    @property
    def options(self) -> dict:
        """stride, padding, dilation and groups, as the pure functions take them."""
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
        }

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return _conv2d_fwd(x, self.params["W"], self.params.get("b"), self.options)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._x is None:
            raise RuntimeError("Conv2d.backward called before forward")
        W = self.params["W"]
        grads = {"W": _conv2d_bwd_weight(self._x, W, grad_out, self.options)}
        if "b" in self.params:
            grads["b"] = grad_out.sum(axis=(0, 2, 3))
        self._accumulate(**grads)
        return _conv2d_bwd_input(self._x.shape, W, grad_out, self.options)


# --- Pooling -------------------------------------------------------------------------------


def _pool_options(name: str, kernel_size, stride, padding, ceil_mode: bool) -> tuple[Pair, ...]:
    """(kernel, stride, padding) checked as torch checks them; stride defaults to the kernel."""
    if ceil_mode:
        raise ValueError(f"{name} ceil_mode=True is not supported")
    kernel = _pair(kernel_size, f"{name} kernel_size")
    stride_pair = kernel if stride is None else _pair(stride, f"{name} stride")
    padding_pair = _pair(padding, f"{name} padding")
    if any(p > k // 2 for p, k in zip(padding_pair, kernel)):
        raise ValueError(f"{name} padding={padding} must be at most half the kernel {kernel}")
    return kernel, stride_pair, padding_pair


def _window_index(out: Pair, kernel: Pair, stride: Pair, dilation: Pair, width: int):
    """(Ho, Wo, kh, kw): the flat position, in a padded plane ``width`` wide, of each window
    element (the same element ``_windows`` puts there)."""
    rows = np.arange(out[0])[:, None, None, None] * stride[0]
    rows = rows + np.arange(kernel[0])[None, None, :, None] * dilation[0]
    cols = np.arange(out[1])[None, :, None, None] * stride[1]
    cols = cols + np.arange(kernel[1])[None, None, None, :] * dilation[1]
    return rows * width + cols


def _scatter(values: np.ndarray, index: np.ndarray, padded: tuple[int, ...]) -> np.ndarray:
    """Sum each of ``values`` (N, C, ...) into its plane (N, C, Hp, Wp) at flat position
    ``index`` (same shape, or broadcasting to it); positions that repeat add up."""
    n, c = values.shape[:2]
    plane = padded[0] * padded[1]
    offsets = np.arange(n * c).reshape(n, c, *[1] * (values.ndim - 2)) * plane
    flat = (np.broadcast_to(index, values.shape) + offsets).ravel()
    summed = np.bincount(flat, weights=values.ravel(), minlength=n * c * plane)
    return summed.reshape(n, c, *padded).astype(values.dtype, copy=False)


def _maxpool_fwd(x: np.ndarray, pool: dict) -> tuple[np.ndarray, np.ndarray]:
    """(y (N, C, Ho, Wo), argmax (N, C, Ho, Wo)): each window's maximum over an input padded
    with -inf, and its position in the window (row-major). ``argmax`` keeps the first of tied
    maxima, as torch's scan of the window does."""
    cols = _windows(_pad(x, pool["padding"], -np.inf), **_kernel_args(pool))
    flat = cols.reshape(*cols.shape[:4], -1)
    argmax = flat.argmax(axis=-1)
    return np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0], argmax


def _maxpool_bwd(x_shape: tuple[int, ...], argmax: np.ndarray, grad_out: np.ndarray, pool):
    """dL/dx (N, C, H, W): each window's upstream gradient routed to its maximum only."""
    padded = _padded_size(x_shape, pool["padding"])
    index = _window_index(grad_out.shape[2:], width=padded[1], **_kernel_args(pool))
    index = index.reshape(*index.shape[:2], -1)
    index = np.broadcast_to(index, (*argmax.shape, index.shape[-1]))
    chosen = np.take_along_axis(index, argmax[..., None], axis=-1)[..., 0]
    return _crop(_scatter(grad_out, chosen, padded), pool["padding"], x_shape[2:])


def _avgpool_divisor(x_shape: tuple[int, ...], pool: dict) -> np.ndarray | int:
    """What each window's sum is divided by: kh kw with ``count_include_pad`` (torch's
    default), else the count of the window's elements inside the input, (Ho, Wo)."""
    if pool["count_include_pad"]:
        return pool["kernel"][0] * pool["kernel"][1]
    inside = _pad(np.ones((1, 1, *x_shape[2:])), pool["padding"])
    return _windows(inside, **_kernel_args(pool)).sum(axis=(-2, -1))[0, 0]


def _avgpool_fwd(x: np.ndarray, pool: dict) -> np.ndarray:
    """y (N, C, Ho, Wo): each window's mean over x (N, C, H, W) padded with zeros."""
    cols = _windows(_pad(x, pool["padding"]), **_kernel_args(pool))
    return (cols.sum(axis=(-2, -1)) / _avgpool_divisor(x.shape, pool)).astype(x.dtype, copy=False)


def _avgpool_bwd(x_shape: tuple[int, ...], grad_out: np.ndarray, pool: dict) -> np.ndarray:
    """dL/dx (N, C, H, W): each window's upstream gradient shared out evenly over it."""
    padded = _padded_size(x_shape, pool["padding"])
    index = _window_index(grad_out.shape[2:], width=padded[1], **_kernel_args(pool))
    share = (grad_out / _avgpool_divisor(x_shape, pool)).astype(grad_out.dtype, copy=False)
    values = np.broadcast_to(share[..., None, None], (*grad_out.shape, *pool["kernel"]))
    return _crop(_scatter(values, index, padded), pool["padding"], x_shape[2:])


def _kernel_args(pool: dict) -> dict:
    """The window geometry of a pool: kernel, stride, dilation."""
    return {"kernel": pool["kernel"], "stride": pool["stride"], "dilation": pool["dilation"]}


class MaxPool2d(Layer):
    """Max pooling, NCHW; padding counts as -inf; the gradient goes to the first maximum of
    each window in row-major order (torch's tie rule). Windows may overlap (stride < kernel):
    gradients reaching the same input add up.

    Shapes: x (N, C, H, W), y (N, C, Ho, Wo), Ho = (H + 2 ph - dh (kh - 1) - 1) // sh + 1.
    Options: kernel_size, stride (default: the kernel), padding (at most half the kernel),
    dilation. ceil_mode=True and return_indices=True are refused. A dilated window lying
    wholly in the padding outputs -inf and passes no gradient (torch's writes it elsewhere).
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        if return_indices:
            raise ValueError("MaxPool2d return_indices=True is not supported")
        kernel, stride_pair, padding_pair = _pool_options(
            "MaxPool2d", kernel_size, stride, padding, ceil_mode
        )
        self.pool: dict[str, Any] = {
            "kernel": kernel,
            "stride": stride_pair,
            "padding": padding_pair,
            "dilation": _pair(dilation, "MaxPool2d dilation"),
        }

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._shape = x.shape
        y, self._argmax = _maxpool_fwd(x, self.pool)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return _maxpool_bwd(self._shape, self._argmax, grad_out, self.pool)


class AvgPool2d(Layer):
    """Average pooling, NCHW, padding with zeros.

    Shapes: x (N, C, H, W), y (N, C, Ho, Wo), Ho = (H + 2 ph - kh) // sh + 1.
    Options: kernel_size, stride (default: the kernel), padding (at most half the kernel),
    count_include_pad (True, torch's default: padded zeros count in the mean). ceil_mode=True
    and divisor_override are refused.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__()
        if divisor_override is not None:
            raise ValueError("AvgPool2d divisor_override is not supported")
        kernel, stride_pair, padding_pair = _pool_options(
            "AvgPool2d", kernel_size, stride, padding, ceil_mode
        )
        self.pool: dict[str, Any] = {
            "kernel": kernel,
            "stride": stride_pair,
            "padding": padding_pair,
            "dilation": (1, 1),
            "count_include_pad": count_include_pad,
        }

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._shape = x.shape
        return _avgpool_fwd(x, self.pool)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return _avgpool_bwd(self._shape, grad_out, self.pool)


# --- Flatten -------------------------------------------------------------------------------


class Flatten(Layer):
    """Axes start_dim..end_dim merged into one, like torch.nn.Flatten; backward reshapes back.

    Shapes: x (N, C, H, W) -> y (N, C H W) with the defaults start_dim=1, end_dim=-1.
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._shape = x.shape
        start = self.start_dim % x.ndim
        end = self.end_dim % x.ndim
        return x.reshape(*x.shape[:start], -1, *x.shape[end + 1 :])

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out.reshape(self._shape)
