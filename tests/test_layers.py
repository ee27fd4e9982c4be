"""ours' Linear, activations and losses against their torch counterparts.

The mirrors' types and copied weights, saturating activations kept finite, models through the
harness in both modes, and weight transfer in both directions (the direct checks of each layer
and loss against torch, in float64 and float32, are in ``tests/parity/``).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradparity as gp
from gradparity.ours import (
    MSE,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    SoftmaxCrossEntropy,
    Tanh,
)
from gradparity.reference import copy_weights, mirror, mirror_layer

RTOL, ATOL = 1e-10, 1e-12
SETTINGS = settings(max_examples=25, deadline=None)

batches = st.integers(1, 6)
features = st.integers(1, 7)
classes = st.integers(2, 7)  # a softmax over one class is constant: refused, tested elsewhere
seeds = st.integers(0, 2**32 - 1)

ACTIVATIONS = {
    "Sigmoid": (Sigmoid, nn.Sigmoid),
    "Tanh": (Tanh, nn.Tanh),
    "ReLU": (ReLU, nn.ReLU),
    "Softmax": (Softmax, lambda: nn.Softmax(dim=-1)),
}


def close(ours, ref) -> None:
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=RTOL, atol=ATOL)


def torch_run(module: nn.Module, x: np.ndarray, upstream: np.ndarray):
    """(output, dL/dx, {param name: dL/dparam}) of ``module`` under ``upstream``."""
    x_t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    named = list(module.named_parameters())
    out = module(x_t)
    grads = torch.autograd.grad(
        out, [x_t] + [p for _, p in named], grad_outputs=torch.tensor(upstream, dtype=torch.float64)
    )
    return (
        out.detach().numpy(),
        grads[0].numpy(),
        {n: g.numpy() for (n, _), g in zip(named, grads[1:])},
    )


# ------------------------------------------------------------------ mirrors and edge values


@pytest.mark.parametrize("kind", list(ACTIVATIONS))
@SETTINGS
@given(n=batches, f=features, seed=seeds)
def test_activation_leaves_its_inputs_alone(kind, n, f, seed):
    rng = np.random.default_rng(seed)
    x, g = rng.standard_normal((n, f)) * 3.0, rng.standard_normal((n, f))
    x_fed, g_fed = x.copy(), g.copy()
    layer = ACTIVATIONS[kind][0]()
    layer.forward(x_fed)
    layer.backward(g_fed)
    np.testing.assert_array_equal(x_fed, x)
    np.testing.assert_array_equal(g_fed, g)


@SETTINGS
@given(n=batches, n_in=features, n_out=features, seed=seeds)
def test_linear_mirror_layer_copies_weights(n, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    layer = Linear(n_in, n_out, rng=rng)
    module = mirror_layer(layer)
    assert isinstance(module, nn.Linear)
    assert module.weight.dtype == torch.float64
    np.testing.assert_array_equal(module.weight.detach().numpy(), layer.params["W"].T)
    np.testing.assert_array_equal(module.bias.detach().numpy(), layer.params["b"])
    x = rng.standard_normal((n, n_in))
    g = rng.standard_normal((n, n_out))
    ref_out, ref_dx, ref_grads = torch_run(module, x, g)
    close(layer.forward(x), ref_out)
    close(layer.backward(g), ref_dx)
    close(layer.grads["W"], ref_grads["weight"].T)
    close(layer.grads["b"], ref_grads["bias"])


@pytest.mark.parametrize("kind", list(ACTIVATIONS))
def test_activation_mirror_layer_type(kind):
    ours_cls, torch_cls = ACTIVATIONS[kind]
    assert type(mirror_layer(ours_cls())) is type(torch_cls())


@pytest.mark.parametrize("kind", ["Sigmoid", "Tanh", "Softmax"])
def test_saturating_activations_stay_finite(kind):
    ours_cls, torch_cls = ACTIVATIONS[kind]
    x = np.array([[-800.0, -30.0, 0.0, 30.0, 800.0]])
    g = np.array([[0.3, -1.2, 0.7, 2.0, -0.4]])
    ref_out, ref_dx, _ = torch_run(torch_cls(), x, g)
    layer = ours_cls()
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is fine
        out = layer.forward(x)
        dx = layer.backward(g)
    close(out, ref_out)
    close(dx, ref_dx)


def test_mirror_loss_types():
    assert isinstance(gp.reference.mirror_loss(SoftmaxCrossEntropy()), nn.CrossEntropyLoss)
    assert isinstance(gp.reference.mirror_loss(MSE()), nn.MSELoss)


# ------------------------------------------------------------------ through the harness


def _rows_ok(report) -> None:
    table = report.table
    assert report.ok, report.summary()
    assert report.root_causes == []
    assert set(table["mode"]) == {"chain", "isolate"}
    assert (table["status"] == "ok").all(), table[table["status"] != "ok"].to_string()


def _expect_rows(report, model) -> None:
    """Both modes hold output and grad_input of every layer, grad:<key> of every param, loss."""
    table = report.table
    for mode in ("chain", "isolate"):
        got = set(
            zip(
                table.loc[table["mode"] == mode, "layer"],
                table.loc[table["mode"] == mode, "quantity"],
            )
        )
        for name, layer in model.named_layers():
            assert (name, "output") in got
            assert (name, "grad_input") in got
            for key in layer.params:
                assert (name, f"grad:{key}") in got
        assert ("loss", "output") in got and ("loss", "grad_input") in got


@pytest.mark.parametrize("kind", list(ACTIVATIONS))
@SETTINGS
@given(n=batches, n_in=features, hidden=features, n_out=classes, seed=seeds)
def test_harness_ok_on_mirror_cross_entropy(kind, n, n_in, hidden, n_out, seed):
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("fc1", Linear(n_in, hidden, rng=rng)),
        ("act1", ACTIVATIONS[kind][0]()),
        ("fc2", Linear(hidden, n_out, rng=rng)),
    )
    x = rng.standard_normal((n, n_in))
    target = rng.integers(0, n_out, n)
    report = gp.compare(model, mirror(model), x, target, seed=seed % 1000)
    _rows_ok(report)
    _expect_rows(report, model)


@pytest.mark.parametrize("kind", list(ACTIVATIONS))
@SETTINGS
@given(n=batches, n_in=features, n_out=features, seed=seeds)
def test_harness_ok_on_mirror_mse(kind, n, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    model = Sequential(("fc1", Linear(n_in, n_out, rng=rng)), ("act1", ACTIVATIONS[kind][0]()))
    x = rng.standard_normal((n, n_in))
    target = rng.standard_normal((n, n_out))
    report = gp.compare(model, mirror(model), x, target, ours_loss=MSE())
    _rows_ok(report)
    _expect_rows(report, model)
    assert set(report.table.loc[report.table["layer"] == "loss", "type"]) == {"MSE"}


@SETTINGS
@given(
    n=batches,
    sizes=st.lists(features, min_size=1, max_size=4).flatmap(
        lambda hidden: classes.map(lambda out: [*hidden, out])
    ),
    seed=seeds,
    kinds=st.lists(st.sampled_from(list(ACTIVATIONS)), min_size=4, max_size=4),
)
def test_harness_ok_on_random_deep_mirror(n, sizes, seed, kinds):
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(len(sizes) - 1):
        layers.append((f"fc{i + 1}", Linear(sizes[i], sizes[i + 1], rng=rng)))
        if i < len(sizes) - 2:
            layers.append((f"act{i + 1}", ACTIVATIONS[kinds[i]][0]()))
    model = Sequential(*layers)
    x = rng.standard_normal((n, sizes[0]))
    target = rng.integers(0, sizes[-1], n)
    report = gp.compare(model, mirror(model), x, target)
    _rows_ok(report)
    _expect_rows(report, model)


def test_harness_float32_mode_ok():
    rng = np.random.default_rng(3)
    model = Sequential(
        ("fc1", Linear(5, 4, rng=rng)), ("act1", Tanh()), ("fc2", Linear(4, 3, rng=rng))
    )
    report = gp.compare(
        model, mirror(model), rng.standard_normal((4, 5)), rng.integers(0, 3, 4), dtype="float32"
    )
    _rows_ok(report)
    assert report.dtype == "float32"


def test_harness_does_not_touch_ours_model():
    rng = np.random.default_rng(4)
    model = Sequential(
        ("fc1", Linear(3, 3, rng=rng)), ("act1", Sigmoid()), ("fc2", Linear(3, 2, rng=rng))
    )
    before = {
        (n, k): v.copy() for n, layer in model.named_layers() for k, v in layer.params.items()
    }
    ref = mirror(model)
    ref_before = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    gp.compare(model, ref, rng.standard_normal((4, 3)), rng.integers(0, 2, 4))
    for (n, k), v in before.items():
        np.testing.assert_array_equal(model[n].params[k], v)
        assert model[n].grads == {}
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ref_before[k])


# ------------------------------------------------------------------ weight transfer


def _two_layer(n_in: int, hidden: int, n_out: int, seed: int) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential(
        ("fc1", Linear(n_in, hidden, rng=rng)),
        ("act1", Tanh()),
        ("fc2", Linear(hidden, n_out, rng=rng)),
    )


@SETTINGS
@given(n_in=features, hidden=features, n_out=features, seed=seeds)
def test_copy_weights_to_torch_transposes_exactly(n_in, hidden, n_out, seed):
    model = _two_layer(n_in, hidden, n_out, seed)
    torch_model = nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(n_in, hidden, dtype=torch.float64)),
                ("act1", nn.Tanh()),
                ("fc2", nn.Linear(hidden, n_out, dtype=torch.float64)),
            ]
        )
    )
    copy_weights(model, torch_model, "to_torch")
    for name in ("fc1", "fc2"):
        module = getattr(torch_model, name)
        np.testing.assert_array_equal(module.weight.detach().numpy(), model[name].params["W"].T)
        np.testing.assert_array_equal(module.bias.detach().numpy(), model[name].params["b"])


@SETTINGS
@given(n_in=features, hidden=features, n_out=features, seed=seeds)
def test_copy_weights_to_ours_transposes_exactly(n_in, hidden, n_out, seed):
    model = _two_layer(n_in, hidden, n_out, seed)
    torch.manual_seed(seed % 2**31)
    torch_model = nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(n_in, hidden, dtype=torch.float64)),
                ("act1", nn.Tanh()),
                ("fc2", nn.Linear(hidden, n_out, dtype=torch.float64)),
            ]
        )
    )
    copy_weights(model, torch_model, "to_ours")
    for name in ("fc1", "fc2"):
        module = getattr(torch_model, name)
        W, b = model[name].params["W"], model[name].params["b"]
        assert W.shape == tuple(module.weight.shape)[::-1] and b.shape == (module.out_features,)
        assert W.dtype == np.float64 and b.dtype == np.float64
        np.testing.assert_array_equal(W, module.weight.detach().numpy().T)
        np.testing.assert_array_equal(b, module.bias.detach().numpy())


@SETTINGS
@given(n=features, seed=seeds)
def test_copy_weights_round_trip_square(n, seed):
    """Square weights: the shape cannot tell the layout, ours W is still transposed."""
    model = _two_layer(n, n, n, seed)
    original = {
        (name, k): v.copy() for name, layer in model.named_layers() for k, v in layer.params.items()
    }
    torch_model = mirror(model)
    with torch.no_grad():
        for p in torch_model.parameters():
            p.add_(1.0)  # make torch differ, then overwrite it from ours
    copy_weights(model, torch_model, "to_torch")
    np.testing.assert_array_equal(torch_model.fc1.weight.detach().numpy(), original["fc1", "W"].T)
    for layer_name in ("fc1", "fc2"):
        model[layer_name].params["W"] = np.zeros_like(model[layer_name].params["W"])
        model[layer_name].params["b"] = np.zeros_like(model[layer_name].params["b"])
    copy_weights(model, torch_model, "to_ours")
    for key, value in original.items():
        np.testing.assert_array_equal(model[key[0]].params[key[1]], value)
    # and both sides still compute the same thing
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, n))
    with torch.no_grad():
        ref = torch_model(torch.tensor(x)).numpy()
    close(model.forward(x), ref)


def test_copy_weights_rejects_bad_direction_and_missing_module():
    model = _two_layer(2, 3, 2, 0)
    with pytest.raises(ValueError, match="direction"):
        copy_weights(model, mirror(model), "sideways")
    other = nn.Sequential(OrderedDict([("fc1", nn.Linear(2, 3, dtype=torch.float64))]))
    with pytest.raises(KeyError, match="act1"):
        copy_weights(model, other, "to_torch")
