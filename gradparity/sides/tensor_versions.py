"""Tensor versions of NumPy functions the tensor module lacks, for the autodiff run.

A function imported by name (``from numpy.lib.stride_tricks import sliding_window_view``)
bypasses ``np``, so the run would take it through NumPy and cut the graph there: the layer
would fall back to central differences, which split a max pool's gradient between tied
maxima (the ReLU's zeros) where the forward's own ``argmax`` routes it to the first one.
Each version here does on a tensor array what NumPy does on an array, and hands anything
else (a plain array, an option it does not cover) to NumPy's own function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch._numpy as tnp
from numpy.lib.stride_tricks import sliding_window_view


def _as_tuple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def tensor_sliding_window_view(
    x: Any,
    window_shape: int | tuple[int, ...],
    axis: int | tuple[int, ...] | None = None,
    **options: Any,
) -> Any:
    """NumPy's ``sliding_window_view`` of a tensor array x: every window of ``window_shape``
    along ``axis`` (all axes when None; an axis may repeat, as in NumPy), the window axes
    appended in ``axis`` order. x (..., L, ...) -> (..., L - w + 1, ..., w), a view on the
    graph (``Tensor.unfold``). A plain array, or ``subok``/``writeable``, go to NumPy's
    function; NumPy's errors are raised with NumPy's words."""
    if not isinstance(x, tnp.ndarray) or options:
        return sliding_window_view(x, window_shape, axis, **options)
    sizes = _as_tuple(window_shape)
    axes = tuple(range(x.ndim)) if axis is None else tuple(a % x.ndim for a in _as_tuple(axis))
    if len(axes) != len(sizes):
        raise ValueError(
            "Must provide matching length window_shape and axis; got "
            f"{len(sizes)} window_shape elements and {len(axes)} axes elements."
        )
    windows = x.tensor
    for size, a in zip(sizes, axes):
        if size < 0 or size > windows.shape[a]:
            raise ValueError("window shape cannot be larger than input array shape")
        windows = windows.unfold(a, size, 1)  # appends the window as the last axis
    return tnp.asarray(windows)


# NumPy's function -> its tensor version, for names bound by ``from numpy... import``.
TENSOR_VERSIONS: dict[Callable, Callable] = {sliding_window_view: tensor_sliding_window_view}
