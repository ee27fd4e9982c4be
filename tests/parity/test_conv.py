"""Parity of ours' Conv2d, MaxPool2d, AvgPool2d and Flatten (``ours/conv.py``) in float64 and
float32, every option drawn."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from gradparity.ours import AvgPool2d, Conv2d, Flatten, MaxPool2d

from .budget import DTYPES, check_layer, covers, dtypes, examples, seeds

SETTINGS = examples(15)


def _input_size(draw, kernel: int, padding: int, dilation: int = 1) -> int:
    """A height or width that the window fits once padded."""
    span = dilation * (kernel - 1) + 1
    return max(1, span - 2 * padding) + draw(st.integers(0, 4))


@st.composite
def conv_cases(draw):
    """(Conv2d, x, dtype): every option drawn (stride, padding, dilation, groups, bias)."""
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = [_input_size(draw, k, p, d) for k, p, d in zip(kernel, padding, dilation)]
    dtype, rng = draw(dtypes), np.random.default_rng(draw(seeds))
    layer = Conv2d(
        groups * draw(st.integers(1, 2)),
        groups * draw(st.integers(1, 3)),
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
        rng=rng,
        dtype=DTYPES[dtype][0],
    )
    batch = draw(st.integers(1, 3))
    x = rng.standard_normal((batch, layer.params["W"].shape[1] * groups, *size))
    return layer, x, dtype


@st.composite
def pool_cases(draw, pool: type):
    """(pool layer, x, dtype): kernel, stride, padding drawn, and for MaxPool2d dilation and
    inputs of small integers (many tied maxima); for AvgPool2d count_include_pad."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    rng, dtype = np.random.default_rng(draw(seeds)), draw(dtypes)
    if pool is MaxPool2d:
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        layer = pool(kernel, stride, padding, dilation)
    else:
        dilation = (1, 1)
        layer = pool(kernel, stride, padding, count_include_pad=draw(st.booleans()))
    size = [_input_size(draw, k, p, d) for k, p, d in zip(kernel, padding, dilation)]
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), *size)
    ties = pool is MaxPool2d and draw(st.booleans())
    x = (rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)).astype(float)
    # a dilated window can lie wholly in the padding: torch then writes its gradient outside
    # the window (tests/test_ours_conv.py pins what ours does there)
    assume(np.isfinite(layer.forward(x.copy())).all())
    return layer, x, dtype


@st.composite
def flatten_cases(draw):
    """(Flatten, x, dtype): start_dim and end_dim drawn, negative ones included, start <= end."""
    ndim = draw(st.integers(2, 5))
    start = draw(st.integers(1, ndim - 1))
    end = draw(st.integers(start, ndim - 1))
    end = end - ndim if draw(st.booleans()) else end
    shape = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    x = np.random.default_rng(draw(seeds)).standard_normal(shape)
    return Flatten(start, end), x, draw(dtypes)


@covers(Conv2d)
@SETTINGS
@given(conv_cases(), seeds)
def test_conv2d(case, seed):
    check_layer(*case, np.random.default_rng(seed))


@covers(MaxPool2d)
@SETTINGS
@given(pool_cases(MaxPool2d), seeds)
def test_max_pool2d_ties_included(case, seed):
    check_layer(*case, np.random.default_rng(seed))


@covers(AvgPool2d)
@SETTINGS
@given(pool_cases(AvgPool2d), seeds)
def test_avg_pool2d(case, seed):
    check_layer(*case, np.random.default_rng(seed))


@covers(Flatten)
@SETTINGS
@given(flatten_cases(), seeds)
def test_flatten(case, seed):
    check_layer(*case, np.random.default_rng(seed))


def test_max_pool2d_all_ties_go_to_the_first_maximum_like_torch():
    check_layer(MaxPool2d(2, 1), np.zeros((2, 3, 4, 4)), "float64", np.random.default_rng(0))
