"""Parity of ours' Embedding, GELU, LeakyReLU, LogSoftmax, NLLLoss and BCEWithLogits
(``ours/activations.py``, ``ours/embedding.py``, ``ours/losses_more.py``) in float64 and
float32."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from gradparity.ours import GELU, BCEWithLogits, Embedding, LeakyReLU, LogSoftmax, NLLLoss

from .budget import check_layer, check_loss, covers, dtypes, examples, seeds

SETTINGS = examples(15)
batches = st.integers(1, 6)
features = st.integers(1, 7)
shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


@covers(Embedding)
@SETTINGS
@given(seed=seeds, dtype=dtypes, n=batches, steps=st.none() | st.integers(1, 5),
       vocab=st.integers(1, 6), dim=features)  # fmt: skip
def test_embedding(seed, dtype, n, steps, vocab, dim):
    """Indices (N,) or (N, T) drawn from a small vocabulary, so most repeat: their upstream
    rows must add up in the weight gradient."""
    rng = np.random.default_rng(seed)
    shape = (n,) if steps is None else (n, steps)
    check_layer(Embedding(vocab, dim, rng=rng), rng.integers(0, vocab, shape), dtype, rng)


@covers(GELU)
@SETTINGS
@given(seed=seeds, dtype=dtypes, n=batches, f=features, scale=st.sampled_from([0.1, 1.0, 6.0]),
       approximate=st.sampled_from(["none", "tanh"]))  # fmt: skip
# x = -5.5: ours' float32 1 + tanh(u) cancelled to one ulp of 1, y off by 11 times its size.
@example(seed=3360798, dtype="float32", n=1, f=1, scale=6.0, approximate="tanh")
def test_gelu(seed, dtype, n, f, scale, approximate):
    rng = np.random.default_rng(seed)
    check_layer(GELU(approximate=approximate), scale * rng.standard_normal((n, f)), dtype, rng)


@covers(LeakyReLU)
@SETTINGS
@given(seed=seeds, dtype=dtypes, n=batches, f=features,
       slope=st.floats(-2.0, 2.0, allow_nan=False))  # fmt: skip
def test_leaky_relu(seed, dtype, n, f, slope):
    """Half-integer inputs, so exact zeros occur: the slope applies there, as in torch."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, (n, f)) / 2.0
    check_layer(LeakyReLU(negative_slope=slope), x, dtype, rng)


@covers(LogSoftmax)
@SETTINGS
@given(seed=seeds, dtype=dtypes, shape=shapes, data=st.data())
def test_log_softmax(seed, dtype, shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    rng = np.random.default_rng(seed)
    check_layer(LogSoftmax(dim=dim), 3.0 * rng.standard_normal(shape), dtype, rng)


@covers(NLLLoss)
@SETTINGS
@given(seed=seeds, dtype=dtypes, n=batches, c=st.integers(1, 6))
def test_nll_loss(seed, dtype, n, c):
    rng = np.random.default_rng(seed)
    log_probs = np.log(rng.dirichlet(np.ones(c), size=n))
    check_loss(NLLLoss(), log_probs, rng.integers(0, c, n), dtype)


@covers(BCEWithLogits)
@SETTINGS
@given(seed=seeds, dtype=dtypes, shape=shapes, scale=st.sampled_from([0.5, 5.0, 60.0]),
       hard=st.booleans())  # fmt: skip
def test_bce_with_logits(seed, dtype, shape, scale, hard):
    """Logits up to |z| ~ 200 stay finite (the stable form); targets soft or exactly 0/1."""
    rng = np.random.default_rng(seed)
    z = scale * rng.standard_normal(shape)
    target = rng.integers(0, 2, z.shape).astype(float) if hard else rng.uniform(0, 1, z.shape)
    check_loss(BCEWithLogits(), z, target, dtype)
