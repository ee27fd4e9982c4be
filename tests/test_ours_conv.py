"""Parity of the ours convolution, pooling and flattening layers (``ours/conv.py``).

For every layer, with hypothesis-drawn shapes and options: ours' forward equals its torch
mirror's and ours' backward equals autograd's (input and parameter gradients under a random
upstream gradient) in float64 and float32, and ``gp.compare`` passes the layer in a small
network. Then the one-line refusals of unsupported options, weight transfer, and the conv bugs
of the corpus found where they are.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import gradparity as gp
from gradparity.corpus.conv_bugs import BUGS, conv_network
from gradparity.ours import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Sequential
from gradparity.reference import copy_from_module, mirror, mirror_layer

SETTINGS = settings(max_examples=15, deadline=None)
DTYPES = [np.float64, np.float32]
TORCH_DTYPES = {np.float64: torch.float64, np.float32: torch.float32}
# float32: a fixed rtol of the tensor's scale until float32 budgets are measured (issue 15)
RTOL32 = 1e-4

seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from(DTYPES)


def _assert_close(ours: np.ndarray, reference: torch.Tensor, dtype) -> None:
    expected = reference.detach().numpy()
    assert ours.dtype == dtype and ours.shape == expected.shape
    if dtype == np.float64:
        np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12)
    else:
        scale = float(np.abs(expected).max(initial=0.0))
        np.testing.assert_allclose(ours, expected, rtol=0, atol=RTOL32 * scale + 1e-30)


def _input_size(draw, kernel: int, padding: int, dilation: int = 1) -> int:
    """A height or width that the window fits once padded."""
    span = dilation * (kernel - 1) + 1
    return max(1, span - 2 * padding) + draw(st.integers(0, 4))


def _check_against_torch(layer, x: np.ndarray, seed: int) -> None:
    """ours' forward, dL/dx and parameter gradients equal the torch mirror's (x's dtype)."""
    dtype = x.dtype.type
    module = mirror_layer(layer).to(TORCH_DTYPES[dtype])
    x_t = torch.tensor(x, requires_grad=True)
    y_t = module(x_t)
    y = layer.forward(x.copy())
    _assert_close(y, y_t, dtype)
    grad_out = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    y_t.backward(torch.tensor(grad_out))
    _assert_close(layer.backward(grad_out), x_t.grad, dtype)
    for key, (_, tparam) in zip(layer.params, module.named_parameters()):
        _assert_close(layer.grads[key], tparam.grad, dtype)


def _check_compare(layer, x: np.ndarray, seed: int) -> None:
    """gp.compare passes the layer followed by a linear head, in x's dtype, both modes."""
    rng = np.random.default_rng(seed)
    features = int(np.prod(layer.forward(x.copy()).shape[1:]))
    model = Sequential(
        ("layer", layer), ("flat", Flatten()), ("head", Linear(features, 3, rng=rng))
    )
    target = rng.integers(0, 3, size=x.shape[0])
    report = gp.compare(model, mirror(model), x, target, dtype=np.dtype(x.dtype).name, seed=seed)
    assert report.ok, report.root_causes
    assert set(report.table["mode"]) == {"chain", "isolate"}


@st.composite
def conv_cases(draw):
    """(Conv2d, x): every option drawn (stride, padding, dilation, groups, bias)."""
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = [_input_size(draw, k, p, d) for k, p, d in zip(kernel, padding, dilation)]
    dtype, seed = draw(dtypes), draw(seeds)
    rng = np.random.default_rng(seed)
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
        dtype=dtype,
    )
    batch = draw(st.integers(1, 3))
    x = rng.standard_normal((batch, layer.params["W"].shape[1] * groups, *size)).astype(dtype)
    return layer, x


@st.composite
def pool_cases(draw, pool: type):
    """(pool layer, x): kernel, stride, padding drawn, and for MaxPool2d dilation and inputs
    of small integers (many tied maxima); for AvgPool2d count_include_pad."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    seed, dtype = draw(seeds), draw(dtypes)
    if pool is MaxPool2d:
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        layer = pool(kernel, stride, padding, dilation)
    else:
        dilation = (1, 1)
        layer = pool(kernel, stride, padding, count_include_pad=draw(st.booleans()))
    size = [_input_size(draw, k, p, d) for k, p, d in zip(kernel, padding, dilation)]
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), *size)
    rng = np.random.default_rng(seed)
    ties = pool is MaxPool2d and draw(st.booleans())
    x = (rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    # a dilated window can lie wholly in the padding: torch then writes its gradient outside
    # the window (see test_max_pool2d_window_wholly_in_padding_passes_no_gradient)
    assume(np.isfinite(layer.forward(x.copy())).all())
    return layer, x


@st.composite
def flatten_cases(draw):
    """(Flatten, x): start_dim and end_dim drawn, negative ones included, start <= end."""
    ndim = draw(st.integers(2, 5))
    start = draw(st.integers(1, ndim - 1))
    end = draw(st.integers(start, ndim - 1))
    end = end - ndim if draw(st.booleans()) else end
    shape = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    x = np.random.default_rng(draw(seeds)).standard_normal(shape).astype(draw(dtypes))
    return Flatten(start, end), x


@SETTINGS
@given(conv_cases(), seeds)
def test_conv2d_matches_torch(case, seed):
    _check_against_torch(*case, seed)


@SETTINGS
@given(pool_cases(MaxPool2d), seeds)
def test_max_pool2d_matches_torch_ties_included(case, seed):
    _check_against_torch(*case, seed)


@SETTINGS
@given(pool_cases(AvgPool2d), seeds)
def test_avg_pool2d_matches_torch(case, seed):
    _check_against_torch(*case, seed)


@SETTINGS
@given(flatten_cases(), seeds)
def test_flatten_matches_torch(case, seed):
    _check_against_torch(*case, seed)


@SETTINGS
@given(st.one_of(conv_cases(), pool_cases(MaxPool2d), pool_cases(AvgPool2d)), seeds)
def test_compare_passes_each_layer(case, seed):
    _check_compare(*case, seed)


def test_max_pool2d_sends_a_tie_to_the_first_maximum_like_torch():
    x = np.ones((1, 1, 2, 2))
    layer = MaxPool2d(2)
    layer.forward(x)
    np.testing.assert_array_equal(layer.backward(np.ones((1, 1, 1, 1)))[0, 0], [[1, 0], [0, 0]])
    _check_against_torch(MaxPool2d(2, 1), np.zeros((2, 3, 4, 4)), seed=0)


def test_max_pool2d_window_wholly_in_padding_passes_no_gradient():
    layer = MaxPool2d((1, 2), stride=1, padding=(0, 1), dilation=(1, 2))
    y = layer.forward(np.ones((1, 2, 1, 1)))
    assert np.isneginf(y).all()
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), np.zeros((1, 2, 1, 1)))


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: Conv2d(2, 2, 3, padding_mode="reflect"), "padding_mode"),
        (lambda: Conv2d(2, 2, 3, padding="same"), "padding"),
        (lambda: Conv2d(3, 2, 3, groups=2), "groups"),
        (lambda: MaxPool2d(2, ceil_mode=True), "ceil_mode"),
        (lambda: MaxPool2d(2, return_indices=True), "return_indices"),
        (lambda: MaxPool2d(2, padding=2), "padding"),
        (lambda: AvgPool2d(2, divisor_override=3), "divisor_override"),
        (lambda: AvgPool2d(3, ceil_mode=True), "ceil_mode"),
    ],
)
def test_unsupported_options_are_refused_by_name(build, option):
    with pytest.raises(ValueError, match=option) as raised:
        build()
    assert "\n" not in str(raised.value)


def test_conv2d_weights_transfer_both_ways_by_identity():
    layer = Conv2d(4, 6, (2, 3), groups=2, rng=np.random.default_rng(1))
    module = mirror_layer(layer)
    np.testing.assert_array_equal(module.weight.detach().numpy(), layer.params["W"])
    np.testing.assert_array_equal(module.bias.detach().numpy(), layer.params["b"])
    with torch.no_grad():
        module.weight.mul_(2)
    copy_from_module(module, layer)
    np.testing.assert_array_equal(layer.params["W"], module.weight.detach().numpy())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_conv_network_is_clean(dtype):
    model, _, x, target = conv_network(0)
    assert gp.compare(model, mirror(model), x, target, dtype=dtype).ok


# The three conv bugs are labelled ``unexplained`` today (no diagnosis yet recognises a flipped
# kernel, a shifted crop or a gradient laid at the wrong stride); the average pool's is
# ``scaled`` by the window size.
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name)
def test_conv_bug_is_found_where_it_is(bug, dtype):
    model, _, x, target = bug.build(0)
    report = gp.compare(model, mirror(model), x, target, dtype=dtype)
    assert not report.ok
    found = [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes]
    assert found == [(bug.layer, bug.quantity, bug.diagnosis)]
