"""Define-by-run NumPy frameworks (chainer, dezero) checked against torch: in one line with
``gp.define_by_run``, and without a crash when a probe's deep copy of their graph is not a copy.
The frameworks are the in-repository stand-ins ``chainer_like`` and ``dezero_like``."""

from __future__ import annotations

import copy

import chainer_like as C
import dezero_like as D
import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.evidence import jacobian
from gradparity.sides import fresh, run_numpy


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _target(n=4, classes=3):
    return np.arange(n) % classes


def _mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()


# The adapters users wrote before gp.define_by_run: the graph kept on the framework's layer.
def dezero_wrap(layer, params=("W", "b")):
    def forward(obj, x):
        obj.gp_x = D.Variable(x)
        obj.gp_y = obj(obj.gp_x)
        return obj.gp_y.data

    def backward(obj, g):
        obj.cleargrads()
        obj.gp_y.grad = D.Variable(g)
        obj.gp_y.backward()
        return obj.gp_x.grad.data

    return gp.wrap(
        layer,
        forward=forward,
        backward=backward,
        params=lambda obj: {k: getattr(obj, k).data for k in params},
        grads=lambda obj: {
            k: getattr(obj, k).grad.data for k in params if getattr(obj, k).grad is not None
        },
    )


def chainer_wrap(link):
    def forward(obj, x):
        obj.gp_x = C.Variable(x)
        obj.gp_y = obj(obj.gp_x)
        return obj.gp_y.array

    def backward(obj, g):
        obj.cleargrads()
        obj.gp_y.grad = g
        obj.gp_y.backward()
        return obj.gp_x.grad

    def named(obj, what):
        found = {n.strip("/"): getattr(p, what) for n, p in obj.namedparams()}
        return {k: v for k, v in found.items() if v is not None}

    return gp.wrap(
        link,
        forward=forward,
        backward=backward,
        params=lambda obj: named(obj, "array"),
        grads=lambda obj: named(obj, "grad"),
    )


class ChainerFunctionLink(C.Link):
    """A parameterless chainer function as a link, for the hand-written adapter."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


def test_hand_written_chainer_adapters_reach_parity_though_link_copies_are_wired_back():
    layers = [
        ("l1", chainer_wrap(C.Linear(6, 5, seed=1))),
        ("act", chainer_wrap(ChainerFunctionLink(C.sigmoid))),
        ("l2", chainer_wrap(C.Linear(5, 3, seed=2))),
    ]
    report = gp.compare(layers, _mlp(), _x((4, 6)), _target())
    assert report.ok, report.root_causes
    assert layers[0][1].obj.W.grad is None  # the user's link holds no gradient afterwards


class DezeroFunctionLayer(D.Layer):
    """A parameterless dezero function as a layer, for the hand-written adapter."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


def test_dezero_layers_reach_parity_in_one_line_each():
    layers = [
        ("l1", gp.define_by_run(D.Linear(5, 6, seed=1))),
        ("act", gp.define_by_run(D.sigmoid, variable=D.Variable)),
        ("l2", gp.define_by_run(D.Linear(3, 5, seed=2))),
    ]
    report = gp.compare(layers, _mlp(), _x((4, 6)), _target())
    assert report.ok, report.root_causes
    assert {r.quantity for r in report.rows} >= {"output", "grad_input", "grad:W", "grad:b"}


def test_chainer_links_reach_parity_in_one_line_each():
    layers = [
        ("l1", gp.define_by_run(C.Linear(6, 5, seed=1))),
        ("act", gp.define_by_run(C.sigmoid, variable=C.Variable)),
        ("l2", gp.define_by_run(C.Linear(5, 3, seed=2))),
    ]
    report = gp.compare(layers, _mlp(), _x((4, 6)), _target())
    assert report.ok, report.root_causes


def _pooling_net(pool):
    return [
        ("pool", gp.define_by_run(lambda x: pool(x, 2, 2, 1), variable=D.Variable)),
        ("flat", gp.define_by_run(lambda x: D.reshape(x, (x.shape[0], -1)), variable=D.Variable)),
        ("fc", gp.define_by_run(D.Linear(3, 18, seed=3))),
    ]


def _pooling_reference():
    return nn.Sequential(nn.MaxPool2d(2, 2, padding=1), nn.Flatten(), nn.Linear(18, 3)).double()


def test_dezero_pooling_padding_bug_is_found_at_the_pooling_layer():
    x = -np.abs(_x((4, 2, 4, 4), seed=5))  # all negative: a border window's max is negative
    report = gp.compare(_pooling_net(D.pooling), _pooling_reference(), x, _target())
    assert not report.ok
    assert [(f.layer, f.quantity) for f in report.root_causes] == [("pool", "output")]
    fixed = gp.compare(_pooling_net(D.fixed_pooling), _pooling_reference(), x, _target())
    assert fixed.ok, fixed.root_causes


def test_params_are_read_by_name_and_written_through():
    link = C.Linear(6, 5)
    layer = gp.define_by_run(link)
    assert list(layer.params) == ["W", "b"]
    layer.params["W"][0, 0] = 42.0  # the harness syncs weights by writing into these arrays
    assert link.W.array[0, 0] == 42.0
    nested = gp.define_by_run(D.Linear(3, 5), params=["W"])
    assert list(nested.params) == ["W"]


def test_backward_gives_per_pass_gradients_not_accumulated_ones():
    layer = gp.define_by_run(D.Linear(3, 5))
    x, g = _x((4, 5)), _x((4, 3), seed=1)
    layer.forward(x)
    layer.backward(g)
    first = layer.grads["W"].copy()
    layer.forward(x)
    layer.backward(g)
    np.testing.assert_allclose(layer.grads["W"], first)
    np.testing.assert_allclose(first, x.T @ g)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: gp.define_by_run(D.Linear(3, 5), params=["V"]), "has no parameter 'V'"),
        (lambda: gp.define_by_run(D.sigmoid), "pass variable="),
        (lambda: gp.define_by_run(np.zeros(3)), "not callable"),
        (lambda: gp.define_by_run(D.Linear(3, 5), params="W"), "list of attribute names"),
    ],
)
def test_bad_input_is_one_line(make, match):
    with pytest.raises(gp.InputError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def _forwarded_wrong_sigmoid():
    layer = dezero_wrap(DezeroFunctionLayer(D.wrong_sigmoid), params=())
    layer.forward(_x((3, 4)))
    return layer


def test_a_deep_copy_of_a_forwarded_graph_reads_the_original_node():
    layer = _forwarded_wrong_sigmoid()
    with pytest.raises((TypeError, AttributeError)):
        copy.deepcopy(layer).backward(np.ones((3, 4)))
    assert fresh.reaches_back(copy.deepcopy(layer))


def test_jacobian_probe_reforwards_the_layer_instead_of_copying_its_graph(monkeypatch):
    layer, x = dezero_wrap(DezeroFunctionLayer(D.sigmoid), params=()), _x((3, 4))
    y = 1 / (1 + np.exp(-x))
    expected = np.stack([np.diag(row) for row in y * (1 - y)])
    np.testing.assert_allclose(jacobian.numpy_jacobian(layer, x), expected)
    monkeypatch.setattr(fresh, "reaches_back", lambda duplicate: False)  # the probe before
    with pytest.raises((TypeError, AttributeError)):
        jacobian.numpy_jacobian(layer, x)


def _wrong_sigmoid_net(wrapper):
    return [
        ("l1", wrapper(D.Linear(5, 6, seed=1))),
        ("act", wrapper(DezeroFunctionLayer(D.wrong_sigmoid))),
        ("l2", wrapper(D.Linear(3, 5, seed=2))),
    ]


def _hand_wrapped(layer):
    return dezero_wrap(layer, params=("W", "b") if isinstance(layer, D.Linear) else ())


def test_compare_on_a_define_by_run_bug_names_it_with_jacobian_evidence():
    layers = _wrong_sigmoid_net(_hand_wrapped)
    weights = {k: v.copy() for k, v in layers[0][1].params.items()}
    report = gp.compare(layers, _mlp(), _x((4, 6)), _target())
    (cause,) = report.root_causes
    assert (cause.layer, cause.quantity) == ("act", "grad_input")
    assert "jacobian" in cause.detail and "probe_errors" not in cause.detail
    for k, v in layers[0][1].params.items():
        np.testing.assert_array_equal(v, weights[k])  # the user's layer is as it was


def test_compare_without_the_reforward_still_returns_a_report(monkeypatch):
    monkeypatch.setattr(fresh, "reaches_back", lambda duplicate: False)
    report = gp.compare(_wrong_sigmoid_net(_hand_wrapped), _mlp(), _x((4, 6)), _target())
    (cause,) = report.root_causes
    assert (cause.layer, cause.quantity) == ("act", "grad_input")
    (error,) = cause.detail["probe_errors"]
    assert error["probe"] == "jacobian probe"
    assert error["error"].startswith(("TypeError", "AttributeError"))
    assert any("jacobian probe raised" in note for note in report.notes)


def test_a_chainer_link_copy_writes_into_the_original_so_probes_use_the_original():
    link = C.Linear(6, 5)
    assert fresh.reaches_back(copy.deepcopy(link))  # its parameters' nodes point back
    before = link.W.array.copy()
    rec = run_numpy.probe_layer(gp.define_by_run(link), _x((4, 6)), _x((4, 5), 1), _x((4, 6), 2))
    np.testing.assert_allclose(rec.grads["W"], _x((4, 5), 1).T @ _x((4, 6)))
    assert link.W.grad is None and link.b.grad is None  # the state it had, restored
    np.testing.assert_array_equal(link.W.array, before)


def test_the_adapter_names_the_framework_code_behind_each_quantity():
    layer = gp.define_by_run(D.Linear(3, 5))
    layer.forward(_x((2, 5)))
    assert layer.code_of("forward") == layer.layer.forward
    assert layer.code_of("backward") is D.Linear_.backward
    assert torch.is_tensor(torch.zeros(1))  # torch is the reference these tests compare to
