"""ours' Embedding, GELU, LeakyReLU, LogSoftmax with NLLLoss, and BCEWithLogits against torch.

The embedding's accumulation and weight layout; the layers in small networks through
``gp.compare``; their options refused in one line; and the corpus bugs of these layers found at
the right layer and quantity. The direct checks against torch are in ``tests/parity/``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradparity as gp
from gradparity.corpus.misc_bugs import (
    BUGS,
    activation_network,
    embedding_network,
    nll_network,
)
from gradparity.corpus.selftest import run_bug
from gradparity.ours import (
    GELU,
    BCEWithLogits,
    Embedding,
    LeakyReLU,
    Linear,
    LogSoftmax,
    NLLLoss,
    Sequential,
    Tanh,
)
from gradparity.reference import copy_from_module, mirror, mirror_layer, mirror_loss

NETWORK_SETTINGS = settings(max_examples=4, deadline=None)  # a compare runs both modes

DTYPES = {"float64": (np.float64, torch.float64), "float32": (np.float32, torch.float32)}
dtypes = st.sampled_from(sorted(DTYPES))
seeds = st.integers(0, 2**32 - 1)


# --- embedding ------------------------------------------------------------------------------


def test_embedding_repeated_index_accumulates():
    layer = Embedding(3, 2)
    layer.forward(np.array([[1, 1], [1, 0]]))
    layer.backward(np.arange(8.0).reshape(2, 2, 2))
    np.testing.assert_array_equal(layer.grads["weight"], [[6, 7], [6, 9], [0, 0]])


def test_square_embedding_weight_keeps_its_layout():
    """V == D: copying back from torch must not transpose the table (ours keys it 'weight')."""
    layer = Embedding(3, 3, rng=np.random.default_rng(1))
    module = mirror_layer(layer)
    np.testing.assert_array_equal(module.weight.detach().numpy(), layer.params["weight"])
    with torch.no_grad():
        module.weight.mul_(2)
    before = layer.params["weight"].copy()
    copy_from_module(module, layer)
    np.testing.assert_array_equal(layer.params["weight"], 2 * before)


# --- options refused in one line ------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: GELU(approximate="erf"), "approximate"),
        (lambda: Embedding(0, 3), "num_embeddings"),
        (lambda: LogSoftmax(dim=2).forward(np.zeros((2, 3))), "dim=2"),
        (lambda: Embedding(3, 2).forward(np.array([0.5, 1.0])), "integer indices"),
        (lambda: Embedding(3, 2).forward(np.array([0, 3])), "[0, 3)"),
        (lambda: NLLLoss().forward(np.zeros((2, 3)), np.array([0.0, 1.0])), "integer classes"),
        (lambda: NLLLoss().forward(np.zeros((2, 3)), np.array([0, 3])), "[0, 3)"),
        (lambda: BCEWithLogits().forward(np.zeros(2), np.array([0.0, 2.0])), "[0, 1]"),
        (lambda: BCEWithLogits().forward(np.zeros(2), np.zeros(3)), "target shape"),
    ],
)
def test_bad_options_and_inputs_raise_one_line(make, words):
    with pytest.raises(ValueError) as info:
        make()
    assert words in str(info.value) and "\n" not in str(info.value)


# --- through gp.compare ---------------------------------------------------------------------


def bce_network(seed: int):
    """x (8, 5) -> fc1 -> tanh -> fc2 -> logits (8, 3) -> BCEWithLogits against soft targets."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("fc1", Linear(5, 4, rng=rng)), ("act1", Tanh()), ("fc2", Linear(4, 3, rng=rng))
    )
    x = rng.standard_normal((8, 5))
    return model, BCEWithLogits(), x, rng.uniform(0, 1, (8, 3))


NETWORKS = {
    "embedding": embedding_network,
    "gelu": lambda s: activation_network(s, act=GELU),
    "gelu_tanh": lambda s: activation_network(s, act=lambda: GELU(approximate="tanh")),
    "leaky_relu": lambda s: activation_network(s, act=lambda: LeakyReLU(0.2)),
    "log_softmax_nll": nll_network,
    "bce_with_logits": bce_network,
}


@pytest.mark.parametrize("network", sorted(NETWORKS))
@NETWORK_SETTINGS
@given(seed=st.integers(0, 1000), dtype=dtypes)
def test_compare_finds_parity(network, seed, dtype):
    """Correct layers give a report with nothing found, in both modes and both dtypes (an
    Embedding first: its integer input has no gradient, so no grad_input row)."""
    model, loss, x, target = NETWORKS[network](seed)
    report = gp.compare(
        model, mirror(model), x, target, ours_loss=loss, reference_loss=mirror_loss(loss),
        dtype=dtype, seed=seed,
    )  # fmt: skip
    assert report.ok, [f.message for f in report.root_causes]
    assert set(report.table["mode"]) == {"chain", "isolate"}
    if network == "embedding":
        emb = report.table[report.table["layer"] == "emb"]
        assert set(emb["quantity"]) == {"output", "grad:weight"}


# --- corpus ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_corpus_bug_is_localized_and_labelled(bug, seed):
    result = run_bug(bug, seed)
    assert result.localized, result.found
    assert result.label == bug.diagnosis, result.found
    assert not result.minor
