"""ours' RNN, LSTM and Residual against their torch mirrors (issue 15, items 1, 6 and 7).

The layers through ``gp.compare`` in both dtypes (the direct checks are in
``tests/parity/``), weight transfer, refused options, and the recurrent corpus bugs
localized.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradparity as gp
from gradparity.corpus.layer_bugs import inject
from gradparity.corpus.recurrent_bugs import BUGS, UNMUTATED
from gradparity.ours import (
    LSTM,
    MSE,
    RNN,
    SGD,
    Linear,
    ReLU,
    Residual,
    Sequential,
    Tanh,
)
from gradparity.reference import copy_weights, mirror, mirror_layer
from gradparity.reference.mirror import copy_from_module, copy_into_module, mirror_loss

SETTINGS = settings(max_examples=15, deadline=None)
DTYPES = {"float64": (np.float64, torch.float64), "float32": (np.float32, torch.float32)}

sizes = st.integers(1, 4)
steps = st.integers(1, 5)  # one step: no recurrence at all; more: backprop through time
dtypes = st.sampled_from(sorted(DTYPES))
seeds = st.integers(0, 2**32 - 1)


def residual_block(kind: str, width: int, rng: np.random.Generator, dtype) -> Residual:
    """A residual block of one of the shapes it takes: a single layer, a Sequential, nested."""
    if kind == "single":
        return Residual(Linear(width, width, rng=rng, dtype=dtype))
    inner = Sequential(
        ("fc1", Linear(width, width + 2, rng=rng, dtype=dtype)),
        ("act", Tanh()),
        ("fc2", Linear(width + 2, width, rng=rng, dtype=dtype)),
    )
    if kind == "sequential":
        return Residual(inner)
    return Residual(Sequential(("inner", Residual(inner)), ("act", ReLU())))  # nested


# ---------------------------------------------------------------- through the harness


def sequence_model(n_layers: int, d: int, h: int, kinds: list, rng, dtype) -> Sequential:
    """Recurrent layers one after the other (widths d -> h -> h ...), the last wrapped in a
    residual when the widths allow it."""
    layers, width = [], d
    for k in range(n_layers):
        layers.append((f"r{k}", kinds[k](width, h, rng=rng, dtype=dtype)))
        width = h
    layers.append(("skip", Residual(RNN(h, h, rng=rng, dtype=dtype))))
    return Sequential(*layers)


@SETTINGS
@given(
    kinds=st.lists(st.sampled_from([RNN, LSTM]), min_size=2, max_size=2),
    n_layers=st.integers(1, 2),
    n=sizes,
    t=steps,
    d=sizes,
    h=sizes,
    dtype=dtypes,
    seed=seeds,
)
def test_recurrent_stack_reaches_parity_through_compare(kinds, n_layers, n, t, d, h, dtype, seed):
    rng = np.random.default_rng(seed)
    np_dtype = DTYPES[dtype][0]
    model = sequence_model(n_layers, d, h, kinds, rng, np_dtype)
    x = rng.standard_normal((n, t, d)).astype(np_dtype)
    target = rng.standard_normal((n, t, h)).astype(np_dtype)
    report = gp.compare(
        model, mirror(model), x, target, ours_loss=MSE(), reference_loss=nn.MSELoss(), dtype=dtype
    )
    assert report.ok, [f.message for f in report.root_causes]
    assert {"grad:weight_ih", "grad:weight_hh"} <= set(report.table["quantity"])
    assert_every_parameter_compared(report, "skip", model["skip"].params)
    assert set(report.table["mode"]) == {"chain", "isolate"}


@SETTINGS
@given(kind=st.sampled_from(["single", "sequential", "nested"]), dtype=dtypes, seed=seeds)
def test_residual_network_reaches_parity_through_compare(kind, dtype, seed):
    rng = np.random.default_rng(seed)
    np_dtype = DTYPES[dtype][0]
    model = Sequential(
        ("fc0", Linear(5, 4, rng=rng, dtype=np_dtype)),
        ("res", residual_block(kind, 4, rng, np_dtype)),
        ("head", Linear(4, 3, rng=rng, dtype=np_dtype)),
    )
    x = rng.standard_normal((6, 5)).astype(np_dtype)
    report = gp.compare(model, mirror(model), x, rng.integers(0, 3, size=6), dtype=dtype)
    assert report.ok, [f.message for f in report.root_causes]
    assert_every_parameter_compared(report, "res", model["res"].params)


def assert_every_parameter_compared(report, block: str, params) -> None:
    """Each parameter of ``block`` (keys dotted through its children: ``fc1.W``) has a gradient
    row, at the innermost layer holding it (``res.fc1`` ``grad:W``) or, where the block is
    compared whole, at the block (``res`` ``grad:fc1.W``)."""
    rows = set(zip(report.table["layer"], report.table["quantity"]))
    for key in params:
        parts = key.split(".")
        places = [
            (".".join([block, *parts[:i]]), "grad:" + ".".join(parts[i:]))
            for i in range(len(parts))
        ]
        assert any(place in rows for place in places), (key, places)


# ---------------------------------------------------------------- weights and parameters


@pytest.mark.parametrize("kind", [RNN, LSTM])
def test_recurrent_weights_cross_unconverted_both_ways(kind):
    layer = kind(3, 3, rng=np.random.default_rng(0))  # square weight_ih: identity, not transpose
    module = mirror_layer(layer)
    for key, value in layer.params.items():
        np.testing.assert_array_equal(getattr(module.rnn, f"{key}_l0").detach().numpy(), value)
    other = kind(3, 3, rng=np.random.default_rng(1))
    copy_from_module(module, other)
    for key, value in layer.params.items():
        np.testing.assert_array_equal(other.params[key], value)
    copy_into_module(kind(3, 3, rng=np.random.default_rng(2)), module)
    assert not np.array_equal(module.rnn.weight_hh_l0.detach().numpy(), layer.params["weight_hh"])


def test_residual_params_are_the_blocks_under_dotted_names():
    block = Sequential(("fc1", Linear(3, 3)), ("act", Tanh()), ("fc2", Linear(3, 3)))
    res = Residual(block)
    assert list(res.params) == ["fc1.W", "fc1.b", "fc2.W", "fc2.b"]
    assert list(Residual(Linear(2, 2)).params) == ["0.W", "0.b"]
    new = np.ones((3, 3))
    res.params["fc2.W"] = new  # rebinding through the view reaches the block's layer
    assert block["fc2"].params["W"] is new
    res.forward(np.ones((2, 3)))
    res.backward(np.ones((2, 3)))
    assert list(res.grads) == list(res.params)


def test_residual_weight_copy_transposes_square_linear_weights():
    model = Sequential(("res", Residual(Linear(3, 3, rng=np.random.default_rng(0)))))
    torch_model = mirror(model)
    ours_w = model["res"].params["0.W"]
    np.testing.assert_array_equal(torch_model.res[0].weight.detach().numpy(), ours_w.T)
    model["res"].params["0.W"] = ours_w + 1.0
    copy_weights(model, torch_model)
    np.testing.assert_array_equal(torch_model.res[0].weight.detach().numpy(), (ours_w + 1.0).T)
    copy_weights(Sequential(("res", Residual(Linear(3, 3)))), torch_model)
    copy_weights(model, torch_model, direction="to_ours")
    np.testing.assert_array_equal(
        model["res"].params["0.W"], torch_model.res[0].weight.detach().numpy().T
    )


def test_an_optimiser_steps_the_blocks_weights_in_place():
    block = Linear(2, 2, rng=np.random.default_rng(0))
    model = Sequential(("res", Residual(block)))
    before = block.params["W"].copy()
    model.forward(np.ones((1, 2)))
    model.backward(np.ones((1, 2)))
    SGD(model, lr=0.1).step()
    np.testing.assert_allclose(block.params["W"], before - 0.1 * block.grads["W"])


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: RNN(2, 3, nonlinearity="relu"), "nonlinearity"),
        (lambda: RNN(2, 3, num_layers=2), "num_layers"),
        (lambda: RNN(2, 3, bidirectional=True), "bidirectional"),
        (lambda: LSTM(2, 3, batch_first=False), "batch_first"),
        (lambda: LSTM(2, 3, proj_size=1), "proj_size"),
    ],
)
def test_unsupported_options_are_refused_in_one_line(build, option):
    with pytest.raises(ValueError, match=option) as info:
        build()
    assert "\n" not in str(info.value)


def test_wrong_inputs_are_refused_in_one_line():
    for wrong in (np.ones((4, 2)), np.ones((2, 4, 5, 3))):
        with pytest.raises(ValueError, match=r"\(N, T, 3\) or \(T, 3\)"):
            LSTM(3, 2).forward(wrong)
    with pytest.raises(ValueError, match="changed the shape"):
        Residual(Linear(3, 2)).forward(np.ones((4, 3)))


# ---------------------------------------------------------------- corpus


@pytest.mark.parametrize("name", sorted(UNMUTATED))
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_unmutated_corpus_networks_are_clean(name, dtype):
    model, loss, x, target = UNMUTATED[name](0)
    if dtype == "float32":
        model, loss, x = _as_float32(model, loss, x)
    report = gp.compare(
        model, mirror(model), x, target, ours_loss=loss, reference_loss=mirror_loss(loss),
        dtype=dtype,
    )  # fmt: skip
    assert report.ok, [f.message for f in report.root_causes]


def _as_float32(model, loss, x):
    """The model's parameters and the input in float32."""
    for _, layer in model.named_layers():
        for key in list(layer.params):
            layer.params[key] = layer.params[key].astype(np.float32)
    return model, loss, x.astype(np.float32)


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name)
@pytest.mark.parametrize(("seed", "dtype"), [(0, "float64"), (1, "float64"), (0, "float32")])
def test_recurrent_bug_is_localized_and_labelled(bug, seed, dtype):
    clean_model, clean_loss, x, target = bug.build(seed)
    reference = mirror(UNMUTATED["residual" if bug.layer == "res" else "recurrent"](seed)[0])
    model, loss = inject(clean_model, clean_loss, bug)
    if dtype == "float32":
        model, loss, x = _as_float32(model, loss, x)
    report = gp.compare(
        model, reference, x, target, ours_loss=loss, reference_loss=mirror_loss(loss),
        dtype=dtype,
    )  # fmt: skip
    assert not report.ok
    first = report.root_causes[0]
    assert (first.layer, first.quantity, first.diagnosis) == (
        bug.layer,
        bug.quantity,
        bug.diagnosis,
    ), first.message
    assert {f.layer for f in report.root_causes} == {bug.layer}
