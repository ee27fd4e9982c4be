"""The tolerance rule and ``metrics.tensor_diff``, tested directly on numbers worked out by hand.

The rule (README, "Tolerance"; ``gradparity.core.tolerance``): an element mismatches when
``|ours - ref| > rtol * |ref| + rtol * max|ref| + atol``. Every expected value below is computed
from that sentence, not copied from a run.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from gradparity.core.metrics import cosine_similarity, first_largest, tensor_diff
from gradparity.core.tolerance import NOISE_FLOOR, Tolerance, tolerance_for

# The documented defaults: README "Tolerance" (float64) and the tolerance module (float32).
# Written out here on purpose: a test that read them from the code would follow a change.
DOCUMENTED = {"float64": (1e-7, 1e-12), "float32": (1e-4, 1e-7)}

# Round numbers, so that the allowed error of each element is easy to work out by hand.
WIDE = Tolerance(rtol=0.1, atol=0.01, dtype="float64")


# ------------------------------------------------------------------ Tolerance.allowed


def test_allowed_error_is_relative_plus_normwise_plus_absolute():
    ref = np.array([1.0, -2.0, 0.0, 0.5])
    # rtol * |r| + rtol * max|r| + atol, with max|r| = 2
    expected = [0.1 + 0.2 + 0.01, 0.2 + 0.2 + 0.01, 0.0 + 0.2 + 0.01, 0.05 + 0.2 + 0.01]
    np.testing.assert_allclose(WIDE.allowed(ref), expected, rtol=1e-15)


def test_allowed_error_keeps_the_reference_shape():
    ref = np.arange(6.0).reshape(2, 3) - 2.5  # max|r| = 2.5
    allowed = WIDE.allowed(ref)
    assert allowed.shape == (2, 3)
    np.testing.assert_allclose(allowed, 0.1 * np.abs(ref) + 0.25 + 0.01, rtol=1e-15)


def test_allowed_error_of_an_all_zero_reference_is_atol():
    np.testing.assert_array_equal(WIDE.allowed(np.zeros(3)), [0.01, 0.01, 0.01])


def test_allowed_error_of_an_empty_reference_is_empty():
    assert WIDE.allowed(np.zeros((0, 4))).shape == (0, 4)


def test_an_element_small_by_cancellation_is_judged_against_the_tensor_scale():
    """The normwise term: an entry near 0 next to entries near 1 may be off by rtol * max|r|."""
    tol = tolerance_for("float64")
    ref = np.array([1.0, 1e-12])
    within = np.array([1.0, 1e-12 + 0.9e-7])  # 0.9e-7 < rtol * (1e-12 + 1) + atol
    beyond = np.array([1.0, 1e-12 + 1.1e-7])
    assert tensor_diff(within, ref, tol).mismatch_count == 0
    assert tensor_diff(beyond, ref, tol).mismatch_count == 1


def test_the_elementwise_term_counts_on_top_of_the_normwise_one():
    ref = np.array([1.0, 1.0])
    # allowed = rtol * 1 + rtol * 1 + atol = 0.21: the elementwise term alone would refuse 0.15
    assert tensor_diff(ref + np.array([0.2, 0.0]), ref, WIDE).mismatch_count == 0
    assert tensor_diff(ref + np.array([0.22, 0.0]), ref, WIDE).mismatch_count == 1


def test_atol_decides_where_the_reference_is_all_zero():
    ref = np.zeros(2)
    assert tensor_diff(np.array([0.009, 0.0]), ref, WIDE).ok
    assert not tensor_diff(np.array([0.011, 0.0]), ref, WIDE).ok


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_default_tolerances_are_the_documented_ones(dtype):
    rtol, atol = DOCUMENTED[dtype]
    tol = tolerance_for(dtype)
    assert (tol.rtol, tol.atol, tol.dtype) == (rtol, atol, dtype)
    floor = {"float64": NOISE_FLOOR, "float32": 0.1}[dtype]
    assert tol.as_dict() == {"rtol": rtol, "atol": atol, "dtype": dtype, "noise_floor": floor}
    assert Tolerance(**tol.as_dict()).floor() == floor


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_difference_just_above_the_documented_tolerance_is_found(dtype):
    """A factor 1 + e differs by e * max|r| at the largest element, where rtol * 2 max|r| (+ atol)
    is allowed: 2.5 rtol is found, 1.5 rtol is not (anywhere: e |r| <= 1.5 rtol max|r|)."""
    rtol, _ = DOCUMENTED[dtype]
    ref = np.random.default_rng(0).uniform(0.5, 2.0, size=(6, 5))
    tol = tolerance_for(dtype)
    above = tensor_diff(ref * (1 + 2.5 * rtol), ref, tol)
    below = tensor_diff(ref * (1 + 1.5 * rtol), ref, tol)
    assert not above.ok
    assert above.worst_index == np.unravel_index(np.argmax(ref), ref.shape)
    assert below.ok


def test_overrides_replace_only_what_is_given():
    tol = tolerance_for("float64", rtol=1e-3)
    assert (tol.rtol, tol.atol) == (1e-3, DOCUMENTED["float64"][1])
    tol = tolerance_for("float32", atol=0.5)
    assert (tol.rtol, tol.atol, tol.dtype) == (DOCUMENTED["float32"][0], 0.5, "float32")
    assert isinstance(tolerance_for("float64", rtol=1, atol=0).rtol, float)


def test_unknown_dtype_is_refused_by_name():
    with pytest.raises(ValueError, match="'float16'"):
        tolerance_for("float16")


# ------------------------------------------------------------------ tensor_diff: statistics


def test_every_statistic_of_a_small_known_pair():
    ref = np.array([[1.0, -2.0], [0.5, 4.0]])
    ours = np.array([[1.0, -2.5], [0.5, 4.2]])
    d = tensor_diff(ours, ref, WIDE)
    # allowed = 0.1 |r| + 0.1 * 4 + 0.01: [0.51, 0.61, 0.46, 0.81]; errors [0, 0.5, 0, 0.2]
    assert d.max_abs == pytest.approx(0.5)
    assert d.max_rel == pytest.approx(0.25)  # 0.5 / 2 beats 0.2 / 4
    assert d.mismatch_count == 0 and d.ok
    assert d.numel == 4 and d.mismatch_frac == 0.0
    assert d.worst_index == (0, 1)  # ratio 0.5 / 0.61 beats 0.2 / 0.81
    assert (d.ours_at_worst, d.ref_at_worst) == (-2.5, -2.0)
    assert d.allowed_at_worst == pytest.approx(0.61)
    expected_cos = np.dot(ours.ravel(), ref.ravel()) / (np.linalg.norm(ours) * np.linalg.norm(ref))
    assert d.cosine == pytest.approx(expected_cos)
    assert 0.99 < d.cosine < 1.0


def test_mismatch_count_and_fraction():
    ref = np.ones(8)
    ours = ref.copy()
    ours[[1, 5, 6]] += 1.0  # allowed 0.21 everywhere
    d = tensor_diff(ours, ref, WIDE)
    assert (d.mismatch_count, d.numel) == (3, 8)
    assert d.mismatch_frac == pytest.approx(3 / 8)
    assert not d.ok


def test_worst_index_is_relative_to_what_is_allowed_there_not_the_largest_error():
    """0.3 off where 0.41 is allowed is worse than 0.35 off where 0.81 is allowed."""
    ref = np.array([0.0, 4.0, 0.1])  # allowed [0.41, 0.81, 0.42]
    ours = ref + np.array([0.3, 0.35, 0.0])
    d = tensor_diff(ours, ref, WIDE)
    assert d.max_abs == pytest.approx(0.35)
    assert d.worst_index == (0,)
    assert d.allowed_at_worst == pytest.approx(0.41)


def test_worst_index_is_a_multi_index_of_python_ints():
    ref = np.ones((2, 3, 4))
    ours = ref.copy()
    ours[1, 2, 0] = 5.0
    d = tensor_diff(ours, ref, WIDE)
    assert d.worst_index == (1, 2, 0)
    assert all(type(i) is int for i in d.worst_index)
    assert type(d.mismatch_count) is int and type(d.numel) is int


def test_max_rel_is_infinite_where_the_reference_is_zero_and_ours_is_not():
    d = tensor_diff(np.array([1.0, 0.5]), np.array([1.0, 0.0]), WIDE)
    assert d.max_rel == math.inf


def test_max_rel_ignores_elements_zero_on_both_sides():
    d = tensor_diff(np.array([0.0, 2.2]), np.array([0.0, 2.0]), WIDE)
    assert d.max_rel == pytest.approx(0.1)


def test_a_pair_of_zeros_has_no_error_at_all():
    d = tensor_diff(np.zeros(3), np.zeros(3), WIDE)
    assert (d.max_abs, d.max_rel, d.cosine, d.mismatch_count) == (0.0, 0.0, 1.0, 0)
    assert d.worst_index == (0,)


def test_a_scalar_pair():
    d = tensor_diff(np.float64(3.0), np.float64(2.0), WIDE)
    assert d.worst_index == ()
    assert (d.numel, d.mismatch_count) == (1, 1)
    assert (d.max_abs, d.ours_at_worst, d.ref_at_worst) == (1.0, 3.0, 2.0)
    assert d.max_rel == pytest.approx(0.5)


def test_an_empty_pair_matches_with_no_worst_element():
    d = tensor_diff(np.zeros((0, 3)), np.zeros((0, 3)), WIDE)
    assert d.ok and d.numel == 0 and d.mismatch_frac == 0.0
    assert (d.max_abs, d.max_rel, d.cosine) == (0.0, 0.0, 1.0)
    assert d.worst_index is None and d.ours_at_worst is None
    assert d.ref_at_worst is None and d.allowed_at_worst is None


def test_shapes_must_agree():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 2\)"):
        tensor_diff(np.zeros((2, 3)), np.zeros((3, 2)), WIDE)


def test_float32_and_integer_inputs_are_compared_in_float64():
    ref = np.array([1.0, 2.0], dtype=np.float32)
    d = tensor_diff(np.array([1, 3]), ref, WIDE)
    assert d.max_abs == 1.0 and type(d.max_abs) is float
    assert type(d.ours_at_worst) is float and d.ours_at_worst == 3.0


# ------------------------------------------------------------------ tensor_diff: non-finite


def test_the_same_infinity_on_both_sides_matches():
    ref = np.array([np.inf, -np.inf, 1.0])
    d = tensor_diff(ref.copy(), ref, WIDE)
    assert d.ok and d.max_abs == 0.0
    assert d.cosine == 1.0  # non-finite entries are left out of the cosine


def test_nan_against_a_number_is_an_infinite_mismatch():
    ref = np.array([1.0, 2.0, 3.0])
    ours = np.array([1.0, np.nan, 3.0])
    d = tensor_diff(ours, ref, WIDE)
    assert d.mismatch_count == 1
    assert d.max_abs == math.inf and d.max_rel == math.inf
    assert d.worst_index == (1,)
    assert math.isnan(d.ours_at_worst) and d.ref_at_worst == 2.0
    # allowed where the reference is finite: 0.1 * 2 + 0.1 * 3 + 0.01
    assert d.allowed_at_worst == pytest.approx(0.51)


def test_nan_on_both_sides_is_a_mismatch():
    """NaN equals nothing, itself included: a NaN in the reference is no licence for ours."""
    d = tensor_diff(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), WIDE)
    assert d.mismatch_count == 1 and d.worst_index == (0,)


def test_opposite_infinities_and_infinity_against_a_number_mismatch():
    ref = np.array([np.inf, 1.0, 2.0])
    ours = np.array([-np.inf, np.inf, 2.0])
    d = tensor_diff(ours, ref, WIDE)
    assert d.mismatch_count == 2 and d.max_abs == math.inf
    assert d.worst_index == (0,)  # both infinitely bad: the first is named


def test_non_finite_reference_entries_do_not_widen_the_tolerance():
    """max|r| is taken over the finite entries: an inf elsewhere must not allow everything."""
    ref = np.array([np.inf, 1.0])
    ours = np.array([np.inf, 1.5])
    d = tensor_diff(ours, ref, WIDE)
    assert d.mismatch_count == 1 and d.worst_index == (1,)
    assert d.allowed_at_worst == pytest.approx(0.21)


def test_cosine_over_finite_entries_with_non_finite_present():
    ours = np.array([np.nan, 1.0, 0.0])
    ref = np.array([1.0, 0.0, 1.0])
    assert tensor_diff(ours, ref, WIDE).cosine == pytest.approx(0.0, abs=1e-15)


# ------------------------------------------------------------------ tensor_diff: noise floor, ties


def test_errors_below_the_noise_floor_are_recorded_as_zero():
    ref = np.array([1.0, 2.0])  # allowed [0.31, 0.41]
    ours = ref + np.array([0.0, 0.5 * NOISE_FLOOR * 0.41])
    d = tensor_diff(ours, ref, WIDE)
    assert (d.max_abs, d.max_rel) == (0.0, 0.0)
    assert d.worst_index == (0,)  # nothing stands out: the first element, not the noisy one
    assert d.ok


def test_errors_above_the_noise_floor_are_kept():
    ref = np.array([1.0, 2.0])
    err = 2 * NOISE_FLOOR * 0.41
    d = tensor_diff(ref + np.array([0.0, err]), ref, WIDE)
    assert d.max_abs == pytest.approx(err)
    assert d.worst_index == (1,)


def test_the_noise_floor_never_hides_a_mismatch():
    """An error beyond the allowed one is far above the floor: still counted, still worst."""
    ref = np.array([1.0, 1.0, 1.0])
    d = tensor_diff(ref + np.array([0.0, 0.0, 0.3]), ref, WIDE)
    assert d.mismatch_count == 1 and d.max_abs == pytest.approx(0.3)
    assert d.worst_index == (2,)


def test_round_off_gives_the_same_statistics_as_exact_equality():
    """Correct code differs from the reference by round-off only: the statistics of such a pair
    do not depend on the last bits, so report.json is the same on any machine."""
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((5, 4))
    tol = tolerance_for("float64")
    wobbled = ref * (1 + 1e-15 * rng.standard_normal(ref.shape))
    exact, noisy = tensor_diff(ref, ref, tol), tensor_diff(wobbled, ref, tol)
    assert (noisy.max_abs, noisy.max_rel, noisy.worst_index) == (0.0, 0.0, (0, 0))
    assert (exact.max_abs, exact.max_rel, exact.worst_index) == (0.0, 0.0, (0, 0))


def test_near_ties_for_worst_resolve_to_the_first_element():
    ref = np.ones(5)  # allowed 0.21 everywhere
    ours = ref.copy()
    ours[3] += 0.5
    ours[1] += 0.5 * (1 - 1e-8)  # tied to within the last bits of a sum
    assert tensor_diff(ours, ref, WIDE).worst_index == (1,)


def test_a_clearly_larger_error_later_is_still_the_worst():
    ref = np.ones(5)
    ours = ref.copy()
    ours[3] += 0.5
    ours[1] += 0.5 * (1 - 1e-4)  # a real difference, far beyond a tie
    assert tensor_diff(ours, ref, WIDE).worst_index == (3,)


def test_the_first_of_several_infinite_errors_is_the_worst():
    ref = np.ones(4)
    ours = np.array([1.0, 1.5, np.nan, np.inf])
    d = tensor_diff(ours, ref, WIDE)
    assert d.worst_index == (2,)


def test_an_error_exactly_at_the_noise_floor_is_kept():
    """Below the floor counts as 0; at it, not (allowed is 1 here, so the floor is 1e-3)."""
    tol = Tolerance(rtol=0.25, atol=0.0, dtype="float64")
    ref = np.array([0.0, 4.0])  # allowed [0.25 * 0 + 0.25 * 4, ...] = [1, 2]
    d = tensor_diff(np.array([NOISE_FLOOR, 4.0]), ref, tol)
    assert d.max_abs == NOISE_FLOOR and d.worst_index == (0,)


def test_without_atol_an_all_zero_pair_matches_and_the_worst_is_the_error():
    """All-zero reference and atol 0: nothing is allowed, yet an exact 0 is no mismatch."""
    tol = Tolerance(rtol=0.1, atol=0.0, dtype="float64")
    assert tensor_diff(np.zeros(3), np.zeros(3), tol).ok
    d = tensor_diff(np.array([0.0, 0.0, 3.0]), np.zeros(3), tol)
    assert d.mismatch_count == 1 and d.worst_index == (2,)


def test_float32_inputs_are_compared_in_float64():
    ref32 = np.array([0.1, -0.3, 0.7], dtype=np.float32)
    ours32 = np.array([0.1, -0.3, 0.7001], dtype=np.float32)
    d = tensor_diff(ours32, ref32, tolerance_for("float32"))
    ref, ours = ref32.astype(np.float64), ours32.astype(np.float64)
    assert d.max_abs == abs(ours[2] - ref[2])
    # float32 arithmetic would be off by ~1e-8 relative; the rule in float64 is exact
    assert d.allowed_at_worst == pytest.approx(2e-4 * abs(ref[2]) + 1e-7, rel=1e-13)


@pytest.mark.parametrize(
    ("ours", "ref"),
    [
        ([np.inf, -np.inf, 1.0], [np.inf, -np.inf, 2.0]),  # inf - inf
        ([1e308, 1.0], [-1e308, 1.0]),  # the difference overflows
        ([1.0, 0.0, 2.0], [0.0, 0.0, 2.0]),  # x / 0 and 0 / 0 in the relative error
        ([np.nan, 1.0], [np.nan, 1.0]),
        ([1e200, 3e200], [2e200, 1e200]),  # squares of the cosine's norms would overflow
        ([1e300, 1.0], [1e-300, 1.0]),  # error / allowed and error / |ref| overflow
    ],
)
def test_no_runtime_warnings_reach_the_user(ours, ref):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        d = tensor_diff(np.array(ours), np.array(ref), WIDE)
    assert not d.ok


# ------------------------------------------------------------------ cosine_similarity


def test_cosine_of_known_angles():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert cosine_similarity(np.array([1.0, 1.0]), np.array([-1.0, -1.0])) == pytest.approx(-1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(
        1 / math.sqrt(2)
    )


def test_cosine_of_huge_and_tiny_vectors():
    """Scaled before the norms are taken: squares of 1e200 overflow, of 1e-200 underflow."""
    for scale in (1e200, 1e-200):
        a, b = np.array([1.0, 0.0]) * scale, np.array([1.0, 1.0]) * scale
        assert cosine_similarity(a, b) == pytest.approx(1 / math.sqrt(2))


def test_cosine_of_empty_arrays_is_one():
    assert cosine_similarity(np.zeros(0), np.zeros(0)) == 1.0


def test_cosine_with_zero_vectors():
    assert cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine_similarity(np.zeros(3), np.ones(3)) == 0.0
    assert cosine_similarity(np.ones(3), np.zeros(3)) == 0.0


def test_cosine_flattens_any_shape():
    a, b = np.arange(6.0).reshape(2, 3), np.arange(6.0)[::-1].reshape(2, 3)
    assert cosine_similarity(a, b) == pytest.approx(cosine_similarity(a.ravel(), b.ravel()))
    assert cosine_similarity(a, b) == pytest.approx(20 / 55)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 3.0, 3.0 * (1 + 1e-9), 2.0], (1,)),  # tied within 1e-6: the first of them
        ([1.0, 3.0, 3.0 * (1 + 1e-3), 2.0], (2,)),  # a real difference: the largest
        ([1.0, np.inf, 5.0, np.inf], (1,)),  # infinite: the first infinity
        ([0.0, 0.0, 0.0], (0,)),  # nothing differs: the first element
        ([-3.0, -1.0, -1.0 - 1e-12, -2.0], (1,)),  # all negative (a masked fill): still the top
    ],
)
def test_first_largest_names_the_first_of_the_tied(values, expected):
    assert first_largest(np.array(values)) == expected


def test_first_largest_keeps_the_shape():
    grid = np.zeros((2, 3))
    grid[1, 2] = grid[1, 0] = 4.0
    assert first_largest(grid) == (1, 0)


def test_an_unknown_dtype_names_the_known_ones():
    with pytest.raises(ValueError, match=r"^dtype must be 'float64' or 'float32', not 'float16'$"):
        tolerance_for("float16")


# ------------------------------------------------------------------ the one mismatch rule


def test_mismatch_mask_is_error_above_the_allowance():
    binary = Tolerance(rtol=0.25, atol=0.125, dtype="float64")  # every sum below is exact
    ref = np.array([1.0, -2.0, 0.0, 0.5])
    allowed = [0.25 + 0.5 + 0.125, 0.5 + 0.5 + 0.125, 0.5 + 0.125, 0.125 + 0.5 + 0.125]
    ours = ref + np.array([0.875, -1.25, 0.5, 0.75])  # at the limit, out, in, at the limit
    np.testing.assert_array_equal(binary.mismatch(ours, ref), [False, True, False, False])
    errors = binary.errors(ours, ref)
    assert errors.allowed.tolist() == allowed
    assert errors.error.tolist() == [0.875, 1.25, 0.5, 0.75]


def test_mismatch_of_non_finite_values():
    inf, nan = math.inf, math.nan
    ref = np.array([inf, -inf, 1.0, nan, inf, 2.0])
    ours = np.array([inf, -inf, nan, nan, -inf, inf])
    # equal infinities match; NaN never does, nor an infinity against anything else
    np.testing.assert_array_equal(WIDE.mismatch(ours, ref), [False, False, True, True, True, True])
    errors = WIDE.errors(ours, ref)
    assert errors.error.tolist() == [0.0, 0.0, inf, inf, inf, inf]
    # the allowance treats the reference's non-finite entries as 0: max|r| = 2
    np.testing.assert_allclose(errors.allowed, [0.21, 0.21, 0.31, 0.21, 0.21, 0.41])


def test_matches_needs_equal_shapes_and_no_mismatch():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert WIDE.matches(ref + 0.1, ref)
    assert not WIDE.matches(ref + 1.0, ref)
    assert not WIDE.matches(ref.ravel(), ref)
    assert WIDE.matches(np.zeros((0, 3)), np.zeros((0, 3)))


def test_tensor_diff_counts_exactly_the_mismatch_mask():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40, 30))
    ours = ref + rng.standard_normal(ref.shape) * 0.05
    ours[3, 4], ref[5, 6], ours[5, 6] = math.nan, math.inf, math.inf
    d = tensor_diff(ours, ref, WIDE)
    assert d.mismatch_count == int(WIDE.mismatch(ours, ref).sum()) > 0
    assert d.ok == WIDE.matches(ours, ref) is False
