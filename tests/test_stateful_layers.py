"""Layers that keep state between calls, checked with ``gp.wrap`` as their frameworks are.

numpy-ml keeps each forward's input in a list until ``flush_gradients()``: without
``reset=`` the harness's warm-up forward makes the gradient stale, and the finding says to pass
``reset=``. ML-From-Scratch updates the weights inside backward: the gradient is read from a
plain SGD step, or the finding says how to expose it; the parameters are put back.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from stateful_layers import Adam, Dense, FullyConnected, StochasticGradientDescent
from torch import nn

import gradparity as gp
from gradparity.core.records import LayerRecord
from gradparity.evidence.lints import lint_records
from gradparity.sides import run_numpy
from gradparity.sides.backward_updates import find_optimiser

F64 = torch.float64


def _linear_like(W: np.ndarray, b: np.ndarray) -> nn.Module:
    """A torch Linear holding ``W`` (in, out) and ``b`` (1, out)."""
    lin = nn.Linear(*W.shape).to(F64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W.T.copy()))
        lin.bias.copy_(torch.from_numpy(b.ravel().copy()))
    return lin


def _data(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


def _numpy_ml(reset=None, layer: FullyConnected | None = None):
    layer = layer or FullyConnected(3, 4, np.random.default_rng(1))
    wrapped = gp.wrap(layer, params="parameters", grads="gradients", reset=reset)
    ref = nn.Sequential()
    ref.add_module("fc", _linear_like(layer.parameters["W"], layer.parameters["b"]))
    return [("fc", wrapped)], ref


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    return msg


# ====================================================================== numpy-ml: input lists


def test_input_list_without_reset_is_stale_and_names_reset():
    model, ref = _numpy_ml()
    x, t = _data(5, 3, 4)
    report = gp.compare(model, ref, x, t)
    assert not report.ok
    (found,) = [f for f in report.root_causes if f.quantity == "grad:W"]
    assert found.diagnosis == "stale"
    assert found.detail["growing_lists"] == ["X"]
    assert "FullyConnected.X" in found.message
    assert "reset='flush_gradients'" in found.message


def test_input_list_with_reset_reaches_parity():
    model, ref = _numpy_ml(reset="flush_gradients")
    x, t = _data(5, 3, 4)
    report = gp.compare(model, ref, x, t)
    assert report.ok, [f.message for f in report.root_causes]


def test_reset_runs_before_warm_up_so_inputs_cached_by_the_user_are_dropped():
    layer = FullyConnected(3, 4, np.random.default_rng(2))
    rng = np.random.default_rng(5)
    for _ in range(3):  # the user ran it before: three inputs wait for their backward
        layer.forward(rng.standard_normal((6, 3)))
    model, ref = _numpy_ml(reset=lambda obj: obj.flush_gradients(), layer=layer)
    x, t = _data(5, 3, 4)
    report = gp.compare(model, ref, x, t)
    assert report.ok, [f.message for f in report.root_causes]
    assert len(layer.X) == 3  # the user's layer is as it was


def test_reset_runs_before_each_pass():
    calls = []
    model, _ = _numpy_ml(reset=lambda obj: (calls.append(len(obj.X)), obj.flush_gradients()))
    x, _t = _data(5, 3, 4)
    rec = run_numpy.probe_layer(model[0][1], x, np.ones((5, 4)), x + 1)
    assert calls == [0, 1]  # before the warm-up, then before the pass that counts (1 cached)
    assert rec.error is None


def test_stale_list_without_a_flush_method_suggests_a_lambda():
    class Cached(FullyConnected):
        flush_gradients = None  # this framework has no flush

    model, ref = _numpy_ml(layer=Cached(3, 4, np.random.default_rng(1)))
    x, t = _data(5, 3, 4)
    (found,) = [f for f in gp.compare(model, ref, x, t).root_causes if f.quantity == "grad:W"]
    assert "reset=lambda obj: obj.X.clear()" in found.message


def test_reset_that_does_not_empty_the_list_is_named():
    model, ref = _numpy_ml(reset=lambda obj: None)
    x, t = _data(5, 3, 4)
    (found,) = [f for f in gp.compare(model, ref, x, t).root_causes if f.quantity == "grad:W"]
    assert found.diagnosis == "stale"
    assert "reset= given to gradparity.wrap does not empty" in found.message


def test_unknown_reset_method_refused_in_one_line():
    layer = FullyConnected(3, 4, np.random.default_rng(1))
    with pytest.raises(gp.InputError) as exc:
        gp.wrap(layer, params="parameters", grads="gradients", reset="flush")
    msg = _one_line(exc)
    assert "FullyConnected" in msg and "'flush'" in msg and "'flush_gradients'" in msg


def test_reset_of_the_wrong_type_refused_in_one_line():
    with pytest.raises(gp.InputError) as exc:
        gp.wrap(FullyConnected(3, 4, np.random.default_rng(1)), reset=3)
    assert "reset=" in _one_line(exc)


def test_reset_that_raises_is_one_line():
    def broken(obj):
        raise KeyError("X")

    model, ref = _numpy_ml(reset=broken)
    x, t = _data(5, 3, 4)
    with pytest.raises(gp.InputError) as exc:
        gp.compare(model, ref, x, t)
    assert "reset=broken raised KeyError" in _one_line(exc)


# ====================================================================== ML-From-Scratch: updates


def _from_scratch(optimizer, dense_class=Dense):
    rng = np.random.default_rng(3)
    first, second = dense_class(4, input_shape=(3,)), dense_class(2, input_shape=(4,))
    first.initialize(optimizer, rng)
    second.initialize(optimizer, rng)

    def wrapped(layer):
        return gp.wrap(
            layer, forward="forward_pass", backward="backward_pass", params=["W", "w0"], grads=None
        )

    model = [
        ("fc1", wrapped(first)),
        ("act", gp.wrap(_Tanh(), params=None)),
        ("fc2", wrapped(second)),
    ]
    ref = nn.Sequential()
    ref.add_module("fc1", _linear_like(first.W, first.w0))
    ref.add_module("act", nn.Tanh())
    ref.add_module("fc2", _linear_like(second.W, second.w0))
    return model, ref, (first, second)


class _Tanh:
    def forward(self, x):
        self.out = np.tanh(x)
        return self.out

    def backward(self, grad):
        return grad * (1 - self.out**2)


def test_update_inside_backward_with_sgd_reads_the_gradient_from_the_step():
    model, ref, layers = _from_scratch(StochasticGradientDescent(learning_rate=0.01))
    held = [(layer.W.copy(), layer.w0.copy()) for layer in layers]
    x, t = _data(6, 3, 2)
    report = gp.compare(model, ref, x, t)
    assert report.ok, [f.message for f in report.root_causes]
    grads = {r["quantity"] for r in report.to_dict()["rows"] if r["layer"] == "fc1"}
    assert {"grad:W", "grad:w0"} <= grads  # compared, not missing
    notes = [w for w in report.warnings if w.layer == "fc1" and w.quantity == "grad:W"]
    assert notes and "learning rate 0.01" in notes[0].message and "put W back" in notes[0].message
    for layer, (W, w0) in zip(layers, held):  # nothing the user holds changed
        assert np.array_equal(layer.W, W) and np.array_equal(layer.w0, w0)


def test_gradient_read_from_the_step_is_the_true_gradient_and_the_weights_are_put_back():
    model, _, _layers = _from_scratch(StochasticGradientDescent(learning_rate=0.05))
    layer = copy.deepcopy(model[0][1])
    W = layer.obj.W.copy()
    x = np.random.default_rng(0).standard_normal((6, 3))
    up = np.random.default_rng(1).standard_normal((6, 4))
    rec = LayerRecord()
    run_numpy._forward(layer, x, rec)
    run_numpy._backward(layer, up, rec)
    np.testing.assert_allclose(rec.grads["W"], x.T @ up, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rec.grads["w0"], up.sum(axis=0, keepdims=True), rtol=1e-10)
    assert rec.backward_updates["W"]["read"] == "update"
    assert np.array_equal(layer.obj.W, W)  # put back after the pass


def test_update_inside_backward_with_adam_says_how_to_expose_the_gradient():
    model, ref, layers = _from_scratch(Adam())
    held = [layer.W.copy() for layer in layers]
    x, t = _data(6, 3, 2)
    report = gp.compare(model, ref, x, t)
    assert not report.ok
    (found,) = [f for f in report.root_causes if (f.layer, f.quantity) == ("fc1", "grad:W")]
    assert found.diagnosis == "mutates_input"
    assert "W_opt (Adam)" in found.message and "cannot be read" in found.message
    assert "grads=" in found.message and "update(w, grad) stores grad" in found.message
    assert all(np.array_equal(layer.W, W) for layer, W in zip(layers, held))


def test_sgd_with_momentum_is_not_taken_for_a_plain_step():
    model, ref, _ = _from_scratch(StochasticGradientDescent(learning_rate=0.01, momentum=0.9))
    x, t = _data(6, 3, 2)
    report = gp.compare(model, ref, x, t)
    (found,) = [f for f in report.root_causes if (f.layer, f.quantity) == ("fc2", "grad:W")]
    assert "not learning rate x gradient" in found.message


class _StaleWeightsDense(Dense):
    """The bug the tool found in ML-From-Scratch: dL/dx computed with the updated weights."""

    def backward_pass(self, accum_grad):
        grad_w = self.layer_input.T.dot(accum_grad)
        grad_w0 = np.sum(accum_grad, axis=0, keepdims=True)
        self.W = self.W_opt.update(self.W, grad_w)
        self.w0 = self.w0_opt.update(self.w0, grad_w0)
        return accum_grad.dot(self.W.T)


def test_input_gradient_from_updated_weights_is_found():
    model, ref, _ = _from_scratch(StochasticGradientDescent(learning_rate=0.5), _StaleWeightsDense)
    x, t = _data(6, 3, 2)
    report = gp.compare(model, ref, x, t)
    found = {(f.layer, f.quantity) for f in report.root_causes}
    assert found == {("fc1", "grad_input"), ("fc2", "grad_input")}  # both layers are this class


class _SelfStepping:
    """A hand-written layer stepping with its own learning rate: ``self.W -= self.lr * dW``."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.W = rng.standard_normal((3, 2))
        self.lr = 0.1

    def forward(self, x):
        self.x = x
        return x @ self.W

    def backward(self, grad):
        grad_x = grad @ self.W.T
        self.W -= self.lr * (self.x.T @ grad)
        return grad_x


def test_layer_with_its_own_learning_rate_is_read_from_the_step():
    assert find_optimiser(_SelfStepping(np.random.default_rng(0)), "W").learning_rate == 0.1
    layer = _SelfStepping(np.random.default_rng(0))
    model = [("fc", gp.wrap(layer, params=["W"], grads=None))]
    lin = nn.Linear(3, 2, bias=False).to(F64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(layer.W.T.copy()))
    ref = nn.Sequential()
    ref.add_module("fc", lin)
    x, t = _data(5, 3, 2)
    W = layer.W.copy()
    report = gp.compare(model, ref, x, t)
    assert report.ok, [f.message for f in report.root_causes]
    assert np.array_equal(layer.W, W)


def test_update_that_also_keeps_its_gradient_stays_a_mutation_error():
    rec = LayerRecord(grad_input=np.zeros(1), grads={"W": np.zeros(2)})
    rec.mutated = ["param W (backward)"]
    rec.backward_updates = {"W": {"optimiser": None, "kind": None, "learning_rate": None,
                                  "read": "grads"}}  # fmt: skip
    errors, _warnings = lint_records([("fc", {"W": np.zeros(2)}, rec)], "chain")
    assert [f.diagnosis for f in errors] == ["mutates_input"]
    assert "optimiser (a training loop would apply it twice)" in errors[0].message


def test_readme_stateful_section_wraps_a_numpy_ml_layer_to_parity():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Stateful layers") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("\n```", start)]
    layer = FullyConnected(3, 4, np.random.default_rng(1))
    space = {"gp": gp, "layer": layer}
    exec(compile(code, "README.md", "exec"), space)
    ref = nn.Sequential()
    ref.add_module("fc", _linear_like(layer.parameters["W"], layer.parameters["b"]))
    x, t = _data(5, 3, 4)
    assert gp.compare([("fc", space["fc"])], ref, x, t).ok


class _NumpyMLSGD:
    """A training loop's step over numpy-ml-style layers (``zero_grad`` left to ``reset=``)."""

    def __init__(self, layers, lr: float) -> None:
        self.layers, self.lr = layers, lr

    def zero_grad(self) -> None:
        pass

    def step(self) -> None:
        for _, layer in self.layers:
            for key, value in layer.params.items():
                value -= self.lr * layer.grads[key]


@pytest.mark.parametrize("reset", [None, "flush_gradients"])
def test_training_runs_reset_before_each_step(reset):
    model, ref = _numpy_ml(reset=reset)
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((6, 3)), rng.integers(0, 4, 6)) for _ in range(3)]
    report = gp.compare_training(
        model, ref, batches,
        ours_optimizer=lambda net: _NumpyMLSGD(net, lr=0.1),
        reference_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )  # fmt: skip
    assert report.ok == (reset is not None), report.summary()
