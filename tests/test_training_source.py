"""Root causes of compare_training name the source to read: the user's optimiser's update
method for an update or state bug, its zero_grad for gradients never cleared, the layer's
backward for a gradient bug; shown in the terminal (file:line), the HTML (the lines), the
failure message, and kept by a reload."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import gradparity as gp
from gradparity.corpus.training_bugs import StaleGradLinear
from gradparity.locate.training import defined_method
from gradparity.ours import SGD, Sequential, SoftmaxCrossEntropy, mlp
from gradparity.reference import mirror
from gradparity.report.terminal import render
from gradparity.testing.assertion import failure_message

HERE = Path(__file__).resolve().relative_to(Path.cwd().resolve()).as_posix()


class PlainSGD:
    """A user's own optimiser: step() hands each parameter to update()."""

    def __init__(self, model, lr):
        self.model, self.lr = model, lr

    def zero_grad(self):
        for _, layer in self.model.named_layers():
            for grad in getattr(layer, "grads", {}).values():
                grad[...] = 0

    def step(self):
        for _, layer in self.model.named_layers():
            for key, value in getattr(layer, "params", {}).items():
                self.update(value, layer.grads[key])

    def update(self, value, grad):
        value -= self.lr * grad


class AscentSGD(PlainSGD):
    def update(self, value, grad):
        value += self.lr * grad  # the bug: climbs the loss


class ForgetfulSGD(PlainSGD):
    def zero_grad(self):
        pass  # the bug: gradients add up across steps


def _span(method) -> dict:
    lines, first = inspect.getsourcelines(method)
    return {"file": HERE, "first_line": first, "last_line": first + len(lines) - 1}


def _train(optimizer_class, model=None, steps: int = 3) -> gp.TrainingReport:
    model = model or mlp((5, 4, 3))
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(8, 5)), rng.integers(0, 3, size=8)) for _ in range(steps)]
    return gp.compare_training(
        model, mirror(model), batches, ours_loss=SoftmaxCrossEntropy(),
        ours_optimizer=lambda m: optimizer_class(m, 0.1),
        reference_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )  # fmt: skip


@pytest.fixture(scope="module")
def ascent() -> gp.TrainingReport:
    return _train(AscentSGD)


def test_an_update_bug_points_at_the_users_update_method(ascent):
    assert ascent.root_causes
    assert all(f.quantity.startswith("param:") for f in ascent.root_causes)
    assert all(f.source == _span(AscentSGD.update) for f in ascent.root_causes)


def test_a_correct_optimiser_has_no_root_cause():
    assert _train(PlainSGD).ok


def test_gradients_never_cleared_point_at_zero_grad():
    report = _train(ForgetfulSGD)
    assert {f.diagnosis for f in report.root_causes} == {"accumulated"}
    assert all(f.source == _span(ForgetfulSGD.zero_grad) for f in report.root_causes)


def test_a_gradient_bug_points_at_the_layer_not_the_optimiser():
    layers = list(mlp((5, 4, 3)).named_layers())
    model = Sequential(*layers[:-1], ("fc2", StaleGradLinear(4, 3, rng=np.random.default_rng(1))))
    report = _train(PlainSGD, model)
    assert {f.diagnosis for f in report.root_causes} == {"stale"}
    _, first = inspect.getsourcelines(StaleGradLinear.backward)
    assert all(f.source["first_line"] == first for f in report.root_causes)
    assert all(f.source["file"].endswith("corpus/training_bugs.py") for f in report.root_causes)


def test_terminal_html_and_failure_message_show_the_source(ascent, tmp_path):
    span = _span(AscentSGD.update)
    at = f"{HERE}:{span['first_line']} (lines {span['first_line']}-{span['last_line']})"
    assert f"at {at}" in render(ascent)
    assert f"(at {HERE}:{span['first_line']}" in failure_message(ascent).splitlines()[0]
    folder = ascent.save(tmp_path / "r")
    assert (
        "value += self.lr * grad  # the bug: climbs the loss"
        in (folder / "report.html").read_text()
    )
    again = gp.Report.from_json(folder)
    assert [f.source for f in again.root_causes] == [f.source for f in ascent.root_causes]


def test_the_most_derived_definition_is_chosen():
    class Wrapped(SGD):
        pass

    opt = Wrapped(mlp((2, 2)), lr=0.1)
    assert defined_method(opt, ("_update", "step")).__func__ is SGD._update
    assert defined_method(AscentSGD(None, 0.1), ("update",)).__func__ is AscentSGD.update
    assert defined_method(object(), ("step",)) is None
