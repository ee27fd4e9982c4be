"""Parity of ours' BatchNorm1d, BatchNorm2d, LayerNorm and Dropout (``ours/norm.py``) in
float64 and float32, in training and in eval mode: forward, dL/dx, parameter gradients and
batch norm's running statistics; Dropout's mask pinned on both sides."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradparity.ours import BatchNorm1d, BatchNorm2d, Dropout, LayerNorm

from .budget import DTYPES, assert_parity, check_layer, covers, dtypes, examples, seeds

SETTINGS = examples(15)
epsilons = st.sampled_from([1e-5, 1e-3, 0.1])
MODES = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])


def with_running(layer: Any, rng: np.random.Generator) -> Any:
    """``layer`` with running statistics away from torch's 0 and 1 (an eval pass uses them)."""
    dtype = layer.running_mean.dtype
    layer.running_mean = (0.3 * rng.standard_normal(layer.num_features)).astype(dtype)
    layer.running_var = (0.5 + rng.random(layer.num_features)).astype(dtype)
    return layer


@st.composite
def batch_norm_cases(draw: st.DrawFn, cls: type, least: int = 2) -> tuple[Any, np.ndarray, str]:
    """(layer, x, dtype): shapes (at least ``least`` examples), eps, momentum, affine and dtype
    drawn."""
    dtype = draw(dtypes)
    rng = np.random.default_rng(draw(seeds))
    n, c = draw(st.integers(least, 5)), draw(st.integers(1, 4))
    if cls is BatchNorm2d:
        shape: tuple[int, ...] = (n, c, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    else:
        length = draw(st.one_of(st.none(), st.integers(1, 4)))
        shape = (n, c) if length is None else (n, c, length)
    layer = cls(
        c,
        eps=draw(epsilons),
        momentum=draw(st.sampled_from([0.1, 0.0, 0.5, 1.0])),
        affine=draw(st.booleans()),
        rng=rng,
        dtype=DTYPES[dtype][0],
    )
    x = rng.standard_normal(shape) * 2 + 0.5
    return with_running(layer, rng), x, dtype


@covers(BatchNorm1d, BatchNorm2d)
@MODES
@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d], ids=["1d", "2d"])
@SETTINGS
@given(data=st.data(), seed=seeds)
def test_batch_norm_and_its_running_statistics(cls, training, data, seed):
    layer, x, dtype = data.draw(batch_norm_cases(cls))
    exact, rounded = check_layer(layer.train(training), x, dtype, np.random.default_rng(seed))
    assert exact.module.training == layer.training == training
    # The batch statistics are means over x (of squares for the variance), which cancel: torch
    # accumulates them in float64 on the CPU, ours in float32, so the floor is taken in ulps of
    # what was summed (explore: a running mean of 3.7e-3 from inputs up to 3.8).
    largest = float(np.abs(x).max())
    for name, operands in (("running_mean", largest), ("running_var", largest**2)):
        theirs32 = rounded and rounded.module.get_buffer(name).numpy()
        ours = getattr(layer, name)
        assert ours.dtype == DTYPES[dtype][0]
        assert_parity(name, ours, exact.module.get_buffer(name).numpy(), theirs32, operands)


@st.composite
def layer_norm_cases(draw: st.DrawFn, least: int = 1) -> tuple[LayerNorm, np.ndarray, str]:
    """(layer, x, dtype): leading and normalised dims (the first at least ``least``), eps,
    affine and bias drawn."""
    dtype = draw(dtypes)
    rng = np.random.default_rng(draw(seeds))
    lead = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
    normalized = [draw(st.integers(least, 5)), *draw(st.lists(st.integers(1, 4), max_size=1))]
    as_int = len(normalized) == 1 and draw(st.booleans())
    layer = LayerNorm(
        normalized[0] if as_int else tuple(normalized),
        eps=draw(epsilons),
        elementwise_affine=draw(st.booleans()),
        bias=draw(st.booleans()),
        rng=rng,
        dtype=DTYPES[dtype][0],
    )
    x = rng.standard_normal((*lead, *normalized)) * 2 - 0.5
    return layer, x, dtype


@covers(LayerNorm)
@SETTINGS
@given(case=layer_norm_cases(), seed=seeds)
def test_layer_norm(case, seed):
    check_layer(*case, np.random.default_rng(seed))


@covers(Dropout)
@MODES
@SETTINGS
@given(seed=seeds, dtype=dtypes, p=st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]), pinned=st.booleans(),
       shape=st.lists(st.integers(1, 5), min_size=2, max_size=3).map(tuple))  # fmt: skip
def test_dropout_with_one_mask_on_both_sides(training, seed, dtype, p, pinned, shape):
    """The mask is pinned on ours' layer, or drawn by its forward; the mirror applies that
    same mask (it reads ours' layer)."""
    rng = np.random.default_rng(seed)
    layer = Dropout(p, rng=rng).train(training)
    if pinned:
        layer.pinned_mask = rng.random(shape) >= p
    check_layer(layer, rng.standard_normal(shape), dtype, rng)
    assert (layer.mask is None) == (not training)
