"""What each diagnosis carries besides its label: the numbers in ``detail`` (report.json), the
numbers and places its message quotes, and which advice its fix gives for which quantity.

Expected numbers are worked out by hand from small arrays. Messages are checked for what they
must tell the reader (a factor, an index, a value, the code to write), not for their wording.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from gradparity.comparison.diagnose.common import transpose_fix
from gradparity.comparison.diagnose.values import describe_location, diagnose
from gradparity.core.tolerance import Tolerance, tolerance_for

TOL = tolerance_for("float64")
N = 8


def _ref(shape, seed: int = 0) -> np.ndarray:
    """Positive values of order 1, well away from 0: every element carries information."""
    return np.random.default_rng(seed).uniform(0.5, 2.0, size=shape)


def _json(detail: dict) -> dict:
    """``detail`` as report.json stores it: JSON values only, no NaN or infinity."""
    return json.loads(json.dumps(detail, allow_nan=False))


@pytest.fixture(autouse=True)
def _no_runtime_warnings():
    """A diagnosis prints nothing: NumPy's RuntimeWarnings (0/0, inf - inf, overflow) would
    reach the user's terminal, so every test here turns them into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


# ------------------------------------------------------------------ batch_reduction


def test_a_layer_that_sums_where_the_reference_averages():
    ref = _ref((N, 4))
    d = diagnose(N * ref, ref, TOL, quantity="grad:W", batch_size=N)
    assert d.label == "batch_reduction"
    assert _json(d.detail) == {
        "factor": pytest.approx(N, rel=1e-12),
        "batch_size": N,
        "ours_reduction": "sum",
        "ref_reduction": "mean",
    }
    assert d.message.startswith("values are 8 times the reference's, the batch size")
    assert d.message.endswith("ours sums over the batch where the reference averages")
    assert d.fix.startswith("divide by the batch size (8) exactly once")
    assert "(softmax - onehot) / 8" in d.fix
    assert d.fix.endswith("check that divisor too")


def test_a_layer_that_averages_where_the_reference_sums_may_divide_twice():
    ref = _ref((N, 4))
    d = diagnose(ref / N, ref, TOL, quantity="grad:W", batch_size=N)
    assert d.label == "batch_reduction"
    assert (d.detail["ours_reduction"], d.detail["ref_reduction"]) == ("mean", "sum")
    assert d.detail["factor"] == pytest.approx(1 / N, rel=1e-12)
    assert d.message.startswith("values are 1/8 of the reference's (factor 0.125)")
    assert d.message.endswith(
        "ours averages over the batch where the reference sums, or divides by the batch size twice"
    )
    assert d.fix.startswith("remove the extra division by the batch size (8)")
    assert "the 1/8 of a mean loss belongs in dL/dlogits only" in d.fix


def test_a_summed_loss_gets_the_loss_advice():
    d = diagnose(np.array(N * 2.5), np.array(2.5), TOL, quantity="loss", batch_size=N)
    assert d.label == "batch_reduction"
    assert d.fix == "average the per-example losses over the batch instead of summing them"
    assert d.message.endswith("where the reference averages")


def test_an_averaged_loss_against_a_summed_one_gets_the_loss_advice():
    """A loss has no second division to suspect: no "divides twice" clause."""
    d = diagnose(np.array(2.5 / N), np.array(2.5), TOL, quantity="loss", batch_size=N)
    assert d.label == "batch_reduction"
    assert d.fix == "sum the per-example losses over the batch, as the reference does"
    assert d.message.endswith("ours averages over the batch where the reference sums")


def test_batch_reduction_with_a_batch_of_two():
    ref = _ref((2, 3))
    d = diagnose(2 * ref, ref, TOL, quantity="grad_input", batch_size=2)
    assert d.label == "batch_reduction"
    assert d.detail["batch_size"] == 2


def test_the_batch_factor_is_matched_relative_to_its_size():
    """A fitted factor counts as N within max(1e-6, 10 rtol) of N, relative: 4e-6 off 8 is in."""
    ref = _ref((N, 4))
    d = diagnose(N * (1 + 5e-7) * ref, ref, TOL, quantity="grad:W", batch_size=N)
    assert d.label == "batch_reduction"


def test_factor_closeness_is_ten_rtol_when_that_is_wider_than_one_in_a_million():
    loose = Tolerance(rtol=1e-6, atol=1e-12, dtype="float64")
    ref = _ref((N, 4))
    within = diagnose(N * (1 + 0.95e-5) * ref, ref, loose, quantity="grad:W", batch_size=N)
    beyond = diagnose(N * (1 + 1.05e-5) * ref, ref, loose, quantity="grad:W", batch_size=N)
    assert within.label == "batch_reduction"
    assert beyond.label == "scaled"


def test_a_factor_one_in_a_million_from_one_is_neither_scaled_nor_a_batch_reduction():
    """Beyond the tolerance, yet as good as 1 for a factor: the statistics say more."""
    ref = _ref((1, 5))
    for factor in (1 + 5e-7, -(1 + 5e-7)):
        d = diagnose(factor * ref, ref, TOL, quantity="grad_input", batch_size=1)
        assert d.label == "unexplained", factor


# ------------------------------------------------------------------ scaled


def test_scaled_detail_has_the_factor_and_what_it_leaves_unexplained():
    ref = _ref((N, 4))
    ours = 3 * ref
    ours[2, 1] += 2e-7  # within the tolerance of 3 * ref, so still a constant factor
    d = diagnose(ours, ref, TOL, quantity="grad:W")
    assert d.label == "scaled"
    assert set(d.detail) == {"factor", "residual"}
    factor = d.detail["factor"]
    assert factor == pytest.approx(3.0, rel=1e-8)
    # residual: |ours - factor * ref| relative to |ours|, the fit's leftover
    expected = np.linalg.norm(ours - factor * ref) / np.linalg.norm(ours)
    assert d.detail["residual"] == pytest.approx(expected, rel=1e-6)
    assert 0 < d.detail["residual"] < 1e-7
    assert d.message == "values are 3 times the reference's"
    assert d.fix.startswith("find the extra constant factor of 3 in the formula")
    assert d.fix.endswith("or a normalisation applied twice")


@pytest.mark.parametrize("quantity", ["param:W", "state:W.exp_avg"])
def test_a_scaled_update_or_optimiser_state_points_at_the_optimiser(quantity):
    ref = _ref((4, 3))
    d = diagnose(3 * ref, ref, TOL, quantity=quantity)
    assert d.label == "scaled"
    assert d.fix.startswith("find the extra factor of 3: check the learning rate")
    assert d.fix.endswith("the momentum/beta coefficients and the bias correction")


@pytest.mark.parametrize(
    ("factor", "start"),
    [
        (2.0, "remove the extra factor of 2: d(0.5 * x**2)/dx is x, not 2x"),
        (-2.0, "remove the extra factor of 2: d(0.5 * x**2)/dx is x, not 2x"),
        (0.5, "a factor of 2 is missing: d(x**2)/dx is 2x"),
        (-0.5, "a factor of 2 is missing: d(x**2)/dx is 2x"),
    ],
)
def test_a_factor_of_two_names_the_derivative_of_a_square(factor, start):
    ref = _ref((N, 3))
    d = diagnose(factor * ref, ref, TOL, quantity="grad_input")
    assert d.label == "scaled"
    assert d.fix.startswith(start)
    assert d.fix.endswith("; the sign is flipped as well") == (factor < 0)


def test_a_positive_factor_below_one_says_nothing_of_the_sign():
    ref = _ref((N, 3))
    d = diagnose(0.3 * ref, ref, TOL, quantity="grad_input")
    assert d.label == "scaled"
    assert "sign" not in d.fix


def test_an_all_zero_reference_fits_no_factor():
    d = diagnose(np.ones((N, 3)), np.zeros((N, 3)), TOL, quantity="grad:W", batch_size=N)
    assert d.label == "unexplained"
    assert "approx_factor" not in d.detail
    assert d.detail["max_rel"] is None  # infinite: ours is nonzero where the reference is 0
    assert d.detail["rel_norm"] is None
    assert d.detail["cosine"] == 0.0
    assert "unmasked" not in d.detail  # a reference that is 0 everywhere shows no mask


# ------------------------------------------------------------------ sign_flipped, transposed


def test_sign_flipped_quotes_both_values_at_the_largest_reference_element():
    ref = np.array([[0.5, -1.0], [4.0, 2.0]])
    d = diagnose(-ref, ref, TOL, quantity="grad:W")
    assert d.label == "sign_flipped"
    assert d.detail == {"factor": -1.0}
    assert "(ours -4, reference 4 at (1, 0))" in d.message


def test_transposed_square_detail_and_advice_by_layout():
    ref = _ref((4, 4))
    for layout, code in (
        ("", "x.T @ grad_out, not grad_out.T @ x"),
        ("identity", "grad_out.T @ x, not x.T @ grad_out"),
        ("columns", "delta @ a.T, not a @ delta.T"),
    ):
        d = diagnose(ref.T, ref, TOL, quantity="grad:W", layout=layout)
        assert d.label == "transposed"
        assert d.detail == {"ours_shape": [4, 4], "ref_shape": [4, 4]}
        assert d.fix.startswith("transpose it") and code in d.fix, layout


@pytest.mark.parametrize(
    ("quantity", "code"),
    [
        ("grad_input", "dL/dx has the input's shape, e.g. grad_out @ W.T"),
        ("output", "check the order of the matrix product (x @ W for W stored (in, out))"),
        ("loss", "check the order of the matrix product (x @ W for W stored (in, out))"),
    ],
)
def test_transposed_advice_for_other_quantities(quantity, code):
    ref = _ref((3, 3))
    d = diagnose(ref.T, ref, TOL, quantity=quantity)
    assert d.label == "transposed"
    assert d.fix.startswith(f"transpose it: {code}")


def test_transpose_fix_by_kind_and_layout():
    assert "x.T @ delta for W stored (in, out)" in transpose_fix("grad", "unknown")
    assert "delta @ a.T, not a @ delta.T" in transpose_fix("grad", "columns")
    assert transpose_fix("grad", "transpose") == transpose_fix("grad")
    assert "grad_out @ W.T" in transpose_fix("grad_input", "identity")
    assert transpose_fix("param").startswith("transpose it: check the order of the matrix")
    assert transpose_fix("output", "columns") == transpose_fix("other")


# ------------------------------------------------------------------ missing_local_derivative


@pytest.mark.parametrize(
    ("layout", "code"),
    [
        ("", "grad_out * s * (1 - s) for a sigmoid"),
        ("identity", "dL/dx = grad_out @ W for a weight stored (out, in)"),
        ("transpose", "dL/dx = grad_out @ W.T for a weight stored (in, out)"),
        ("columns", "grad_out * (x > 0) for a ReLU"),  # no weight advice for this layout
    ],
)
def test_missing_local_derivative_detail_and_advice_by_layout(layout, code):
    upstream = np.array([1.0, 2.0, -2.0, 4.0])  # norm 5
    ref = upstream * np.array([2.0, 0.5, 1.0, 1.0])  # ref - upstream = [1, -1, 0, 0]
    d = diagnose(upstream, ref, TOL, quantity="grad_input", upstream=upstream, layout=layout)
    assert d.label == "missing_local_derivative"
    assert d.detail == {"ref_rel_diff_to_upstream": pytest.approx(np.sqrt(2) / 5, rel=1e-12)}
    assert code in d.fix
    assert "(the reference differs from the upstream gradient by 0.2828 relative)" in d.message


def test_upstream_gradient_given_as_integers():
    upstream = np.array([[1, -2], [3, 1]])
    ref = upstream * np.array([[0.5, 0.25], [0.2, 0.1]])
    d = diagnose(upstream.astype(float), ref, TOL, quantity="grad_input", upstream=upstream)
    assert d.label == "missing_local_derivative"


# ------------------------------------------------------------------ zero, nonfinite


def test_zero_detail_and_message():
    ref = np.array([[1.0, -4.0], [2.0, 0.5]])
    d = diagnose(np.zeros((2, 2)), ref, TOL, quantity="grad:W")
    assert d.label == "zero"
    assert d.detail == {"numel": 4, "ref_max_abs": 4.0, "ours_max_abs": 0.0}
    assert d.message == ("gradient of W is all zeros; the reference's largest magnitude is 4")


def test_zero_up_to_round_off_names_the_bound_not_the_round_off():
    ref = np.array([1.0, -4.0])
    tiny = 1e-10 * 4.0  # exactly the round-off bound for a reference of scale 4
    d = diagnose(np.array([tiny, 0.0]), ref, TOL, quantity="output")
    assert d.label == "zero"
    assert d.detail["ours_max_abs_below"] == tiny and "ours_max_abs" not in d.detail
    assert "output is zero up to round-off (below 4e-10)" in d.message
    other_machine = diagnose(np.array([tiny / 3, 0.0]), ref, TOL, quantity="output")
    assert (other_machine.detail, other_machine.message) == (d.detail, d.message)
    larger = diagnose(np.array([2 * tiny, 0.0]), ref, TOL, quantity="output")
    assert larger.label != "zero"


def test_zero_against_a_reference_of_ones():
    d = diagnose(np.zeros(3), np.ones(3), TOL, quantity="output")
    assert d.label == "zero"


def test_finite_values_against_an_infinite_reference_are_not_zero():
    for bad in (np.inf, np.nan):
        ref = np.array([bad, 1.0, 2.0, 2.0])
        d = diagnose(np.array([5.0, 1.0, 2.0, 4.0]), ref, TOL, quantity="output")
        assert d.label == "unexplained", bad
        assert d.detail["rel_norm"] == pytest.approx(2 / 3)  # over the entries finite on both
        assert d.detail["location"]["indices"] == [[0], [3]]


def test_a_shared_infinity_does_not_make_ours_zero():
    """ours [inf, 0] against [inf, 5]: ours is not zero, it is infinite where the reference is."""
    d = diagnose(np.array([np.inf, 0.0]), np.array([np.inf, 5.0]), TOL, quantity="output")
    assert d.label == "unexplained"
    assert d.detail["location"]["indices"] == [[1]]


def test_nonfinite_detail_and_the_first_bad_element():
    ref = np.array([[1.0, 2.0, 3.0], [4.0, 0.5, 6.0]])
    ours = ref.copy()
    ours[1, 1], ours[1, 2], ours[0, 2] = np.nan, np.inf, -np.inf
    d = diagnose(ours, ref, TOL, quantity="grad_input")
    assert d.label == "nonfinite"
    assert d.detail == {
        "nan": 1,
        "inf": 2,
        "numel": 6,
        "first_index": [0, 2],
        "ref_at_first": 3.0,
    }
    assert d.message.startswith("input gradient has 1 NaN and 2 infinite values")
    assert d.message.endswith("(first at (0, 2): the reference is 3 there)")
    assert d.fix.startswith("find the exp, log, division or sqrt that overflows")
    assert "use a stable form: subtract the row max before exp" in d.fix
    assert d.fix.endswith("add a small eps before dividing")


def test_nonfinite_scalar_names_no_index():
    d = diagnose(np.array(np.nan), np.array(1.5), TOL, quantity="loss")
    assert d.label == "nonfinite"
    assert d.detail["first_index"] == []
    assert d.message.endswith("(the reference is 1.5 there)")


# ------------------------------------------------------------------ unexplained: statistics


def test_unexplained_statistics_of_a_known_pair():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    ours = np.array([1.0, -2.0, 3.5, -4.0])  # 3 elements differ, 2 of them in sign
    d = diagnose(ours, ref, TOL, quantity="output")
    assert d.label == "unexplained"
    detail = _json(d.detail)
    assert detail["max_abs"] == pytest.approx(8.0)
    assert detail["max_rel"] == pytest.approx(2.0)
    assert detail["rel_norm"] == pytest.approx(np.sqrt(16 + 0.25 + 64) / np.sqrt(30))
    assert detail["cosine"] == pytest.approx((1 - 4 + 10.5 - 16) / np.sqrt(33.25 * 30))
    assert (detail["mismatch_count"], detail["numel"]) == (3, 4)
    assert detail["mismatch_frac"] == pytest.approx(0.75)
    assert detail["worst_index"] == [3]
    assert (detail["ours_at_worst"], detail["ref_at_worst"]) == (-4.0, 4.0)
    assert detail["sign_differs_frac"] == pytest.approx(2 / 3)
    assert detail["location"] == {"count": 3, "numel": 4, "indices": [[1], [2], [3]],
                                  "truncated": False}  # fmt: skip
    assert "approx_factor" not in detail
    assert d.message.startswith(
        "values differ in 3 of 4 elements (75.0%), only at (1,), (2,), (3,)"
    )
    assert "; max abs error 8 at (3,): ours -4, reference 4" in d.message
    assert d.message.endswith("; 67% of the differing elements have the opposite sign")
    assert d.fix.startswith("compare the formula for the output with the reference's")
    assert d.fix.endswith("; the error is confined to (1,), (2,), (3,)")


def test_half_of_the_differences_in_sign_is_reported():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    d = diagnose(np.array([1.0, 2.0, 3.5, -4.0]), ref, TOL, quantity="output")
    assert d.detail["sign_differs_frac"] == 0.5
    assert d.message.endswith("; 50% of the differing elements have the opposite sign")


def test_every_differing_element_of_opposite_sign():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    d = diagnose(np.array([1.0, -2.0, 3.0, -1.0]), ref, TOL, quantity="output")
    assert d.detail["sign_differs_frac"] == 1.0
    assert d.message.endswith("; 100% of the differing elements have the opposite sign")


def test_differences_against_exact_zeros_make_no_sign_claim():
    ref = np.array([0.0, 2.0, 3.0, 4.0])
    d = diagnose(np.array([-1.0, 2.0, 3.0, 4.5]), ref, TOL, quantity="output")
    assert d.detail["sign_differs_frac"] == 0.0
    assert "opposite sign" not in d.message


def test_a_scalar_pair_names_no_index():
    d = diagnose(np.array(3.0), np.array(2.0), TOL, quantity="loss")
    assert d.label == "unexplained"
    assert d.detail["worst_index"] == []
    assert "; max abs error 1: ours 3, reference 2" in d.message


def test_statistics_skip_entries_non_finite_on_both_sides():
    """A shared infinity matches; the norms are taken over the entries finite on both sides."""
    ref = np.array([np.inf, 1.0, 2.0, 2.0])
    d = diagnose(np.array([np.inf, 1.0, 2.0, 4.0]), ref, TOL, quantity="output")
    assert d.label == "unexplained"
    assert d.detail["rel_norm"] == pytest.approx(2 / 3)
    assert d.detail["location"]["indices"] == [[3]]
    assert d.detail["mismatch_count"] == 1


def test_norms_of_all_zero_finite_parts_are_zero():
    d = diagnose(np.array([np.nan, 0.0]), np.array([np.inf, 0.0]), TOL, quantity="output")
    assert d.label == "unexplained"
    assert d.detail["rel_norm"] == 0.0
    assert d.detail["max_abs"] is None  # infinite, stored as None
    assert d.detail["location"]["indices"] == [[0]]


@pytest.mark.parametrize(
    ("ours", "ref", "where"),
    [
        # opposite infinities differ; equal ones match
        ([-np.inf, 1.0, 2.0, 3.0], [np.inf, 1.0, 5.0, -3.0], [[0], [2], [3]]),
        ([np.inf, 1.0, 2.0, 3.0], [np.inf, 1.0, 5.0, -3.0], [[2], [3]]),
        # NaN never matches, not even NaN
        ([np.nan, 1.0, 2.0, 3.0], [np.nan, 1.0, 5.0, -3.0], [[0], [2], [3]]),
    ],
)
def test_location_counts_exactly_what_the_comparison_counts(ours, ref, where):
    d = diagnose(np.array(ours), np.array(ref), TOL, quantity="output")
    assert d.label == "unexplained"
    assert d.detail["location"]["indices"] == where
    assert d.detail["location"]["count"] == d.detail["mismatch_count"] == len(where)


def test_location_uses_the_tolerance_of_the_finite_reference():
    """Non-finite reference entries count as 0 for the tolerance's scale, as in the comparison:
    a 2e-8 error against a reference of scale 0.04 is a mismatch."""
    ref = np.array([np.inf, 0.01, 0.02, -0.03, 0.04])
    ours = np.array([np.inf, 0.01 + 2e-8, 0.05, 0.03, 0.04 + 1e-10])  # the last one is within
    d = diagnose(ours, ref, TOL, quantity="output")
    assert d.detail["location"]["indices"] == [[1], [2], [3]]
    assert d.detail["mismatch_count"] == 3


def test_location_with_no_absolute_tolerance_leaves_exact_zeros_alone():
    tol = Tolerance(rtol=1e-7, atol=0.0, dtype="float64")
    d = diagnose(np.array([0.0, 0.0, 1.0]), np.zeros(3), tol, quantity="output")
    assert d.label == "unexplained"
    assert d.detail["location"]["indices"] == [[2]]
    assert d.detail["worst_index"] == [2]


# ------------------------------------------------------------------ unexplained: evidence


def test_a_flipped_two_dimensional_kernel_is_named():
    ref = _ref((3, 3))
    d = diagnose(ref[::-1, ::-1].copy(), ref, TOL, quantity="grad:W")
    assert d.label == "unexplained"
    assert d.detail["flipped_last_two_axes"] is True
    assert d.message.startswith("values differ in 8 of 9 elements (88.9%); max abs error ")
    assert d.message.endswith("; it equals the reference with its last two axes reversed "
                              "(a flipped kernel)")  # fmt: skip
    assert d.fix.startswith("do not flip the kernel: torch's convolution is a cross-correlation")
    assert d.fix.endswith("so dW[f, c] = sum over positions of (input window * upstream gradient)")


def test_a_one_dimensional_reversal_is_no_flipped_kernel():
    ref = _ref(6)
    d = diagnose(ref[::-1].copy(), ref, TOL, quantity="output")
    assert "flipped_last_two_axes" not in d.detail


def test_a_missing_mask_is_named():
    ref = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]])
    ours = np.array([[0.7, 1.5, -0.2], [2.0, 0.3, -1.0]])  # nonzero exactly where ref is 0
    d = diagnose(ours, ref, TOL, quantity="grad_input")
    assert d.label == "mask_missing"
    assert d.detail["unmasked"] == 3
    assert d.message.startswith("values differ in 3 of 6 elements (50.0%), only at ")
    assert "; all 3 differing elements are where the reference is exactly 0" in d.message
    assert d.fix.startswith("multiply by the mask the reference applies, e.g. (z > 0) for a ReLU")
    assert d.fix.endswith("; the error is confined to (0, 0), (0, 2), (1, 1)")


def test_a_near_factor_is_named_with_its_value():
    ref = _ref((N, 5))
    noise = 1 + 1e-4 * np.random.default_rng(1).standard_normal(ref.shape)
    d = diagnose(1.05 * ref * noise, ref, TOL, quantity="grad:W")
    assert d.label == "unexplained"
    assert d.detail["approx_factor"] == pytest.approx(1.05, rel=1e-3)
    assert "; close to 1.05 times the reference's, but not exactly" in d.message
    assert d.fix.startswith("compare the formula for the gradient of W with the reference's")
    assert "; look for a factor of about 1.05 that is not quite constant" in d.fix
    assert d.fix.endswith("(an epsilon, or a correction such as Adam's 1 - beta**t)")


@pytest.mark.parametrize("factor", [1.01, 0.99])
def test_a_near_factor_within_two_percent_of_one_is_not_named(factor):
    ref = _ref((N, 5))
    noise = 1 + 1e-4 * np.random.default_rng(1).standard_normal(ref.shape)
    d = diagnose(factor * ref * noise, ref, TOL, quantity="grad:W")
    assert d.label == "unexplained"
    assert "approx_factor" not in d.detail


def test_unrelated_values_get_no_near_factor():
    ref = _ref((N, 5))
    d = diagnose(0.1 * _ref((N, 5), seed=9), ref, TOL, quantity="grad:W")
    assert d.label == "unexplained"
    assert d.message.startswith("values differ in 40 of 40 elements (100.0%); max abs error ")
    assert d.detail["cosine"] < 0.999
    assert "approx_factor" not in d.detail


# ------------------------------------------------------------------ where the error sits


def _unexplained_at(mask: np.ndarray) -> str:
    """The message of a diagnosis whose mismatches are exactly ``mask``."""
    ref = _ref(mask.shape, seed=4)
    ours = np.where(mask, -2.0 * ref - 1.0, ref)
    d = diagnose(ours, ref, TOL, quantity="grad:W")
    assert d.label == "unexplained" and d.detail["location"]["count"] == mask.sum()
    return d.message


def test_one_differing_element_is_named():
    mask = np.zeros((3, 4), dtype=bool)
    mask[1, 2] = True
    assert ", only at (1, 2);" in _unexplained_at(mask)


def test_four_scattered_elements_in_one_dimension_are_not_listed():
    mask = np.zeros(10, dtype=bool)
    mask[[1, 3, 5, 7]] = True
    message = _unexplained_at(mask)
    assert "only at" not in message and "all in" not in message


def test_mismatches_in_some_rows_name_the_rows():
    mask = np.zeros((4, 5), dtype=bool)
    mask[[1, 3]] = True
    assert ", all in rows [1, 3];" in _unexplained_at(mask)


def test_mismatches_in_every_row_but_some_columns_name_the_columns():
    mask = np.zeros((2, 6), dtype=bool)
    mask[:, [1, 4]] = True
    assert ", all in columns [1, 4];" in _unexplained_at(mask)


def test_twenty_rows_can_be_named_but_not_more():
    mask = np.zeros((25, 2), dtype=bool)
    mask[:20] = True
    assert ", all in rows [0, 1, 2," in _unexplained_at(mask)
    mask[:21] = True
    assert "all in rows" not in _unexplained_at(mask)


def test_mismatches_on_the_diagonal_point_at_the_delta_terms():
    ref = _ref((4, 4), seed=4)
    ours = ref + 3 * np.eye(4)
    d = diagnose(ours, ref, TOL, quantity="grad_input")
    assert ", all on the diagonal;" in d.message
    assert d.fix.endswith(
        "the diagonal: check the terms that apply only when i == j (e.g. the delta_ij of the "
        "softmax Jacobian)"
    )


def test_mismatches_off_the_diagonal_point_at_the_cross_terms():
    ref = _ref((4, 4), seed=4)
    ours = ref + 3 * (1 - np.eye(4))
    d = diagnose(ours, ref, TOL, quantity="grad_input")
    assert ", all off the diagonal;" in d.message
    assert d.fix.endswith("the off-diagonal elements: check the i != j cross terms")


def test_describe_location_lists_whole_rows_and_columns():
    m = np.zeros((3, 4), dtype=bool)
    m[1] = True
    m[:, 2] = True
    loc = describe_location(m)
    assert (loc["count"], loc["numel"]) == (6, 12)
    assert (loc["rows"], loc["cols"]) == ([1], [2])
    assert (loc["rows_hit"], loc["n_rows_hit"]) == ([0, 1, 2], 3)
    assert (loc["cols_hit"], loc["n_cols_hit"]) == ([0, 1, 2, 3], 4)
    assert "diagonal_only" not in loc


def test_describe_location_truncates_after_twenty():
    exactly = describe_location(np.ones(20, dtype=bool))
    assert (exactly["truncated"], len(exactly["indices"])) == (False, 20)
    more = describe_location(np.ones(21, dtype=bool))
    assert (more["truncated"], len(more["indices"])) == (True, 20)


def test_describe_location_of_an_empty_square_mask_claims_no_diagonal():
    loc = describe_location(np.zeros((3, 3), dtype=bool))
    assert loc["count"] == 0
    assert (loc["diagonal_only"], loc["off_diagonal_only"]) == (False, False)


def test_describe_location_reads_any_nonzero_value_as_true():
    loc = describe_location(np.array([0, 3, 0, 5]))
    assert (loc["count"], loc["indices"]) == (2, [[1], [3]])


# ------------------------------------------------------------------ shapes: not_reduced


def test_not_reduced_detail_and_the_code_to_write():
    per_example = np.random.default_rng(5).standard_normal((N, 3))
    d = diagnose(per_example, per_example.sum(axis=0), TOL, quantity="grad:b")
    assert d.label == "not_reduced"
    assert d.detail == {
        "ours_shape": [N, 3],
        "ref_shape": [3],
        "axis": 0,
        "axes": [0],
        "batch_size": N,
        "reduction": "sum",
    }
    assert d.message.endswith("; summed over the batch axis (axis 0) it equals the reference")
    assert d.fix == "sum it over the batch axis (axis 0): grad_out.sum(axis=0)"


def test_not_reduced_with_examples_as_columns_sums_delta_over_axis_one():
    per_example = np.random.default_rng(5).standard_normal((3, N))
    d = diagnose(per_example, per_example.sum(axis=1), TOL, quantity="grad:b", layout="columns")
    assert d.label == "not_reduced"
    assert d.fix == "sum it over the batch axis (axis 1): delta.sum(axis=1)"


def test_not_reduced_against_a_kept_axis_keeps_it():
    per_example = np.random.default_rng(5).standard_normal((N, 3))
    d = diagnose(per_example, per_example.sum(axis=0, keepdims=True), TOL, quantity="grad:b")
    assert d.fix.endswith("grad_out.sum(axis=0, keepdims=True)")


@pytest.mark.parametrize(("how", "verb"), [("sum", "summed"), ("mean", "averaged")])
def test_an_output_not_reduced_is_reduced_as_it(how, verb):
    per_example = np.random.default_rng(5).standard_normal((N, 3))
    reduced = getattr(per_example, how)(axis=0)
    d = diagnose(per_example, reduced, TOL, quantity="output")
    assert d.label == "not_reduced"
    assert d.message.endswith(f"; {verb} over the batch axis (axis 0) it equals the reference")
    other = "average" if how == "mean" else "sum"
    assert d.fix == f"{other} it over the batch axis (axis 0): it.{how}(axis=0)"


def test_not_reduced_over_several_axes_names_them():
    per_position = np.random.default_rng(6).standard_normal((4, 3, 5, 5))
    d = diagnose(per_position, per_position.sum(axis=(0, 2, 3)), TOL, quantity="grad:b")
    assert d.message.endswith("; summed over axes (0, 2, 3) it equals the reference")
    assert d.fix == "sum it over axes (0, 2, 3): grad_out.sum(axis=(0, 2, 3))"


def test_per_example_losses_not_averaged_to_a_scalar():
    losses = _ref(N)
    d = diagnose(losses, np.array(losses.mean()), TOL, quantity="loss")
    assert d.label == "not_reduced"
    assert (d.detail["axes"], d.detail["reduction"]) == ([0], "mean")


def test_the_batch_axis_with_the_one_after_it_is_tried():
    per_example = np.random.default_rng(7).standard_normal((4, 3, 5))
    d = diagnose(per_example, per_example.sum(axis=(0, 1)), TOL, quantity="grad:b")
    assert d.label == "not_reduced"
    assert d.detail["axes"] == [0, 1]


@pytest.mark.parametrize(("ndim", "found"), [(6, True), (7, False)])
def test_axis_subsets_are_tried_up_to_rank_six(ndim, found):
    """Above rank 6 the subsets of axes are too many: only single axes are tried."""
    shape = (2, 2) + (1,) * (ndim - 3) + (3,)
    big = np.random.default_rng(8).standard_normal(shape)
    d = diagnose(big, big.sum(axis=(0, 1)).reshape(3), TOL, quantity="grad:b")
    assert (d.label == "not_reduced") == found
    if found:
        assert d.detail["axes"] == [0, 1]
    else:
        assert d.label == "shape_mismatch" and d.detail["layout"] == "other"


def test_a_rank_seven_gradient_whose_batch_sum_differs_is_a_shape_mismatch():
    big = np.random.default_rng(8).standard_normal((2, 1, 1, 1, 1, 1, 3))
    d = diagnose(big, big.sum(axis=0).reshape(3) + 1.0, TOL, quantity="grad:b")
    assert d.label == "shape_mismatch"
    assert d.detail["layout"] == "other"


# ------------------------------------------------------------------ shapes: shape_mismatch


def test_a_flat_gradient_that_reshapes_to_the_reference():
    ref = _ref((2, 3))
    d = diagnose(ref.ravel(), ref, TOL, quantity="grad:W", param_shape=(2, 3))
    assert d.label == "shape_mismatch"
    assert d.detail == {
        "ours_shape": [6],
        "ref_shape": [2, 3],
        "layout": "reshape",
        "param_shape": [2, 3],
        "values_match": True,
    }
    assert d.message == (
        "gradient of W has shape (6,), the parameter (2, 3); the values match after reshaping"
    )
    assert d.fix == "reshape it to (2, 3): .reshape((2, 3))"


def test_a_reduced_input_gradient_keeps_the_batch_axis():
    per_example = _ref((N, 3))
    d = diagnose(per_example.sum(axis=0), per_example, TOL, quantity="grad_input")
    assert d.label == "shape_mismatch"
    assert d.detail == {"ours_shape": [3], "ref_shape": [N, 3], "layout": "reduced"}
    assert d.message == (
        "input gradient has shape (3,), the reference (8, 3); the reference reduced over its "
        "batch axis equals ours"
    )
    assert d.fix.startswith("keep the batch axis: the reference has one entry per example")


def test_an_unrelated_shape_gets_the_shape_rule():
    d = diagnose(_ref((2, 5)), _ref(3), TOL, quantity="grad:b")
    assert d.label == "shape_mismatch"
    assert d.detail == {"ours_shape": [2, 5], "ref_shape": [3], "layout": "other"}
    assert d.fix.startswith("give it the shape (3,): a gradient has the shape of what it ")
    assert d.fix.endswith("check which axes the formula keeps and which it sums over")


def test_a_transposed_layout_with_other_values_names_both():
    ref = _ref((2, 3))
    d = diagnose(2 * ref.T, ref, TOL, quantity="grad:W")
    assert d.label == "shape_mismatch"
    assert d.detail["layout"] == "transposed" and d.detail["values_match"] is False
    assert d.detail["after_layout"]["label"] == "scaled"
    assert "; after transposing: values are 2 times the reference's" in d.message
    assert d.fix.startswith("transpose it")


def test_a_singleton_layout_with_other_values_says_how_to_sum_a_gradient():
    ref = _ref(6)
    d = diagnose(-ref.reshape(1, 6), ref, TOL, quantity="grad:b")
    assert d.label == "shape_mismatch"
    assert d.detail["after_layout"]["label"] == "sign_flipped"
    assert "; after reshaping: " in d.message
    assert d.fix.startswith(
        "give it the shape (6,); if it is a sum over the batch, sum over the examples' axis "
        "(axis 1 with examples as columns, axis 0 as rows) and keep the parameter's; "
    )


def test_a_singleton_layout_of_an_output_is_reshaped():
    ref = _ref(6)
    d = diagnose(-ref.reshape(6, 1), ref, TOL, quantity="output")
    assert d.fix.startswith("reshape it to (6,): .reshape((6,)); ")


# ------------------------------------------------------------------ inputs


def test_boolean_and_integer_arrays_are_compared_as_numbers():
    mask = np.array([True, False, True, True])
    d = diagnose(np.array([2.0, 0.0, 2.0, 2.0]), mask, TOL, quantity="output")
    assert d.label == "scaled" and d.detail["factor"] == pytest.approx(2.0)
    d = diagnose(mask, np.array([2.0, 0.0, 2.0, 2.0]), TOL, quantity="output")
    assert d.label == "scaled" and d.detail["factor"] == pytest.approx(0.5)
    d = diagnose(np.array([3, 0, 3]), np.array([1, 0, 1]), TOL, quantity="output")
    assert d.label == "scaled" and d.detail["factor"] == pytest.approx(3.0)
