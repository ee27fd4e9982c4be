"""One root cause per bug (issue 12, item 5): a layer's diverging quantities are one finding
with the others listed; in a function without taps, parameter gradients that diverge only
nearer the input than a deeper diverging layer are possibly inherited, and the report says
which taps would split them. Networks written as users write them: book-style layer classes
in an OrderedDict with a loss layer, and course-style functions with caches."""

from __future__ import annotations

import html
from collections import OrderedDict

import numpy as np
import pytest
import torch
from book_verbatim import Affine, Relu, SoftmaxWithLoss
from torch import nn

import gradparity as gp
from gradparity.core.finding import FOLLOWS_FORWARD, POSSIBLY_INHERITED, SAME_PLACE
from gradparity.core.labels import BATCH_REDUCTION, SCALED, SHAPE_MISMATCH
from gradparity.corpus.naive_conv import (
    affine_backward,
    affine_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
)
from gradparity.report.terminal import render as render_terminal
from gradparity.testing.assertion import failure_message

# ---------------------------------------------------------------- book-style layers


class AffineWithMistakes(Affine):
    """The book's Affine with two switchable mistakes: ``centre_input`` normalises the input
    in forward, ``average_db`` averages the bias gradient over the batch."""

    def __init__(self, W, b, centre_input=False, average_db=False):
        super().__init__(W, b)
        self.centre_input, self.average_db = centre_input, average_db

    def forward(self, x):
        if self.centre_input:  # the forward bug: an input normalisation nobody asked for
            x = x - x.mean(axis=0)
        return super().forward(x)

    def backward(self, dout):
        dx = super().backward(dout)
        if self.average_db:  # a second, independent mistake in the same layer
            self.db = self.db / dout.shape[0]
        return dx


def _book_network(first: dict, second: dict) -> gp.Report:
    rng = np.random.default_rng(0)
    w1, b1, w2, b2 = (
        rng.normal(size=(4, 5)),
        rng.normal(size=5),
        rng.normal(size=(5, 3)),
        rng.normal(size=3),
    )
    names = {"params": ["W", "b"], "grads": ["dW", "db"]}
    layers = OrderedDict()
    layers["Affine1"] = gp.wrap(AffineWithMistakes(w1, b1, **first), **names)
    layers["Relu1"] = Relu()
    layers["Affine2"] = gp.wrap(AffineWithMistakes(w2, b2, **second), **names)
    ref = nn.Sequential(
        OrderedDict(Affine1=nn.Linear(4, 5), Relu1=nn.ReLU(), Affine2=nn.Linear(5, 3))
    ).double()
    x, t = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    return gp.compare(
        list(layers.items()), ref, x, t,
        ours_loss=SoftmaxWithLoss(), reference_loss=torch.nn.functional.cross_entropy,
    )  # fmt: skip


@pytest.fixture(scope="module")
def forward_bug() -> gp.Report:
    return _book_network({"centre_input": True}, {})


@pytest.fixture(scope="module")
def forward_and_backward_bug() -> gp.Report:
    return _book_network({"centre_input": True, "average_db": True}, {})


def _channels(report: gp.Report) -> dict[str, str]:
    files = report.files()
    return {
        "summary": report.summary(),
        "terminal": render_terminal(report),
        "markdown": html.unescape(str(files["report.md"]).replace("\\", "")),
        "html": html.unescape(str(files["report.html"])),
        "pytest": failure_message(report),
    }


def test_book_forward_bug_is_one_root_cause_with_its_gradient_listed(forward_bug):
    assert len(forward_bug.root_causes) == 1
    found = forward_bug.root_causes[0]
    assert (found.layer, found.quantity) == ("Affine1", "output")
    # dW = x_centred.T @ dout follows ours' own forward: listed, not a second root cause
    assert [q["quantity"] for q in found.listed(FOLLOWS_FORWARD)] == ["grad:W"]
    assert found.listed(SAME_PLACE) == []
    assert forward_bug.summary().splitlines()[0].endswith("1 root cause(s)")


def test_book_layer_with_two_diverging_quantities_is_one_finding(forward_and_backward_bug):
    report = forward_and_backward_bug
    assert len(report.root_causes) == 1  # before grouping: output and grad:b, two findings
    found = report.root_causes[0]
    assert (found.layer, found.quantity) == ("Affine1", "output")  # the forward is the headline
    listed = {q["quantity"]: q for q in found.listed(SAME_PLACE)}
    assert listed["grad:b"]["diagnosis"] == BATCH_REDUCTION
    assert listed["grad:b"]["max_abs"] > 0
    rows = [r for r in report.rows if r.mode == "isolate" and r.layer == "Affine1"]
    assert {r.quantity: r.status for r in rows}["grad:b"] == "root_cause"
    for channel, text in _channels(report).items():
        assert "also: grad:b (batch_reduction)" in text, channel
        assert "following the forward: grad:W" in text, channel


def test_bugs_in_two_layers_stay_two_root_causes():
    report = _book_network({"centre_input": True}, {"average_db": True})
    assert [(f.layer, f.quantity) for f in report.root_causes] == [
        ("Affine1", "output"),
        ("Affine2", "grad:b"),
    ]
    assert report.root_causes[1].quantities == []


def test_listed_quantities_survive_a_reload(forward_and_backward_bug, tmp_path):
    forward_and_backward_bug.save(tmp_path)
    again = gp.Report.from_json(tmp_path / "report.json")
    ours, theirs = forward_and_backward_bug.root_causes[0], again.root_causes[0]
    assert [(q["quantity"], q["relation"]) for q in theirs.quantities] == [
        (q["quantity"], q["relation"]) for q in ours.quantities
    ]
    assert theirs.quantities[0]["max_abs"] == pytest.approx(ours.quantities[0]["max_abs"], rel=1e-3)
    assert "also: grad:b (batch_reduction)" in again.summary()


def test_a_report_with_an_unknown_relation_is_refused(forward_and_backward_bug, tmp_path):
    data = forward_and_backward_bug.to_dict()
    data["root_causes"][0]["quantities"][0]["relation"] = "cousin"
    path = tmp_path / "report.json"
    path.write_text(__import__("json").dumps(data))
    with pytest.raises(gp.InputError, match="relation"):
        gp.Report.from_json(path)


# ---------------------------------------------------------------- course-style functions
# (the layer functions are the course's, from gradparity.corpus.naive_conv; these vary them)


def relu_backward_doubled(dout, cache):
    """relu_backward with a stray factor 2."""
    return 2.0 * dout * (cache > 0)  # the bug: a stray factor in one layer's ReLU backward


def affine_forward_minus_bias(x, w, b):
    """affine_forward subtracting the bias."""
    out = x @ w - b  # the forward bug
    return out, (x, w)  # the cache affine_backward reads


def make_loss(
    relu2_backward=relu_backward, b1_not_summed=False, taps=(), affine2_forward=affine_forward
):
    """A course-style three-layer net's ``loss(params, X, y) -> (loss, grads)``, tapping the
    deltas named in ``taps`` (``delta_4``: dscores, ``delta_2``: dh2, ``delta_0``: dh1) and
    the forward's ``h2``."""

    def tap(name, value):
        return gp.tap(name, value) if name in taps else value

    def loss(params, X, y):
        h1, fc1 = affine_forward(X, params["W1"], params["b1"])
        a1, relu1 = relu_forward(h1)
        h2, fc2 = affine2_forward(a1, params["W2"], params["b2"])
        a2, relu2 = relu_forward(tap("h2", h2))
        scores, fc3 = affine_forward(a2, params["W3"], params["b3"])
        data_loss, dscores = softmax_loss(scores, y)
        grads = {}
        da2, grads["W3"], grads["b3"] = affine_backward(tap("delta_4", dscores), fc3)
        dh2 = tap("delta_2", relu2_backward(da2, relu2))
        da1, grads["W2"], grads["b2"] = affine_backward(dh2, fc2)
        dh1 = tap("delta_0", relu_backward(da1, relu1))
        _, grads["W1"], grads["b1"] = affine_backward(dh1, fc1)
        if b1_not_summed:
            grads["b1"] = dh1
        return data_loss, grads

    return loss


def _course_run(loss, tap_map=None) -> gp.Report:
    rng = np.random.default_rng(0)
    params = {
        "W1": rng.normal(size=(4, 6)), "b1": rng.normal(size=6),
        "W2": rng.normal(size=(6, 5)), "b2": rng.normal(size=5),
        "W3": rng.normal(size=(5, 3)), "b3": rng.normal(size=3),
    }  # fmt: skip
    ref = nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)
    ).double()
    X, y = rng.normal(size=(8, 4)), rng.integers(0, 3, 8)
    return gp.compare_function(
        lambda X, y: loss(params, X, y)[1], params, ref, X, y, tap_map=tap_map
    )


def _status(report: gp.Report, quantity: str) -> str:
    return next(r.status for r in report.rows if r.quantity == quantity)


@pytest.fixture(scope="module")
def untapped() -> gp.Report:
    return _course_run(make_loss(relu2_backward=relu_backward_doubled))


def test_course_bug_without_taps_is_one_root_cause_with_the_rest_possibly_inherited(untapped):
    assert not untapped.ok  # possibly inherited rows do not make the run pass
    assert len(untapped.root_causes) == 1
    found = untapped.root_causes[0]
    assert found.quantity == "grad:W2" and found.diagnosis == SCALED
    assert found.detail["deepest"]
    assert [q["quantity"] for q in found.listed(SAME_PLACE)] == ["grad:b2"]
    assert {q["quantity"] for q in found.listed(POSSIBLY_INHERITED)} == {"grad:W1", "grad:b1"}
    assert "W1, b1 (nearer the input) diverge too" in found.message
    assert {q: _status(untapped, f"grad:{q}") for q in ("W2", "b2", "W1", "b1", "W3")} == {
        "W2": "root_cause", "b2": "root_cause", "W1": "inherited", "b1": "inherited", "W3": "ok",
    }  # fmt: skip
    assert "possibly inherited: grad:W1 (scaled), grad:b1 (scaled)" in untapped.summary()


def test_the_advice_names_the_taps_that_bracket_the_deepest_layer(untapped):
    fix = untapped.root_causes[0].fix
    assert 'gp.tap("delta_2", delta)' in fix
    # the agreeing layer above (module 4), the deepest diverging one (2) and the one below (0)
    assert 'tap_map={"delta_4": "grad:4", "delta_2": "grad:2", "delta_0": "grad:0"}' in fix
    assert "possibly inherited" in failure_message(untapped)


def test_with_the_advised_taps_the_bug_lies_between_two_of_them():
    taps = {"delta_4": "grad:4", "delta_2": "grad:2", "delta_0": "grad:0"}
    loss = make_loss(relu2_backward=relu_backward_doubled, taps=tuple(taps))
    report = _course_run(loss, tap_map=taps)
    assert len(report.root_causes) == 1
    found = report.root_causes[0]
    assert (found.layer, found.quantity) == ("delta_2", "grad_output")
    assert "while delta_4 before it agrees" in found.message
    assert _status(report, "grad:W1") == "inherited" and _status(report, "grad:W2") == "inherited"


def test_parameters_between_the_bracketing_taps_join_the_taps_finding():
    taps = {"delta_4": "grad:4", "delta_0": "grad:0"}  # no tap at module 2
    loss = make_loss(relu2_backward=relu_backward_doubled, taps=tuple(taps))
    report = _course_run(loss, tap_map=taps)
    assert len(report.root_causes) == 1
    found = report.root_causes[0]
    assert (found.layer, found.quantity) == ("delta_0", "grad_output")
    assert {q["quantity"] for q in found.listed(SAME_PLACE)} == {"grad:W2", "grad:b2"}
    assert _status(report, "grad:W1") == "inherited"


def test_a_mistake_a_delta_cannot_make_is_its_own_root_cause():
    # b1 = dh1, not summed over the batch: a bug in that line, whatever happens deeper
    report = _course_run(make_loss(relu2_backward=relu_backward_doubled, b1_not_summed=True))
    # (its sum also carries the doubled delta, so the shapes, not a missing sum, are named)
    assert [(f.quantity, f.diagnosis) for f in report.root_causes][1] == ("grad:b1", SHAPE_MISMATCH)
    assert len(report.root_causes) == 2
    assert {q["quantity"] for q in report.root_causes[0].listed(POSSIBLY_INHERITED)} == {"grad:W1"}


def test_a_correct_course_network_has_no_finding():
    report = _course_run(make_loss())
    assert report.ok and report.root_causes == []


def test_without_a_reference_model_the_advice_asks_for_one():
    # central differences of the course loss: no module names to map taps to
    rng = np.random.default_rng(0)
    params = {
        "W1": rng.normal(size=(4, 6)), "b1": rng.normal(size=6),
        "W2": rng.normal(size=(6, 5)), "b2": rng.normal(size=5),
        "W3": rng.normal(size=(5, 3)), "b3": rng.normal(size=3),
    }  # fmt: skip
    X, y = rng.normal(size=(8, 4)), rng.integers(0, 3, 8)
    buggy, correct = make_loss(relu2_backward=relu_backward_doubled), make_loss()
    report = gp.compare_function(
        lambda X, y: buggy(params, X, y)[1], params, None, X, y,
        loss_fn=lambda p, X, y: correct(p, X, y)[0],
    )  # fmt: skip
    assert len(report.root_causes) == 1
    found = report.root_causes[0]
    assert found.quantity in ("grad:W2", "grad:b2")
    assert {q["quantity"] for q in found.listed(POSSIBLY_INHERITED)} == {"grad:W1", "grad:b1"}
    assert "compare with a torch reference and tap_map" in found.fix
    assert "grad:2" not in found.fix  # no module is named where none is known


def test_a_forward_tap_root_cause_lists_the_gradients_as_possibly_inherited():
    taps = {"h2": "2", "delta_4": "grad:4", "delta_0": "grad:0"}
    loss = make_loss(affine2_forward=affine_forward_minus_bias, taps=tuple(taps))
    report = _course_run(loss, tap_map=taps)
    assert len(report.root_causes) == 1
    found = report.root_causes[0]
    assert (found.layer, found.quantity) == ("h2", "output")
    inherited = {q["quantity"] for q in found.listed(POSSIBLY_INHERITED)}
    assert {"grad:W2", "grad:W1"} <= inherited
    assert "possibly only because the forward does" in found.message
    assert all(_status(report, q) == "inherited" for q in inherited)
