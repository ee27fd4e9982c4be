"""Issue 12, item 3: labels for what the message knows, each from a numeric test that could
fail: ``reduction_count``, ``upstream_ignored``, ``mask_missing``, ``mask_inverted``,
``weight_decay`` and ``transposed`` from ``W @ dZ`` for ``W.T @ dZ``. Each has a case that fits
and a near miss that must not get the label, then the end-to-end cases on a book-style network
(layer classes in an OrderedDict, a loss layer) and a course-style one (functions with caches)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from book_verbatim import Affine, Relu, Sigmoid, SoftmaxWithLoss
from torch import nn

import gradparity as gp
from gradparity.comparison.diagnose.values import diagnose
from gradparity.core.labels import (
    BATCH_REDUCTION,
    MASK_INVERTED,
    MASK_MISSING,
    MISSING_LOCAL_DERIVATIVE,
    REDUCTION_COUNT,
    SCALED,
    TRANSPOSED,
    UNEXPLAINED,
    UPSTREAM_IGNORED,
    WEIGHT_DECAY,
)
from gradparity.core.row import Row
from gradparity.core.tolerance import tolerance_for
from gradparity.corpus.naive_conv import (
    affine_backward,
    affine_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
)
from gradparity.evidence.penalty import explain_penalty, penalty_factor
from gradparity.evidence.weight_access import transposed_access

TOL = tolerance_for("float64")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12)


# ---------------------------------------------------------------- reduction_count


def test_a_loss_gradient_divided_by_n_times_c_is_a_reduction_over_the_features(rng):
    ref = rng.standard_normal((8, 3))
    d = diagnose(ref / 3, ref, TOL, quantity="grad_input", batch_size=8)
    assert d.label == REDUCTION_COUNT
    assert (d.detail["count_of"], d.detail["count"]) == ("features", 3)
    assert d.detail["factor"] == pytest.approx(1 / 3)
    assert "N x C = 24" in d.message and "N = 8" in d.message
    assert "divide by the batch size (8) alone" in d.fix


def test_a_factor_of_the_elements_per_example_is_named(rng):
    ref = rng.standard_normal((4, 3, 2, 2))
    d = diagnose(12 * ref, ref, TOL, quantity="output", batch_size=4)
    assert d.label == REDUCTION_COUNT
    assert (d.detail["count_of"], d.detail["count"]) == ("elements per example", 12)
    assert "the reference divides by it" in d.message


def test_a_count_that_is_also_the_batch_size_stays_batch_reduction(rng):
    ref = rng.standard_normal((3, 3))  # 3 features and 3 examples
    d = diagnose(ref / 3, ref, TOL, quantity="grad_input", batch_size=3)
    assert d.label == BATCH_REDUCTION
    assert d.detail["also_equals"] == ["the feature count (3)"]


def test_a_near_count_factor_is_no_reduction_count(rng):
    ref = rng.standard_normal((8, 3))
    d = diagnose(ref / 3 + 1e-3 * rng.standard_normal((8, 3)), ref, TOL, quantity="grad_input",
                 batch_size=8)  # fmt: skip
    assert d.label == UNEXPLAINED


def test_a_factor_of_two_stays_scaled_even_with_two_features(rng):
    ref = rng.standard_normal((8, 2))
    d = diagnose(2 * ref, ref, TOL, quantity="grad_input", batch_size=8)
    assert d.label == SCALED


def test_a_scalar_exact_factor_stays_scaled():
    d = diagnose(np.array(3 * 0.71), np.array(0.71), TOL, quantity="loss", batch_size=4)
    assert d.label == SCALED


# ---------------------------------------------------------------- upstream_ignored


def test_a_sigmoid_backward_without_grad_out_ignores_the_upstream(rng):
    y, up = 1 / (1 + np.exp(-rng.standard_normal((8, 4)))), rng.standard_normal((8, 4))
    d = diagnose(y * (1 - y), up * y * (1 - y), TOL, quantity="grad_input", upstream=up)
    assert d.label == UPSTREAM_IGNORED
    assert "without grad_out" in d.message
    assert d.fix.startswith("multiply the local derivative by grad_out")


def test_a_local_derivative_off_by_a_little_is_not_upstream_ignored(rng):
    y, up = 1 / (1 + np.exp(-rng.standard_normal((8, 4)))), rng.standard_normal((8, 4))
    ours = y * (1 - y) + 1e-4 * rng.standard_normal((8, 4))
    d = diagnose(ours, up * y * (1 - y), TOL, quantity="grad_input", upstream=up)
    assert d.label == UNEXPLAINED


def test_ours_equal_to_the_upstream_stays_missing_local_derivative(rng):
    y, up = rng.random((8, 4)), rng.standard_normal((8, 4))
    d = diagnose(up, up * y, TOL, quantity="grad_input", upstream=up)
    assert d.label == MISSING_LOCAL_DERIVATIVE


# ---------------------------------------------------------------- masks


def test_a_missing_mask_differs_only_where_the_reference_is_zero(rng):
    z, up = rng.standard_normal((8, 6)), rng.standard_normal((8, 6))
    d = diagnose(up, up * (z > 0), TOL, quantity="grad_input")
    assert d.label == MASK_MISSING
    assert d.detail["unmasked"] == int((z <= 0).sum())


def test_one_element_off_where_the_reference_is_not_zero_is_no_missing_mask(rng):
    z, up = rng.standard_normal((8, 6)), rng.standard_normal((8, 6))
    ours = up.copy()
    at = tuple(np.argwhere(z > 0)[0])
    ours[at] *= 1.5
    d = diagnose(ours, up * (z > 0), TOL, quantity="grad_input")
    assert d.label == UNEXPLAINED
    assert "unmasked" not in d.detail


def test_an_inverted_relu_mask_has_complementary_zero_patterns(rng):
    x, up = rng.standard_normal((8, 6)), rng.standard_normal((8, 6))
    d = diagnose(up * (x <= 0), up * (x > 0), TOL, quantity="grad_input")
    assert d.label == MASK_INVERTED
    assert d.detail["blocked_where_reference_passes"] == int((x > 0).sum())
    assert d.detail["passed_where_reference_blocks"] == int((x <= 0).sum())
    assert "(x > 0)" in d.fix and "not (x <= 0)" in d.fix


def test_one_element_passed_on_both_sides_is_no_inverted_mask(rng):
    x, up = rng.standard_normal((8, 6)), rng.standard_normal((8, 6))
    ours = up * (x <= 0)
    at = tuple(np.argwhere(x > 0)[0])
    ours[at] = 2 * up[at]  # non-zero where the reference is non-zero too
    d = diagnose(ours, up * (x > 0), TOL, quantity="grad_input")
    assert d.label == UNEXPLAINED


def test_a_mask_that_blocks_too_much_is_not_inverted(rng):
    x, up = rng.standard_normal((8, 6)), rng.standard_normal((8, 6))
    d = diagnose(up * (x > 0.5), up * (x > 0), TOL, quantity="grad_input")
    assert d.label == UNEXPLAINED


# ---------------------------------------------------------------- weight_decay


def _grad_row() -> Row:
    row = Row("isolate", "fc", "Linear", "grad:W", [5, 4], [5, 4])
    row.diagnosis, row.detail = UNEXPLAINED, {}
    return row


def test_a_gradient_off_by_c_times_the_weight_is_weight_decay(rng):
    w, ref = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    assert penalty_factor(ref + 0.01 * w, ref, w, TOL) == pytest.approx(0.01)
    row = _grad_row()
    explain_penalty(row, ref + 0.01 * w, ref, w, TOL)
    assert row.diagnosis == WEIGHT_DECAY
    assert row.detail["c"] == pytest.approx(0.01)
    assert "remove the L2 term 0.01 * W" in row.fix
    missing = _grad_row()
    explain_penalty(missing, ref - 0.1 * w, ref, w, TOL)
    assert missing.detail["c"] == pytest.approx(-0.1)
    assert "add the L2 term 0.1 * W" in missing.fix


def test_a_weight_decay_like_difference_with_a_residual_is_not_weight_decay(rng):
    w, ref = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    ours = ref + 0.01 * w + 1e-4 * rng.standard_normal((5, 4))
    assert penalty_factor(ours, ref, w, TOL) is None
    row = _grad_row()
    explain_penalty(row, ours, ref, w, TOL)
    assert row.diagnosis == UNEXPLAINED


# ---------------------------------------------------------------- W @ dZ for W.T @ dZ


def test_an_input_gradient_through_w_instead_of_w_t_is_transposed_access(rng):
    w, up = rng.standard_normal((4, 4)), rng.standard_normal((8, 4))
    assert transposed_access(up @ w, up @ w.T, up, w, TOL) is True
    assert transposed_access(up @ w.T, up @ w, up, w, TOL) is False


def test_a_product_off_by_a_little_is_no_transposed_access(rng):
    w, up = rng.standard_normal((4, 4)), rng.standard_normal((8, 4))
    assert transposed_access(up @ w + 1e-4, up @ w.T, up, w, TOL) is None
    assert transposed_access(up @ w, up @ w.T, up, rng.standard_normal((4, 3)), TOL) is None


# ---------------------------------------------------------------- book style, end to end


class ReluInvertedMask(Relu):
    """The book's Relu with its backward mask inverted."""

    def backward(self, dout):
        dout = dout.copy()
        dout[~self.mask] = 0  # blocks where the forward passed
        return dout


class SigmoidWithoutDout(Sigmoid):
    """The book's Sigmoid whose backward drops the upstream gradient."""

    def backward(self, dout):
        return (1.0 - self.out) * self.out


class AffineWeightDecay(Affine):
    """The book's Affine adding an L2 term to dW that the loss does not have."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.dW += 0.01 * self.W  # an L2 term the loss does not have
        return dx


class AffineDoutW(Affine):
    """The book's Affine returning ``dout @ W`` for the input gradient (W.T belongs)."""

    def backward(self, dout):
        super().backward(dout)
        return np.dot(dout, self.W)  # W where W.T belongs


class SoftmaxWithLossMeanOverAll(SoftmaxWithLoss):
    """The book's loss layer dividing by N * C (one-hot labels) where N belongs."""

    def backward(self, dout=1):
        return (self.y - self.t) / self.t.size  # N * C where N belongs


def _book_network(hidden=Relu, affine2=Affine, loss=SoftmaxWithLoss, sizes=(4, 5, 3)):
    """(ours' layers, the loss layer, the torch twin, x, one-hot t) in the book's style."""
    rng = np.random.default_rng(0)
    n_in, n_hidden, n_out = sizes
    layers = OrderedDict()
    layers["Affine1"] = Affine(0.5 * rng.standard_normal((n_in, n_hidden)), np.full(n_hidden, 0.1))
    layers["Act1"] = hidden()
    layers["Affine2"] = affine2(
        rng.standard_normal((n_hidden, n_out)) / np.sqrt(n_hidden), np.full(n_out, -0.1)
    )
    wrapped = [
        (name, gp.wrap(layer, params=["W", "b"], grads=["dW", "db"]) if isinstance(layer, Affine)
         else gp.wrap(layer, params=None, grads=None))
        for name, layer in layers.items()
    ]  # fmt: skip
    act = nn.ReLU() if issubclass(hidden, Relu) else nn.Sigmoid()
    ref = nn.Sequential(OrderedDict(Affine1=nn.Linear(n_in, n_hidden), Act1=act,
                                    Affine2=nn.Linear(n_hidden, n_out)))  # fmt: skip
    x = rng.standard_normal((8, n_in))
    t = np.eye(n_out)[rng.integers(0, n_out, size=8)]
    ours_loss = gp.wrap(loss(), params=None, grads=None)
    return wrapped, ours_loss, ref, x, t


def _first(report: gp.Report):
    assert report.root_causes, report.summary()
    return report.root_causes[0]


def _book(**kwargs):
    layers, loss, ref, x, t = _book_network(**kwargs)
    return gp.compare(layers, ref, x, t, ours_loss=loss, reference_loss=nn.CrossEntropyLoss())


def test_the_correct_book_network_is_at_parity():
    assert _book().ok
    assert _book(hidden=Sigmoid).ok


def test_book_inverted_relu_mask_is_mask_inverted():
    first = _first(_book(hidden=ReluInvertedMask))
    assert (first.layer, first.quantity, first.diagnosis) == ("Act1", "grad_input", MASK_INVERTED)


def test_book_sigmoid_without_dout_is_upstream_ignored():
    first = _first(_book(hidden=SigmoidWithoutDout))
    assert (first.layer, first.quantity, first.diagnosis) == (
        "Act1", "grad_input", UPSTREAM_IGNORED)  # fmt: skip


def test_book_loss_averaged_over_all_elements_is_reduction_count():
    first = _first(_book(loss=SoftmaxWithLossMeanOverAll))
    assert (first.layer, first.quantity, first.diagnosis) == ("loss", "grad_input", REDUCTION_COUNT)
    assert (first.detail["count_of"], first.detail["count"]) == ("features", 3)


def test_book_affine_with_an_l2_term_in_dw_is_weight_decay():
    first = _first(_book(affine2=AffineWeightDecay))
    assert (first.layer, first.quantity, first.diagnosis) == ("Affine2", "grad:W", WEIGHT_DECAY)
    assert first.detail["c"] == pytest.approx(0.01)
    assert "remove the L2 term 0.01 * W" in first.fix


@pytest.mark.parametrize("width", [5, 300], ids=["probed", "too-large-for-the-jacobian"])
def test_book_dout_times_w_on_a_square_weight_is_transposed_access(width):
    report = _book(affine2=AffineDoutW, sizes=(4, width, width))
    first = _first(report)
    assert (first.layer, first.quantity, first.diagnosis) == ("Affine2", "grad_input", TRANSPOSED)
    assert first.detail["access"] == "W for W.T"
    assert ("note" in first.detail["jacobian"]) == (width == 300)  # the probe was skipped


# ---------------------------------------------------------------- course style, end to end


def two_layer_loss(params, X, y, reg=0.0, penalty_in_loss=True):
    """(loss, grads) of affine - relu - affine - softmax; L2 ``reg`` on W1 and W2 in the
    gradient, and in the loss unless ``penalty_in_loss`` is False (the bug)."""
    h, cache1 = affine_forward(X, params["W1"], params["b1"])
    a, cache_relu = relu_forward(h)
    scores, cache2 = affine_forward(a, params["W2"], params["b2"])
    loss, dscores = softmax_loss(scores, y)
    if penalty_in_loss:
        loss += 0.5 * reg * (np.sum(params["W1"] ** 2) + np.sum(params["W2"] ** 2))
    da, dW2, db2 = affine_backward(dscores, cache2)
    _, dW1, db1 = affine_backward(relu_backward(da, cache_relu), cache1)
    grads = {"W1": dW1 + reg * params["W1"], "b1": db1, "W2": dW2 + reg * params["W2"], "b2": db2}
    return loss, grads


def _course_setup():
    rng = np.random.default_rng(3)
    params = {"W1": 0.5 * rng.standard_normal((4, 6)), "b1": np.full(6, 0.1),
              "W2": 0.5 * rng.standard_normal((6, 3)), "b2": np.zeros(3)}  # fmt: skip
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, size=5)
    ref = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    return params, x, y, ref


def test_course_penalty_in_the_gradient_but_not_the_loss_is_weight_decay():
    params, x, y, ref = _course_setup()

    def grads(x_in, y_in):
        return two_layer_loss(params, x_in, y_in, reg=0.05, penalty_in_loss=False)[1]

    report = gp.compare_function(grads, params, ref, x, y)
    found = {f.quantity: f for f in report.root_causes}
    assert found["grad:W2"].diagnosis == WEIGHT_DECAY
    assert found["grad:W2"].detail["c"] == pytest.approx(0.05)
    assert "remove the L2 term 0.05 * W2" in found["grad:W2"].fix

    def loss_fn(p, x_in, y_in):
        return two_layer_loss(p, x_in, y_in, reg=0.05, penalty_in_loss=False)[0]

    numeric = gp.compare_function(grads, params, None, x, y, loss_fn=loss_fn)
    assert {f.diagnosis for f in numeric.root_causes} == {WEIGHT_DECAY}


def test_course_gradient_off_by_a_non_proportional_term_is_not_weight_decay():
    params, x, y, ref = _course_setup()

    def grads(x_in, y_in):
        g = two_layer_loss(params, x_in, y_in)[1]
        return {**g, "W2": g["W2"] + 0.05 * params["W2"] ** 2}  # not c times W2

    report = gp.compare_function(grads, params, ref, x, y)
    found = {f.quantity: f for f in report.root_causes}
    assert found["grad:W2"].diagnosis == UNEXPLAINED


def test_course_network_is_at_parity():
    params, x, y, ref = _course_setup()
    report = gp.compare_function(lambda a, b: two_layer_loss(params, a, b)[1], params, ref, x, y)
    assert report.ok, report.summary()
    assert torch.get_default_dtype() == torch.float32  # the run left torch's defaults alone
