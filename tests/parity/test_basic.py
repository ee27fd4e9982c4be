"""Parity of ours' Linear, Sigmoid, Tanh, ReLU, Softmax, SoftmaxCrossEntropy and MSE
(``ours/layers.py``, ``ours/losses.py``) in float64 and float32."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gradparity.ours import MSE, Linear, ReLU, Sigmoid, Softmax, SoftmaxCrossEntropy, Tanh

from .budget import check_layer, check_loss, covers, dtypes, examples, seeds

SETTINGS = examples(25)
batches = st.integers(1, 6)
features = st.integers(1, 7)
ACTIVATIONS = {"Sigmoid": Sigmoid, "Tanh": Tanh, "ReLU": ReLU, "Softmax": Softmax}


@covers(Linear)
@SETTINGS
@given(n=batches, n_in=features, n_out=features, dtype=dtypes, seed=seeds)
def test_linear(n, n_in, n_out, dtype, seed):
    rng = np.random.default_rng(seed)
    layer = Linear(n_in, n_out, rng=rng)
    check_layer(layer, rng.standard_normal((n, n_in)), dtype, rng)
    assert layer.grads["W"].shape == (n_in, n_out) and layer.grads["b"].shape == (n_out,)


@covers(*ACTIVATIONS.values())
@pytest.mark.parametrize("kind", sorted(ACTIVATIONS))
@SETTINGS
@given(n=batches, f=features, dtype=dtypes, seed=seeds)
@example(n=2, f=1, dtype="float32", seed=2)  # Softmax: a Jacobian's 1 - s rounds (explore)
def test_activation(kind, n, f, dtype, seed):
    """Softmax over one class is constant (refused elsewhere): two at least."""
    rng = np.random.default_rng(seed)
    layer = ACTIVATIONS[kind]()
    x = 3.0 * rng.standard_normal((n, f + (kind == "Softmax")))
    check_layer(layer, x, dtype, rng)
    assert layer.params == {} and layer.grads == {}


@covers(SoftmaxCrossEntropy)
@SETTINGS
@given(n=batches, c=features, dtype=dtypes, seed=seeds)
@example(n=1, c=2, dtype="float32", seed=89282492)  # a loss of 8.8e-4 (explore, fixed in ours)
def test_softmax_cross_entropy(n, c, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.standard_normal((n, c))
    check_loss(SoftmaxCrossEntropy(), logits, rng.integers(0, c, n), dtype)


@covers(MSE)
@SETTINGS
@given(n=batches, f=features, dtype=dtypes, seed=seeds)
def test_mse(n, f, dtype, seed):
    rng = np.random.default_rng(seed)
    check_loss(MSE(), rng.standard_normal((n, f)), rng.standard_normal((n, f)), dtype)
