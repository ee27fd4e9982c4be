"""Consistency lints that need no reference (``gp.lint``), and how they join ``gp.compare``:
in-place mutation, gradient shapes, aliasing, and non-finite values from finite inputs."""

from __future__ import annotations

from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.core.tolerance import tolerance_for
from gradparity.ours import Layer, Linear, ReLU, Sequential, Sigmoid, mlp
from gradparity.reference import mirror

TOL = tolerance_for("float64")
F64 = torch.float64


# --- layers with a consistency problem ------------------------------------------------------


class ReLUMutatesInput(ReLU):
    """Right values, but zeroes the negatives of the caller's array in place."""

    def forward(self, x):
        self._x = x.copy()
        np.maximum(x, 0, out=x)
        return x


class SigmoidMutatesGradOut(Sigmoid):
    """Right values, but scales the caller's grad_out in place."""

    def backward(self, grad_out):
        grad_out *= self._y * (1 - self._y)
        return grad_out


class SigmoidMutatesAndWrong(Sigmoid):
    """Mutates its input and also computes the wrong output (sigmoid(2x))."""

    def forward(self, x):
        x *= 2.0
        return super().forward(x)


class BiasNotSummed(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["b"] = grad_out.copy()  # (N, out) for a (out,) bias
        return grad_x


class BiasGradAliasesParam(Linear):
    """Right gradient values, but written into the bias itself: the gradient aliases the
    parameter, and backward overwrites the parameter."""

    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["b"] = self.params["b"]
        self.grads["b"][...] = grad_out.sum(axis=0)
        return grad_x


class TwoScale(Layer):
    """y = x * a + x * b; dL/da == dL/db, and backward stores one array for both (aliased)."""

    def __init__(self, d: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.params["a"] = rng.uniform(0.5, 1.5, d)
        self.params["b"] = rng.uniform(-1.0, 1.0, d)

    def forward(self, x):
        self._x = x
        return x * self.params["a"] + x * self.params["b"]

    def backward(self, grad_out):
        self.grads["a"] = (grad_out * self._x).sum(axis=0)
        self.grads["b"] = self.grads["a"]
        return grad_out * (self.params["a"] + self.params["b"])


class TorchTwoScale(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(d, dtype=F64))
        self.b = nn.Parameter(torch.zeros(d, dtype=F64))

    def forward(self, x):
        return x * self.a + x * self.b


class SigmoidOverflows(Sigmoid):
    """Forward returns exp(1000 x): infinite for any x above ~0.71."""

    def forward(self, x):
        self._y = super().forward(x)
        with np.errstate(over="ignore"):
            return np.exp(1000.0 * x)


class SigmoidBackwardDividesByZero(Sigmoid):
    """Right forward; backward divides by (x - x) == 0, so the result is inf/nan."""

    def forward(self, x):
        self._x = x
        return super().forward(x)

    def backward(self, grad_out):
        with np.errstate(divide="ignore", invalid="ignore"):
            return grad_out * self._y * (1 - self._y) / (self._x - self._x)


def net(act=Sigmoid, fc2=Linear) -> Sequential:
    rng = np.random.default_rng(0)
    return Sequential(("fc1", Linear(5, 4, rng=rng)), ("act1", act()), ("fc2", fc2(4, 3, rng=rng)))


def two_scale_nets() -> tuple[Sequential, nn.Sequential]:
    rng = np.random.default_rng(0)
    ours = Sequential(
        ("fc1", Linear(5, 4, rng=rng)),
        ("scale", TwoScale(4, rng)),
        ("fc2", Linear(4, 3, rng=rng)),
    )
    ref = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(5, 4, dtype=F64), scale=TorchTwoScale(4), fc2=nn.Linear(4, 3, dtype=F64)
        )
    )
    return ours, ref


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    return rng.standard_normal((8, 5)), rng.integers(0, 3, 8)


def keyed(findings) -> list[tuple[str, str, str]]:
    return [(f.layer, f.quantity, f.diagnosis) for f in findings]


# --- gp.lint, no reference ------------------------------------------------------------------


def test_correct_mlp_has_no_findings(data):
    x, t = data
    assert gp.lint(mlp((5, 4, 3)), x, t) == []


def test_correct_mlp_no_findings_over_seeds():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        x, t = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
        assert gp.lint(mlp((5, 4, 3), seed=seed), x, t, seed=seed) == []


def test_forward_mutating_input(data):
    x, t = data
    x_before = x.copy()
    found = gp.lint(net(act=ReLUMutatesInput), x, t)
    assert keyed(found) == [("act1", "output", "mutates_input")]
    f = found[0]
    assert f.detail["phase"] == "forward"
    assert "forward" in f.message and "in place" in f.message
    np.testing.assert_array_equal(x, x_before)  # the caller's x is untouched


def test_backward_mutating_grad_out(data):
    x, t = data
    found = gp.lint(net(act=SigmoidMutatesGradOut), x, t)
    assert keyed(found) == [("act1", "grad_input", "mutates_input")]
    assert found[0].detail["phase"] == "backward"
    assert "backward" in found[0].message


def test_gradient_of_wrong_shape(data):
    x, t = data
    found = gp.lint(net(fc2=BiasNotSummed), x, t)
    assert keyed(found) == [("fc2", "grad:b", "shape_mismatch")]
    f = found[0]
    assert f.detail["grad_shape"] == [8, 3]
    assert f.detail["param_shape"] == [3]
    assert "(8, 3)" in f.message and "(3,)" in f.message


def test_gradient_aliasing_its_parameter_is_a_warning(data):
    x, t = data
    found = gp.lint(net(fc2=BiasGradAliasesParam), x, t)
    assert keyed(found) == [("fc2", "grad_input", "mutates_input"), ("fc2", "grads", "aliased")]
    assert "changed parameter b" in found[0].message
    assert "param b" in found[1].message
    assert "copy" in found[1].message


def test_gradient_aliasing_another_gradient_is_a_warning(data):
    x, t = data
    ours, _ = two_scale_nets()
    found = gp.lint(ours, x, t)
    assert keyed(found) == [("scale", "grads", "aliased")]
    assert "grad a" in found[0].message and "grad b" in found[0].message


def test_warnings_come_after_errors(data):
    x, t = data
    rng = np.random.default_rng(0)
    model = Sequential(
        ("fc1", BiasGradAliasesParam(5, 4, rng=rng)),
        ("act1", ReLUMutatesInput()),
        ("fc2", BiasNotSummed(4, 3, rng=rng)),
    )
    found = gp.lint(model, x, t)
    labels = [f.diagnosis for f in found]
    assert sorted(labels) == sorted(["aliased", "mutates_input", "mutates_input", "shape_mismatch"])
    assert labels[-1] == "aliased"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nonfinite_output_from_finite_input(data):
    x, t = data
    found = gp.lint(net(act=SigmoidOverflows), x, t)
    hits = [
        f for f in found if (f.layer, f.quantity, f.diagnosis) == ("act1", "output", "nonfinite")
    ]
    assert len(hits) == 1
    assert hits[0].detail["count"] > 0
    assert len(hits[0].detail["first_index"]) == 2
    assert "non-finite" in hits[0].message


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nonfinite_is_not_blamed_on_layers_fed_nonfinite_values(data):
    """Only the layer that turned finite values into inf/nan is flagged: fc2 gets act1's
    infinite output, so its own non-finite output is not its fault ("although the input was
    finite"); the same in backward for fc1, fed act1's non-finite gradient."""
    x, t = data
    found = gp.lint(net(act=SigmoidOverflows), x, t)
    flagged = {(f.layer, f.quantity) for f in found if f.diagnosis == "nonfinite"}
    assert ("act1", "output") in flagged
    assert ("fc2", "output") not in flagged
    assert flagged == {("act1", "output")}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nonfinite_gradient_from_finite_upstream(data):
    x, t = data
    found = gp.lint(net(act=SigmoidBackwardDividesByZero), x, t)
    flagged = {(f.layer, f.quantity) for f in found if f.diagnosis == "nonfinite"}
    assert ("act1", "grad_input") in flagged
    # fc1 only passes on what act1 gave it
    assert flagged == {("act1", "grad_input")}


def test_lint_leaves_model_untouched(data):
    x, t = data
    model = net(fc2=BiasGradAliasesParam)
    b = model["fc2"].params["b"].copy()
    gp.lint(model, x, t)
    np.testing.assert_array_equal(model["fc2"].params["b"], b)
    assert model["fc2"].grads == {}


def test_lint_accepts_plain_list_of_layers(data):
    x, t = data
    layers = list(net(act=SigmoidMutatesGradOut).named_layers())
    assert keyed(gp.lint(layers, x, t)) == [("act1", "grad_input", "mutates_input")]


# --- lints inside gp.compare ----------------------------------------------------------------


def test_compare_aliasing_is_a_warning_not_a_failure(data):
    x, t = data
    ours, ref = two_scale_nets()
    report = gp.compare(ours, ref, x, t, sync_weights=True, seed=0)
    assert report.ok
    assert report.root_causes == []
    assert keyed(report.warnings) == [("scale", "grads", "aliased")]
    assert report.to_dict()["warnings"][0]["diagnosis"] == "aliased"


def test_compare_gradient_written_into_its_parameter_is_a_root_cause(data):
    x, t = data
    model = net(fc2=BiasGradAliasesParam)
    report = gp.compare(model, mirror(model), x, t, seed=0)
    assert not report.ok
    assert ("fc2", "grad_input", "mutates_input") in keyed(report.root_causes)
    assert keyed(report.warnings) == [("fc2", "grads", "aliased")]


@pytest.mark.parametrize(
    ("act", "quantity"),
    [(ReLUMutatesInput, "output"), (SigmoidMutatesGradOut, "grad_input")],
    ids=["forward", "backward"],
)
def test_compare_mutation_is_a_root_cause(data, act, quantity):
    x, t = data
    model = net(act=act)
    report = gp.compare(model, mirror(model), x, t, seed=0)
    assert not report.ok
    assert keyed(report.root_causes) == [("act1", quantity, "mutates_input")]
    assert report.warnings == []


@pytest.mark.parametrize(
    "model_fn",
    [
        lambda: net(act=ReLUMutatesInput),
        lambda: net(act=SigmoidMutatesGradOut),
        lambda: net(act=SigmoidMutatesAndWrong),
        lambda: net(fc2=BiasNotSummed),
    ],
    ids=["mutates_input", "mutates_grad_out", "mutates_and_wrong", "shape_mismatch"],
)
def test_compare_no_duplicate_root_cause(data, model_fn):
    """A lint and a value comparison that hit the same (layer, quantity) make one root cause."""
    x, t = data
    model = model_fn()
    report = gp.compare(model, mirror(model), x, t, seed=0)
    assert report.root_causes
    counts = Counter((f.layer, f.quantity) for f in report.root_causes)
    assert max(counts.values()) == 1, counts


def test_compare_shape_mismatch_root_cause_names_both_shapes(data):
    x, t = data
    model = net(fc2=BiasNotSummed)
    report = gp.compare(model, mirror(model), x, t, seed=0)
    (finding,) = [f for f in report.root_causes if (f.layer, f.quantity) == ("fc2", "grad:b")]
    assert finding.diagnosis in ("shape_mismatch", "not_reduced")
    assert "3" in finding.message and "8" in finding.message


def test_compare_clean_model_has_no_warnings(data):
    x, t = data
    model = mlp((5, 4, 3))
    report = gp.compare(model, mirror(model), x, t, seed=0)
    assert report.ok
    assert report.warnings == []
    assert report.tolerance.rtol == TOL.rtol


def test_a_bias_gradient_an_update_still_takes_is_only_a_warning():
    """b stored (1, n), db returned (n,): b -= lr * db works, so parity holds with a warning;
    stored (n, 1), the same db would turn b into (n, n) and stays an error."""
    import torch

    class Dense:
        def __init__(self, w, b):
            self.w, self.b = w, b

        def fprop(self, x):
            self.x = x
            return x @ self.w.T + self.b.reshape(1, -1)

        def bprop(self, g):
            self.dw, self.db = g.T @ self.x, g.sum(0)
            return g @ self.w

    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(5, 4)), np.array([0, 1, 2, 0, 1])
    for bias_shape, fine in (((1, 3), True), ((3, 1), False)):
        layer = gp.wrap(Dense(rng.normal(size=(3, 4)), rng.normal(size=bias_shape)),
                        forward="fprop", backward="bprop", params=["w", "b"],
                        grads=["dw", "db"])  # fmt: skip
        report = gp.compare([("fc", layer)], torch.nn.Sequential(torch.nn.Linear(4, 3)), x, t)
        assert report.ok is fine, report.summary()
        if fine:
            assert [(w.quantity, w.diagnosis) for w in report.warnings] == [
                ("grad:b", "shape_mismatch")
            ]
