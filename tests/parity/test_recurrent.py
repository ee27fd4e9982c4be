"""Parity of ours' RNN, LSTM and Residual (``ours/recurrent.py``) and the zoo's LastStep in
float64 and float32: forward, dL/dx and every parameter gradient, through time and through the
skip path; the residual blocks hold a single layer, a ``Sequential`` or another residual."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gradparity.ours import LSTM, RNN, LastStep, Linear, ReLU, Residual, Sequential, Tanh

from .budget import check_layer, covers, dtypes, examples, seeds

SETTINGS = examples(15)
sizes = st.integers(1, 4)
steps = st.integers(1, 5)  # one step: no recurrence at all; more: backprop through time


@covers(RNN, LSTM)
@SETTINGS
@given(kind=st.sampled_from([RNN, LSTM]), n=st.none() | sizes, t=steps, d=sizes, h=sizes,
       dtype=dtypes, seed=seeds)  # fmt: skip
def test_recurrent_layer(kind, n, t, d, h, dtype, seed):
    """n None: an unbatched (T, D) sequence, as torch takes it."""
    rng = np.random.default_rng(seed)
    shape = (t, d) if n is None else (n, t, d)
    check_layer(kind(d, h, rng=rng), rng.standard_normal(shape), dtype, rng)


@covers(LastStep)
@SETTINGS
@given(n=sizes, t=steps, h=sizes, dtype=dtypes, seed=seeds)
def test_last_step(n, t, h, dtype, seed):
    """The zoo's sequence head: the last time step forward, zeros elsewhere backward."""
    rng = np.random.default_rng(seed)
    check_layer(LastStep(), rng.standard_normal((n, t, h)), dtype, rng)


def residual_block(kind: str, width: int, rng: np.random.Generator) -> Residual:
    """A residual block of one of the shapes it takes: a single layer, a Sequential, nested."""
    if kind == "single":
        return Residual(Linear(width, width, rng=rng))
    inner = Sequential(
        ("fc1", Linear(width, width + 2, rng=rng)),
        ("act", Tanh()),
        ("fc2", Linear(width + 2, width, rng=rng)),
    )
    if kind == "sequential":
        return Residual(inner)
    return Residual(Sequential(("inner", Residual(inner)), ("act", ReLU())))


@covers(Residual, Sequential)
@SETTINGS
@given(kind=st.sampled_from(["single", "sequential", "nested"]), n=sizes, width=sizes,
       dtype=dtypes, seed=seeds)  # fmt: skip
def test_residual(kind, n, width, dtype, seed):
    rng = np.random.default_rng(seed)
    layer = residual_block(kind, width, rng)
    check_layer(layer, rng.standard_normal((n, width)), dtype, rng)


@SETTINGS
@given(n=sizes, t=steps, d=sizes, dtype=dtypes, seed=seeds)
def test_residual_around_a_recurrent_layer(n, t, d, dtype, seed):
    rng = np.random.default_rng(seed)
    check_layer(Residual(LSTM(d, d, rng=rng)), rng.standard_normal((n, t, d)), dtype, rng)
