"""One set of lint findings: the layer path (``gp.lint`` and ``compare``'s lint locator) and
the function path (``compare_function``'s locator) build their mutation, aliasing, raised and
broadcast findings with the same builders, those of ``gradparity.evidence.lint_findings``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradparity as gp
from gradparity.evidence import lint_findings, lints
from gradparity.locate import function as locate_function
from gradparity.ours import Linear, ReLU, Sequential

BUILDERS = ("mutation", "aliased", "raised", "gradient_shape")


def test_both_paths_import_the_same_builders():
    for name in BUILDERS:
        builder = getattr(lint_findings, name)
        assert getattr(lints, name) is builder, name
        assert getattr(locate_function, name) is builder, name
    assert locate_function.raised_row is lint_findings.raised_row


# --- the layer path: gp.lint on a small model ---------------------------------------------


class ReLUMutatesInput(ReLU):
    def forward(self, x):
        self._x = x.copy()
        np.maximum(x, 0, out=x)
        return x


class BiasGradIsParam(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["b"] = self.params["b"]  # aliases the parameter
        return grad_x


class Raises(Linear):
    def backward(self, grad_out):
        raise ValueError("no backward today")


def _row_bias(layer: Linear) -> Linear:
    layer.params["b"] = layer.params["b"].reshape(1, -1)  # backward gives db as (n,)
    return layer


def _layers(kind: str) -> Sequential:
    rng = np.random.default_rng(0)
    act = ReLUMutatesInput() if kind == "mutation" else ReLU()
    last = {"aliased": BiasGradIsParam, "raised": Raises}.get(kind, Linear)(4, 3, rng=rng)
    if kind == "gradient_shape":
        last = _row_bias(last)
    return Sequential(("fc1", Linear(5, 4, rng=rng)), ("act1", act), ("fc2", last))


# --- the function path: compare_function on a linear softmax -------------------------------


def _function(kind: str):
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(5, 3)), "b": rng.normal(size=3)}
    if kind == "gradient_shape":
        params["b"] = params["b"].reshape(1, 3)
    x, y = rng.normal(size=(7, 5)), rng.integers(0, 3, size=7)

    def grads(x, y):
        if kind == "raised":
            raise ValueError("no gradients today")
        s = x @ params["W"] + params["b"].reshape(-1)
        e = np.exp(s - s.max(1, keepdims=True))
        d = (e / e.sum(1, keepdims=True) - np.eye(3)[y]) / len(y)
        out = {"W": x.T @ d, "b": d.sum(0)}
        if kind == "mutation":
            params["W"] -= 0.1 * out["W"]  # an update hidden in the gradient function
        if kind == "aliased":
            out["b"] = params["b"]
        return out

    return grads, params, torch.nn.Linear(5, 3), x, y


def _spy(calls: list, path: str, name: str):
    builder = getattr(lint_findings, name)

    def spy(*args, **kwargs):
        found = builder(*args, **kwargs)
        calls.append((path, found))
        return found

    return spy


@pytest.mark.parametrize("kind", BUILDERS)
def test_layer_and_function_findings_come_from_the_same_builder(kind, monkeypatch):
    calls: list = []
    monkeypatch.setattr(lints, kind, _spy(calls, "layer", kind))
    monkeypatch.setattr(locate_function, kind, _spy(calls, "function", kind))
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    layer_found = gp.lint(_layers(kind), x, t)
    report = gp.compare_function(*_function(kind))
    function_found = report.root_causes + report.warnings
    built = {path: [f for p, f in calls if p == path] for path in ("layer", "function")}
    assert built["layer"] and built["function"], calls
    # Every finding of this kind either path reports is one the shared builder made.
    label = {"mutation": "mutates_input", "gradient_shape": "shape_mismatch"}.get(kind, kind)
    assert [f for f in layer_found if f.diagnosis == label] == built["layer"]
    assert [f for f in function_found if f.diagnosis == label] == built["function"]


def test_the_builders_keep_the_reported_words():
    """Label, detail and message as reports have shown them, for a layer and a function."""
    alias = "grads['b'] is params['b']"
    for of, advice in (("layer", "store a copy"), ("function", "return a copy")):
        found = lint_findings.aliased("f", alias, "chain", of=of)
        assert (found.quantity, found.diagnosis, found.detail) == (
            "grads",
            "aliased",
            {"alias": alias},
        )
        assert found.message == f"f: {alias}; {advice}"
    found = lint_findings.gradient_shape("fc2", "grad:b", "lint", shapes=((3,), (1, 3)))
    assert found.detail == {"grad_shape": [3], "param_shape": [1, 3], "broadcasts": True}
    assert found.message == (
        "fc2.b: gradient has shape (3,), the parameter (1, 3); p -= lr * g still broadcasts, "
        "but a gradient usually has its parameter's shape"
    )
