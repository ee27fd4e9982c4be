"""Where in the source a root cause points: the layer's backward for layered code, the lines
between the bracketing taps for a function, nothing (and no error) for code without source."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.core.source import source_of
from gradparity.ours import Linear, Sigmoid, SoftmaxCrossEntropy
from gradparity.report.terminal import render
from gradparity.testing.assertion import ParityError

HERE = Path(__file__).resolve().relative_to(Path.cwd().resolve()).as_posix()


class HalfSigmoid(Sigmoid):
    """A book-style layer whose backward halves the sigmoid's derivative."""

    def backward(self, grad_out):
        y = self.cache
        return 0.5 * grad_out * y * (1 - y)


def _lines(method) -> tuple[int, int]:
    lines, first = inspect.getsourcelines(method)
    return first, first + len(lines) - 1


def _layered(seed: int = 0):
    rng = np.random.default_rng(seed)
    fc1, act, fc2 = Linear(4, 5, rng=rng), HalfSigmoid(), Linear(5, 3, rng=rng)
    model = [("fc1", fc1), ("act", act), ("fc2", fc2)]
    ref = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()
    x, t = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    return model, ref, x, t


def test_a_layer_root_cause_names_its_backward_lines():
    model, ref, x, t = _layered()
    report = gp.compare(model, ref, x, t, ours_loss=SoftmaxCrossEntropy())
    found = next(f for f in report.root_causes if f.layer == "act")
    first, last = _lines(HalfSigmoid.backward)
    assert found.source == {"file": HERE, "first_line": first, "last_line": last}
    assert f"at {HERE}:{first} (lines {first}-{last})" in render(report)


def test_source_survives_a_reload_and_the_html_shows_the_lines(tmp_path):
    model, ref, x, t = _layered()
    report = gp.compare(model, ref, x, t, ours_loss=SoftmaxCrossEntropy())
    report.save(tmp_path / "r")
    again = gp.Report.from_json(tmp_path / "r")
    assert [f.source for f in again.root_causes] == [f.source for f in report.root_causes]
    html = (tmp_path / "r" / "report.html").read_text()
    assert "return 0.5 * grad_out * y * (1 - y)" in html


def test_the_pytest_failure_names_file_and_line():
    model, ref, x, t = _layered()
    with pytest.raises(ParityError) as caught:
        gp.assert_parity(model, ref, x, t, ours_loss=SoftmaxCrossEntropy())
    first, _ = _lines(HalfSigmoid.backward)
    assert f"(at {HERE}:{first}" in str(caught.value).splitlines()[0]


def test_code_without_source_has_no_entry_and_no_error():
    namespace: dict = {}
    exec("def backward(self, grad_out):\n    return 2 * grad_out\n", namespace)  # no file
    assert source_of(namespace["backward"]) is None
    assert source_of(len) is None  # a built-in
    model, ref, x, t = _layered()
    model[1][1].backward = namespace["backward"].__get__(model[1][1])
    report = gp.compare(model, ref, x, t, ours_loss=SoftmaxCrossEntropy())
    assert report.root_causes and all(f.source is None for f in report.root_causes)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _two_layer(params):
    def grads(x, t):
        z1 = x @ params["W1"].T + params["b1"]
        h = 1 / (1 + np.exp(-z1))
        p = _softmax(h @ params["W2"].T + params["b2"])
        dz2 = (p - np.eye(3)[t.astype(int)]) / x.shape[0]
        dh = gp.tap("dh", dz2 @ params["W2"])
        dz1 = gp.tap("dz1", dh * h)  # the bug: h * (1 - h) is the sigmoid's derivative
        return {"W1": dz1.T @ x, "b1": dz1.sum(0), "W2": dz2.T @ h, "b2": dz2.sum(0)}

    return grads


def test_a_function_root_cause_names_the_lines_between_the_bracketing_taps():
    rng = np.random.default_rng(1)
    ref = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        params = {n: p.detach().numpy().copy() for n, p in zip(["W1", "b1", "W2", "b2"],
                                                                 ref.parameters())}  # fmt: skip
    x, t = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    grads = _two_layer(params)
    report = gp.compare_function(
        grads, params, ref, x, t, tap_map={"dh": "grad:1", "dz1": "grad:0"}
    )
    root = report.root_causes[0]
    assert (root.layer, root.quantity) == ("dz1", "grad_output")
    source_lines, start = inspect.getsourcelines(grads)
    tap_line = {
        name: start + i
        for i, text in enumerate(source_lines)
        for name in ("dh", "dz1")
        if f'gp.tap("{name}"' in text
    }
    assert root.source == {
        "file": HERE, "first_line": tap_line["dh"], "last_line": tap_line["dz1"]
    }  # fmt: skip


def _course_style(params):
    """Course style, no taps: the gradients go into a dict keyed "dW1", one statement each."""

    def backprop(x, t):
        grads = {}
        z1 = x @ params["W1"].T + params["b1"]
        h = np.maximum(z1, 0)
        p = _softmax(h @ params["W2"].T + params["b2"])
        dz2 = (p - np.eye(3)[t.astype(int)]) / x.shape[0]
        grads["dW2"] = dz2.T @ h
        grads["db2"] = dz2.sum(0)
        dz1 = (dz2 @ params["W2"]) * (z1 > 0)
        grads["dW1"], grads["db1"] = dz1.T @ x, dz1.sum(0)
        grads["dW2"] = grads["dW2"] * 2  # the bug, written last
        return grads

    return backprop


def test_without_taps_a_gradient_root_cause_names_the_statement_that_assigns_it():
    rng = np.random.default_rng(2)
    ref = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    names = ["W1", "b1", "W2", "b2"]
    params = {n: p.detach().numpy().copy() for n, p in zip(names, ref.parameters())}
    x, t = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    backprop = _course_style(params)
    report = gp.compare_function(backprop, params, ref, x, t)
    root = report.root_causes[0]
    assert root.quantity == "grad:W2"
    lines, start = inspect.getsourcelines(backprop)
    bug = start + next(i for i, text in enumerate(lines) if "# the bug" in text)
    assert root.source == {"file": HERE, "first_line": bug, "last_line": bug}
    assert f"{HERE}:{bug}" in render(report)


def test_assignment_of_reads_tuples_attributes_and_keys_and_gives_none_without_a_write():
    from gradparity.core.source import assignment_of

    def backward(self, dout, cache):
        dx, grads["db"] = dout @ cache, dout.sum(0)  # noqa: F821 (never run)
        self.dW = cache.T @ dout
        return dx

    _, start = inspect.getsourcelines(backward)
    assert assignment_of(backward, "b")["first_line"] == start + 1
    assert assignment_of(backward, "W")["first_line"] == start + 2
    assert assignment_of(backward, "gamma") is None
    assert assignment_of(len, "W") is None
