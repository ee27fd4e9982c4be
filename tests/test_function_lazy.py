"""compare_function runs its extra passes only when something diverged (issue 16): how many
times ``grads``, the reference's forward, the source lookup and the NaN-aware mutation check
run, with nothing diverging and with one bug. Counts, not timings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.evidence.function_autodiff import LossCall
from gradparity.locate import function as locate_function
from gradparity.sides import function_run

N, D_IN, HIDDEN, CLASSES = 8, 5, 4, 3


def _params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "W1": rng.standard_normal((D_IN, HIDDEN)),
        "b1": rng.standard_normal(HIDDEN),
        "W2": rng.standard_normal((HIDDEN, CLASSES)),
        "b2": rng.standard_normal(CLASSES),
    }


def _twin(params: dict[str, np.ndarray]) -> nn.Module:
    model = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)).double()
    with torch.no_grad():
        for layer, (w, b) in zip((model[0], model[2]), (("W1", "b1"), ("W2", "b2"))):
            layer.weight.copy_(torch.from_numpy(params[w].T.copy()))
            layer.bias.copy_(torch.from_numpy(params[b].copy()))
    return model


def _loss(params: dict, x: np.ndarray, t: np.ndarray) -> float:
    h = np.maximum(x @ params["W1"] + params["b1"], 0)
    z = h @ params["W2"] + params["b2"]
    z = z - z.max(axis=1, keepdims=True)
    return -(z[np.arange(len(t)), t] - np.log(np.exp(z).sum(axis=1))).mean()


def _counted_grads(params: dict, calls: list, bug: str | None = None):
    """grads(x, t) of the MLP, appending to ``calls`` on each call; ``bug``: "stale" returns
    the first call's gradients again, "scaled" doubles dW2."""
    first: dict = {}

    def grads(x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(1)
        if bug == "stale" and first:
            return first
        pre = x @ params["W1"] + params["b1"]
        h = np.maximum(pre, 0)
        z = h @ params["W2"] + params["b2"]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(t)), t] -= 1
        dz = p / len(t)
        dpre = (dz @ params["W2"].T) * (pre > 0)
        out = {"W1": x.T @ dpre, "b1": dpre.sum(0), "W2": h.T @ dz, "b2": dz.sum(0)}
        if bug == "scaled":
            out["W2"] = 2 * out["W2"]
        first.update({k: v.copy() for k, v in out.items()})
        return out

    return grads


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.standard_normal((N, D_IN)), rng.integers(0, CLASSES, N)


def _forward_counter(model: nn.Module, calls: list) -> None:
    # The hook travels with the copy compare_function makes of the reference.
    model.register_forward_hook(lambda *args: calls.append(1))


@pytest.mark.parametrize(
    ("bug", "reference_runs"),
    # A dry run and the compared run; the stale check runs the reference once more, at the
    # warm-up input, only when a gradient diverged.
    [(None, 2), ("scaled", 3)],
)
def test_twin_runs_each_side_once_more_only_when_something_diverged(data, bug, reference_runs):
    params, grads_calls, forwards = _params(), [], []
    model = _twin(params)
    _forward_counter(model, forwards)
    report = gp.compare_function(_counted_grads(params, grads_calls, bug), params, model, *data)
    assert report.ok is (bug is None)
    assert len(grads_calls) == 2  # the warm-up call and the compared one, never more
    assert len(forwards) == reference_runs


def test_stale_is_still_found_with_two_calls(data):
    params, grads_calls = _params(), []
    report = gp.compare_function(
        _counted_grads(params, grads_calls, "stale"), params, _twin(params), *data
    )
    assert len(grads_calls) == 2
    assert {f.diagnosis for f in report.root_causes} == {"stale"}


def test_autodiff_differentiates_the_warm_up_input_only_when_something_diverged(data, monkeypatch):
    exact_calls: list = []
    original = LossCall.exact

    def counted(self, *args):
        exact_calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(LossCall, "exact", counted)
    for bug, expected in ((None, 1), ("scaled", 2)):
        exact_calls.clear()
        params, grads_calls = _params(), []
        report = gp.compare_function(
            _counted_grads(params, grads_calls, bug), params, "autodiff", *data, loss_fn=_loss
        )
        assert report.ok is (bug is None)
        assert len(grads_calls) == 2
        assert len(exact_calls) == expected, bug


def test_source_is_read_only_when_a_root_cause_needs_it(data, monkeypatch):
    reads: list = []
    original = locate_function.source_of

    def counted(code):
        reads.append(code)
        return original(code)

    monkeypatch.setattr(locate_function, "source_of", counted)
    params = _params()
    assert gp.compare_function(_counted_grads(params, []), params, _twin(params), *data).ok
    assert reads == []
    # The statement assigning dW2 names the bug: the function's whole span is not read.
    report = gp.compare_function(_counted_grads(params, [], "scaled"), params, _twin(params), *data)
    source = report.root_causes[0].source
    assert source is not None and source["first_line"] == source["last_line"]
    assert reads == []


def test_nan_aware_check_runs_only_for_a_changed_value(data, monkeypatch):
    slow: list = []
    original = function_run.same_values

    def counted(a, b):
        slow.append(1)
        return original(a, b)

    monkeypatch.setattr(function_run, "same_values", counted)
    params = _params()
    assert gp.compare_function(_counted_grads(params, []), params, _twin(params), *data).ok
    assert slow == []

    inner = _counted_grads(params, [])

    def mutating(x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        out = inner(x, t)
        params["b2"] -= 0.1 * out["b2"]  # an SGD step inside grads: a mutation
        return out

    report = gp.compare_function(mutating, params, _twin(params), *data)
    assert slow
    assert "mutates_input" in {f.diagnosis for f in report.root_causes}
