"""ours' Embedding, GELU, LeakyReLU, LogSoftmax with NLLLoss, and BCEWithLogits against torch.

Direct checks (forward equals torch's, dL/dx and parameter gradients equal autograd's under a
random upstream gradient) in float64 and float32, with hypothesis-drawn shapes and options;
the same layers in small networks through ``gp.compare``; their options refused in one line;
and the corpus bugs of these layers found at the right layer and quantity.
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

SETTINGS = settings(max_examples=15, deadline=None)
NETWORK_SETTINGS = settings(max_examples=4, deadline=None)  # a compare runs both modes
RTOL64 = 1e-10
RTOL32 = 1e-4  # a fixed share of the tensor's scale, until float32 budgets are measured

DTYPES = {"float64": (np.float64, torch.float64), "float32": (np.float32, torch.float32)}
dtypes = st.sampled_from(sorted(DTYPES))
seeds = st.integers(0, 2**32 - 1)
batches = st.integers(1, 6)
features = st.integers(1, 7)


def close(ours: np.ndarray, ref: np.ndarray, dtype: str) -> None:
    """Equal to round-off: float64 near exactly, float32 within RTOL32 of ref's scale."""
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rtol = RTOL64 if dtype == "float64" else RTOL32
    np.testing.assert_allclose(np.asarray(ours, np.float64), ref, rtol=rtol, atol=rtol * scale)


def torch_pass(module: torch.nn.Module, x: np.ndarray, upstream: np.ndarray, dtype: str):
    """(output, dL/dx or None for integer x, {param name: dL/dparam}) of ``module`` in dtype."""
    tdtype = DTYPES[dtype][1]
    module = module.to(tdtype)
    x_t = torch.as_tensor(x)
    if x_t.is_floating_point():
        x_t = x_t.to(tdtype).requires_grad_(True)
    named = list(module.named_parameters())
    out = module(x_t)
    wrt = ([x_t] if x_t.requires_grad else []) + [p for _, p in named]
    grads = torch.autograd.grad(out, wrt, torch.as_tensor(upstream).to(tdtype)) if wrt else []
    grad_x = grads[0].numpy() if x_t.requires_grad else None
    by_name = {n: g.numpy() for (n, _), g in zip(named, grads[len(grads) - len(named) :])}
    return out.detach().numpy(), grad_x, by_name


def check_layer(layer, x: np.ndarray, dtype: str, rng: np.random.Generator) -> None:
    """ours' forward, dL/dx and parameter gradients equal the mirror's, dtype kept."""
    np_dtype = DTYPES[dtype][0]
    for key in layer.params:
        layer.params[key] = layer.params[key].astype(np_dtype)
    module = mirror_layer(layer)
    if x.dtype.kind == "f":
        x = x.astype(np_dtype)
    y = layer.forward(x)
    upstream = rng.standard_normal(y.shape).astype(np_dtype)
    grad_x = layer.backward(upstream)
    ref_y, ref_grad_x, ref_grads = torch_pass(module, x, upstream, dtype)
    assert y.dtype == np_dtype and grad_x.dtype == np_dtype
    close(y, ref_y, dtype)
    if ref_grad_x is not None:
        close(grad_x, ref_grad_x, dtype)
    for key, value in layer.grads.items():
        assert value.dtype == np_dtype
        close(value, ref_grads[key], dtype)


def check_loss(loss, z: np.ndarray, target: np.ndarray, dtype: str) -> None:
    """ours' loss value and dL/dz equal torch's in dtype."""
    np_dtype, tdtype = DTYPES[dtype]
    z = z.astype(np_dtype)
    value = loss.forward(z, target)
    grad = loss.backward()
    z_t = torch.as_tensor(z).requires_grad_(True)
    t = torch.as_tensor(target)
    ref = mirror_loss(loss)(z_t, t.to(tdtype) if t.is_floating_point() else t)
    (ref_grad,) = torch.autograd.grad(ref, [z_t])
    assert grad.dtype == np_dtype
    close(np.array(value), ref.detach().numpy(), dtype)
    close(grad, ref_grad.numpy(), dtype)


# --- direct checks --------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, dtype=dtypes, n=batches, steps=st.none() | st.integers(1, 5),
       vocab=st.integers(1, 6), dim=features)  # fmt: skip
def test_embedding_matches_torch(seed, dtype, n, steps, vocab, dim):
    """Indices (N,) or (N, T) drawn from a small vocabulary, so most repeat: their upstream
    rows must add up in the weight gradient."""
    rng = np.random.default_rng(seed)
    shape = (n,) if steps is None else (n, steps)
    check_layer(Embedding(vocab, dim, rng=rng), rng.integers(0, vocab, shape), dtype, rng)


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


@SETTINGS
@given(seed=seeds, dtype=dtypes, n=batches, f=features, scale=st.sampled_from([0.1, 1.0, 6.0]),
       approximate=st.sampled_from(["none", "tanh"]))  # fmt: skip
def test_gelu_matches_torch(seed, dtype, n, f, scale, approximate):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((n, f))
    check_layer(GELU(approximate=approximate), x, dtype, rng)


@SETTINGS
@given(seed=seeds, dtype=dtypes, n=batches, f=features,
       slope=st.floats(-2.0, 2.0, allow_nan=False))  # fmt: skip
def test_leaky_relu_matches_torch(seed, dtype, n, f, slope):
    """Half-integer inputs, so exact zeros occur: the slope applies there, as in torch."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, (n, f)) / 2.0
    check_layer(LeakyReLU(negative_slope=slope), x, dtype, rng)


@SETTINGS
@given(seed=seeds, dtype=dtypes, shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       data=st.data())  # fmt: skip
def test_log_softmax_matches_torch(seed, dtype, shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    rng = np.random.default_rng(seed)
    x = 3.0 * rng.standard_normal(tuple(shape))
    check_layer(LogSoftmax(dim=dim), x, dtype, rng)


@SETTINGS
@given(seed=seeds, dtype=dtypes, n=batches, c=st.integers(1, 6))
def test_nll_loss_matches_torch(seed, dtype, n, c):
    rng = np.random.default_rng(seed)
    log_probs = np.log(rng.dirichlet(np.ones(c), size=n))
    check_loss(NLLLoss(), log_probs, rng.integers(0, c, n), dtype)


@SETTINGS
@given(seed=seeds, dtype=dtypes, shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       scale=st.sampled_from([0.5, 5.0, 60.0]), hard=st.booleans())  # fmt: skip
def test_bce_with_logits_matches_torch(seed, dtype, shape, scale, hard):
    """Logits up to |z| ~ 200 stay finite (the stable form); targets soft or exactly 0/1."""
    rng = np.random.default_rng(seed)
    z = scale * rng.standard_normal(tuple(shape))
    target = rng.integers(0, 2, z.shape).astype(float) if hard else rng.uniform(0, 1, z.shape)
    check_loss(BCEWithLogits(), z, target.astype(DTYPES[dtype][0]), dtype)


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
