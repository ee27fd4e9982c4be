"""Issue 12, item 8: the seven cases seen when trying the tool as new users, each written in the
style it came from (book-style layer classes in an OrderedDict with a loss layer; course-style
functions with caches), each checked for the finding the issue describes and for its source
lines: the file named holds the buggy code, and the lines named contain the buggy statement.

1. a loss silently replaced: a SoftmaxWithLoss without ``/ batch_size``;
2. an epsilon inside the loss's log, ``-log(y + 1e-7)``: minor, ``strict`` makes it count;
3. a batch norm whose variance epsilon is 2e-5 where torch's is 1e-5: minor;
4. labels for what the message knows: weight decay, a missing mask, an inverted ReLU mask;
5. coincidences: a pool area equal to the batch size, a scalar loss exactly 3 times;
6. one bug, one root cause: a diverging forward, and course-style functions without taps;
7. a max pool routing the gradient to every tied maximum after a ReLU.

The networks are those of the tests that introduced each behaviour, imported from there."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import test_exact_factors as exact
import test_grouping as grouping
import test_minor as minor
import test_pattern_labels as patterns
import test_value_labels as values
import torch
from book_layers import MSE, MaxPooling, Sigmoid
from book_style import BatchNormalization, TwoLayerNet, torch_twin
from book_style import SoftmaxWithLoss as LossWithEpsilon
from test_book_style import HOW, NOTICE, SoftmaxWithLoss, _checked, _data, _reference
from test_book_style import TwoLayerNet as BookNet
from torch import nn

import gradparity as gp
from gradparity.core.finding import FOLLOWS_FORWARD, POSSIBLY_INHERITED, SAME_PLACE
from gradparity.core.labels import (
    BATCH_REDUCTION,
    EPSILON,
    MASK_INVERTED,
    MASK_MISSING,
    SCALED,
    TIED_MAXIMA,
    WEIGHT_DECAY,
)


def _lines_named(source: dict) -> list[str]:
    path = Path(source["file"])
    return path.read_text().splitlines()[source["first_line"] - 1 : source["last_line"]]


def assert_points_at(found, code, statement: str, whole_method: bool = True) -> None:
    """``found.source`` names the file of ``code`` (a method or function), its lines contain
    ``statement``, and, for a method, they are exactly that method's lines."""
    assert found.source is not None, f"no source for {found.layer} {found.quantity}"
    assert Path(found.source["file"]).resolve() == Path(inspect.getsourcefile(code)).resolve()
    named = _lines_named(found.source)
    assert any(statement in line for line in named), (statement, named)
    if whole_method:
        lines, first = inspect.getsourcelines(code)
        span = (found.source["first_line"], found.source["last_line"])
        assert span == (first, first + len(lines) - 1)


# ---------------------------------------------------------------- 1. a loss silently replaced


def test_1_without_ours_loss_the_report_says_the_users_loss_was_not_checked():
    x, t = _data()
    report = gp.compare(_checked(BookNet(4, 5, 3)), _reference(), x, t)
    assert report.ok and report.root_causes == []  # the default loss hides the bug
    assert NOTICE in report.summary() and HOW in report.summary()


def test_1_with_ours_loss_the_missing_division_is_found_in_its_backward():
    net = BookNet(4, 5, 3)
    x, t = _data()
    report = gp.compare(
        _checked(net), _reference(), x, t,
        ours_loss=net.lastLayer, reference_loss=torch.nn.CrossEntropyLoss(),
    )  # fmt: skip
    (found,) = report.root_causes
    assert (found.layer, found.quantity, found.diagnosis) == ("loss", "grad_input", BATCH_REDUCTION)
    assert_points_at(found, SoftmaxWithLoss.backward, "dx = (self.y - self.t) * dout")
    assert NOTICE not in report.summary()


# ---------------------------------------------------------------- 2 and 3. epsilons are minor


@pytest.fixture(scope="module")
def loss_epsilon() -> gp.Report:
    return minor._compare(TwoLayerNet(loss_eps=1e-7), torch_twin())


def test_2_an_epsilon_inside_the_log_is_minor_with_its_size(loss_epsilon):
    assert loss_epsilon.ok and loss_epsilon.root_causes == []
    (found,) = loss_epsilon.minor
    assert (found.layer, found.quantity, found.diagnosis) == ("loss", "output", EPSILON)
    assert found.detail["minor"]["epsilon"] == pytest.approx(1e-7, rel=1e-3)
    assert_points_at(found, LossWithEpsilon.forward, "+ self.eps))")


def test_2_strict_makes_the_epsilon_count():
    report = minor._compare(TwoLayerNet(loss_eps=1e-7), torch_twin(), strict=True)
    assert not report.ok and report.root_causes == []
    assert [f.diagnosis for f in report.minor] == [EPSILON]


def test_3_a_batch_norm_epsilon_of_2e_5_is_minor_with_its_size():
    net = TwoLayerNet(batchnorm_eps=2e-5, loss_eps=0)
    report = minor._compare(net, torch_twin(batchnorm=True))
    assert report.ok and report.root_causes == []
    (found,) = report.minor
    assert (found.layer, found.diagnosis) == ("BatchNorm1", EPSILON)
    assert found.detail["minor"]["epsilon"] == pytest.approx(2e-5, rel=1e-3)
    assert_points_at(found, BatchNormalization.forward, "np.sqrt(self.running_var + self.eps)")


# ---------------------------------------------------------------- 4. labels


def test_4_an_l2_term_in_dw_is_weight_decay():
    (found,) = values._book(affine2=values.AffineWeightDecay).root_causes
    assert (found.layer, found.quantity, found.diagnosis) == ("Affine2", "grad:W", WEIGHT_DECAY)
    assert found.detail["c"] == pytest.approx(0.01)
    assert_points_at(found, values.AffineWeightDecay.backward, "self.dW += 0.01 * self.W")


def test_4_an_inverted_relu_mask_is_mask_inverted():
    report = values._book(hidden=values.ReluInvertedMask)
    found = report.root_causes[0]
    assert (found.layer, found.quantity, found.diagnosis) == ("Act1", "grad_input", MASK_INVERTED)
    assert_points_at(found, values.ReluInvertedMask.backward, "dout[~self.mask] = 0")


# Course style (the functions with caches of test_grouping), the net written out as users write
# it: a plain function calling gp.tap itself, where test_grouping's ``make_loss`` goes through a
# lambda and a tap helper, so that a finding's lines would be those of the helpers.
affine_forward, affine_backward = grouping.affine_forward, grouping.affine_backward
relu_forward, relu_backward = grouping.relu_forward, grouping.relu_backward
softmax_loss = grouping.softmax_loss


def _course_setup():
    rng = np.random.default_rng(0)
    params = {
        "W1": rng.normal(size=(4, 6)), "b1": rng.normal(size=6),
        "W2": rng.normal(size=(6, 5)), "b2": rng.normal(size=5),
        "W3": rng.normal(size=(5, 3)), "b3": rng.normal(size=3),
    }  # fmt: skip
    ref = nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)
    ).double()
    return params, ref, rng.normal(size=(8, 4)), rng.integers(0, 3, 8)


def course_net(relu2_backward=relu_backward):
    """(the gradient function, params, reference, X, y) of a three-layer ReLU net whose second
    ReLU's backward is ``relu2_backward``; no taps."""
    params, ref, X, y = _course_setup()

    def three_layer_grads(X, y):
        h1, fc1 = affine_forward(X, params["W1"], params["b1"])
        a1, relu1 = relu_forward(h1)
        h2, fc2 = affine_forward(a1, params["W2"], params["b2"])
        a2, relu2 = relu_forward(h2)
        scores, fc3 = affine_forward(a2, params["W3"], params["b3"])
        _, dscores = softmax_loss(scores, y)
        grads = {}
        da2, grads["W3"], grads["b3"] = affine_backward(dscores, fc3)
        dh2 = relu2_backward(da2, relu2)
        da1, grads["W2"], grads["b2"] = affine_backward(dh2, fc2)
        dh1 = relu_backward(da1, relu1)
        _, grads["W1"], grads["b1"] = affine_backward(dh1, fc1)
        return grads

    return three_layer_grads, params, ref, X, y


def tapped_course_net_without_relu2_mask():
    """The same net with its deltas tapped, the second ReLU's mask left out of its backward."""
    params, ref, X, y = _course_setup()

    def three_layer_grads(X, y):
        h1, fc1 = affine_forward(X, params["W1"], params["b1"])
        a1, relu1 = relu_forward(h1)
        h2, fc2 = affine_forward(a1, params["W2"], params["b2"])
        a2, _ = relu_forward(h2)  # the cache its backward should use
        scores, fc3 = affine_forward(a2, params["W3"], params["b3"])
        _, dscores = softmax_loss(scores, y)
        grads = {}
        da2, grads["W3"], grads["b3"] = affine_backward(gp.tap("delta_4", dscores), fc3)
        dh2 = gp.tap("delta_2", da2.copy())  # the bug: relu_backward left out
        da1, grads["W2"], grads["b2"] = affine_backward(dh2, fc2)
        dh1 = gp.tap("delta_0", relu_backward(da1, relu1))
        _, grads["W1"], grads["b1"] = affine_backward(dh1, fc1)
        return grads

    return three_layer_grads, params, ref, X, y


DELTA_TAPS = {"delta_4": "grad:4", "delta_2": "grad:2", "delta_0": "grad:0"}


def test_4_a_relu_backward_without_its_mask_is_mask_missing_between_two_taps():
    grads, params, ref, X, y = tapped_course_net_without_relu2_mask()
    report = gp.compare_function(grads, params, ref, X, y, tap_map=DELTA_TAPS)
    (found,) = report.root_causes
    assert (found.layer, found.quantity, found.diagnosis) == (
        "delta_2",
        "grad_output",
        MASK_MISSING,
    )
    assert_points_at(found, grads, 'dh2 = gp.tap("delta_2", da2.copy())', whole_method=False)
    named = _lines_named(found.source)  # from the agreeing tap before it to the diverging one
    assert 'gp.tap("delta_4"' in named[0] and 'gp.tap("delta_2"' in named[-1]


# ---------------------------------------------------------------- 5. coincidences


def test_5_a_max_pool_dividing_by_its_area_at_batch_size_4_is_not_batch_reduction():
    rng = np.random.default_rng(1)
    pool = exact.MaxPool2x2(divide_by_area=True)
    layers, ref = exact._pool_net(pool, exact.Linear(12, 3, rng=rng))
    x, t = rng.standard_normal((4, 3, 4, 4)), rng.integers(0, 3, 4)
    found = gp.compare(list(layers.items()), ref, x, t).root_causes[0]
    assert (found.layer, found.quantity, found.diagnosis) == ("pool", "grad_input", SCALED)
    assert "pool area" in found.message and "not the batch size" in found.message
    assert_points_at(found, exact.MaxPool2x2.backward, "dwin /= 4")


class MSEMeanOverBatch(MSE):
    """Squared error summed per example and averaged over the batch only: 3 times torch's
    MSELoss (mean over all N x 3 elements) for 3 outputs."""

    def forward(self, y, t):
        self.diff = y - t
        return float((self.diff**2).sum() / len(y))

    def backward(self, dout=1):
        return dout * 2 * self.diff / len(self.diff)


def test_5_a_scalar_loss_exactly_3_times_the_reference_is_scaled_3():
    layers, twin, x, t = patterns._mlp(Sigmoid(), nn.Sigmoid())
    report = patterns._check(layers, twin, x, np.eye(3)[t], MSEMeanOverBatch(), nn.MSELoss())
    found = report.root_causes[0]
    assert (found.layer, found.quantity, found.diagnosis) == ("loss", "output", SCALED)
    assert found.detail["exact_factor"] == "3" and "not exactly" not in found.message
    assert_points_at(found, MSEMeanOverBatch.forward, "/ len(y)")


# ---------------------------------------------------------------- 6. one bug, one root cause


def test_6_a_layer_whose_forward_diverges_is_one_finding_with_its_gradient_listed():
    report = grouping._book_network({"centre_input": True}, {})
    (found,) = report.root_causes
    assert (found.layer, found.quantity) == ("Affine1", "output")
    assert [q["quantity"] for q in found.listed(FOLLOWS_FORWARD)] == ["grad:W"]
    assert_points_at(found, grouping.AffineWithMistakes.forward, "x = x - x.mean(axis=0)")


def test_6_course_functions_without_taps_give_one_root_cause_and_name_the_taps():
    grads, params, ref, X, y = course_net(relu2_backward=grouping.relu_backward_doubled)
    report = gp.compare_function(grads, params, ref, X, y)
    (found,) = report.root_causes
    assert found.quantity == "grad:W2" and found.diagnosis == SCALED
    assert [q["quantity"] for q in found.listed(SAME_PLACE)] == ["grad:b2"]
    assert {q["quantity"] for q in found.listed(POSSIBLY_INHERITED)} == {"grad:W1", "grad:b1"}
    assert 'gp.tap("delta_2", delta)' in found.fix
    # Without taps, the statement that assigns the diverging gradient, fed by the buggy backward.
    assert_points_at(found, grads, 'grads["W2"], grads["b2"] = affine_backward(dh2', False)
    assert found.source["first_line"] == found.source["last_line"]


# ---------------------------------------------------------------- 7. ties


def test_7_a_max_pool_routing_to_every_tied_maximum_is_tied_maxima():
    report = patterns._check(*patterns._pool_net(MaxPooling()))
    # The difference vanishes below the pool (the ReLU blocks it) and fc's gradients agree: a
    # minor finding, "no effect on the gradients", and the run passes unless strict.
    assert not any(r.diverged for r in report.rows if r.layer in ("relu", "fc"))
    assert report.root_causes == [] and report.ok
    (found,) = report.minor
    assert (found.layer, found.quantity, found.diagnosis) == ("pool", "grad_input", TIED_MAXIMA)
    assert "mask" not in found.fix and "no effect on the gradients" in found.message
    assert_points_at(found, MaxPooling.backward, "is_max = (windows == self.out")
