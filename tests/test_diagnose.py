"""Tests of gradparity.comparison.diagnose.values: each label from a realistic bug, and what must
not be labelled."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gradparity.comparison.diagnose.values import LABELS, Diagnosis, describe_location, diagnose
from gradparity.core.tolerance import tolerance_for

TOL = tolerance_for("float64")
N = 8  # batch size of the probes


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _roundoff(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``a`` with float64 round-off noise, as a correct but differently ordered sum has."""
    return a * (1 + 1e-14 * rng.standard_normal(a.shape))


def _json_ok(d: Diagnosis) -> None:
    json.dumps(d.detail, allow_nan=False)
    assert d.label in LABELS
    assert d.message and d.fix
    for word in ("actual", "expected"):
        assert word not in d.message.lower()
        assert word not in d.fix.lower()


# ------------------------------------------------------------------ shape tests


def test_bias_gradient_not_summed_over_batch(rng):
    upstream = rng.standard_normal((N, 6))
    ref = upstream.sum(axis=0)
    d = diagnose(upstream, ref, TOL, quantity="grad:b", batch_size=N, param_shape=(6,))
    _json_ok(d)
    assert d.label == "not_reduced"
    assert d.detail["axis"] == 0 and d.detail["axes"] == [0]
    assert d.detail["batch_size"] == N and d.detail["reduction"] == "sum"
    assert "gradient of b has shape (8, 6), the parameter (6,)" in d.message
    assert "grad_out.sum(axis=0)" in d.fix


def test_not_reduced_against_keepdims_reference(rng):
    upstream = rng.standard_normal((N, 6))
    d = diagnose(upstream, upstream.sum(axis=0, keepdims=True), TOL, quantity="grad:b")
    assert d.label == "not_reduced"
    assert d.detail["ref_shape"] == [1, 6]


def test_conv_bias_not_reduced_over_batch_and_space(rng):
    per_position = rng.standard_normal((4, 3, 5, 5))
    d = diagnose(per_position, per_position.sum(axis=(0, 2, 3)), TOL, quantity="grad:b")
    assert d.label == "not_reduced"
    assert d.detail["axes"] == [0, 2, 3]
    assert "axis=(0, 2, 3)" in d.fix


def test_not_reduced_by_mean(rng):
    per_example = rng.standard_normal((N, 4))
    d = diagnose(per_example, per_example.mean(axis=0), TOL, quantity="output")
    assert d.label == "not_reduced"
    assert d.detail["reduction"] == "mean"
    assert "mean(axis=0)" in d.fix


def test_extra_axis_that_does_not_reduce_is_shape_mismatch(rng):
    d = diagnose(rng.standard_normal((N, 6)), rng.standard_normal(6), TOL, quantity="grad:b")
    _json_ok(d)
    assert d.label == "shape_mismatch"
    assert d.detail["layout"] == "other"


def test_weight_gradient_transposed_non_square(rng):
    x, grad_out = rng.standard_normal((N, 3)), rng.standard_normal((N, 2))
    ref = x.T @ grad_out  # weight stored (in, out) = (3, 2)
    d = diagnose(grad_out.T @ x, ref, TOL, quantity="grad:W", param_shape=(3, 2))
    _json_ok(d)
    assert d.label == "transposed"
    assert d.detail == {"ours_shape": [2, 3], "ref_shape": [3, 2]}
    assert "x.T @ grad_out" in d.fix


def test_transposed_layout_with_other_values_says_both(rng):
    x, grad_out = rng.standard_normal((N, 3)), rng.standard_normal((N, 2))
    ref = x.T @ grad_out
    d = diagnose(2.5 * ref.T, ref, TOL, quantity="grad:W")
    _json_ok(d)
    assert d.label == "shape_mismatch"
    assert d.detail["layout"] == "transposed" and d.detail["values_match"] is False
    assert d.detail["after_layout"]["label"] == "scaled"
    assert d.detail["after_layout"]["detail"]["factor"] == pytest.approx(2.5)


def test_singleton_axis_layout_is_harmless_shape_mismatch(rng):
    ref = rng.standard_normal(6)
    d = diagnose(ref.reshape(6, 1), ref, TOL, quantity="grad:b")
    assert d.label == "shape_mismatch"
    assert d.detail["layout"] == "reshape" and d.detail["values_match"] is True
    assert "reshape it to (6,)" in d.fix


def test_singleton_axis_layout_with_wrong_values_diagnoses_values(rng):
    ref = rng.standard_normal(6)
    d = diagnose(-ref.reshape(1, 6), ref, TOL, quantity="grad:b")
    assert d.label == "shape_mismatch"
    assert d.detail["after_layout"]["label"] == "sign_flipped"


def test_wrong_size_names_the_parameter_shape(rng):
    d = diagnose(
        rng.standard_normal(5), rng.standard_normal(6), TOL, quantity="grad:b", param_shape=(6,)
    )
    assert d.label == "shape_mismatch"
    assert d.detail["param_shape"] == [6]
    assert "gradient of b has shape (5,), the parameter (6,)" in d.message


def test_input_gradient_summed_over_batch_is_shape_mismatch_reduced(rng):
    grad_in = rng.standard_normal((N, 5))
    d = diagnose(grad_in.sum(axis=0), grad_in, TOL, quantity="grad_input", batch_size=N)
    assert d.label == "shape_mismatch"
    assert d.detail["layout"] == "reduced"
    assert "keep the batch axis" in d.fix


# ------------------------------------------------------------------ value tests


def test_nan_and_inf_in_ours(rng):
    ref = rng.standard_normal((4, 3))
    ours = ref.copy()
    ours[0, 2], ours[2, 1] = np.inf, np.nan
    d = diagnose(ours, ref, TOL, quantity="output")
    _json_ok(d)
    assert d.label == "nonfinite"
    assert (d.detail["nan"], d.detail["inf"]) == (1, 1)
    assert d.detail["first_index"] == [0, 2]


def test_nonfinite_scalar_loss():
    d = diagnose(np.array(np.nan), np.array(2.3), TOL, quantity="loss")
    assert d.label == "nonfinite"
    assert "()" not in d.message


@pytest.mark.parametrize(
    ("quantity", "phrase"),
    [("grad:W", "layer.grads"), ("grad_input", "backward returns zeros"), ("output", "forward")],
)
def test_zero_hint_depends_on_quantity(rng, quantity, phrase):
    ref = rng.standard_normal((N, 4))
    d = diagnose(np.zeros_like(ref), ref, TOL, quantity=quantity)
    _json_ok(d)
    assert d.label == "zero"
    assert phrase in d.fix


def test_sign_flipped_loss_gradient(rng):
    probs = rng.dirichlet(np.ones(5), size=N)
    onehot = np.eye(5)[rng.integers(0, 5, N)]
    ref = (probs - onehot) / N
    d = diagnose(_roundoff((onehot - probs) / N, rng), ref, TOL, quantity="grad_input")
    _json_ok(d)
    assert d.label == "sign_flipped"
    assert d.detail["factor"] == -1.0


@pytest.mark.parametrize(("factor", "ours_reduction"), [(N, "sum"), (1 / N, "mean")])
def test_mean_versus_sum_is_batch_reduction(rng, factor, ours_reduction):
    ref = rng.standard_normal((N, 10)) / N
    d = diagnose(_roundoff(factor * ref, rng), ref, TOL, quantity="grad_input", batch_size=N)
    _json_ok(d)
    assert d.label == "batch_reduction"
    assert d.detail["factor"] == pytest.approx(factor, rel=1e-12)
    assert d.detail["batch_size"] == N
    assert d.detail["ours_reduction"] == ours_reduction


def test_summed_loss_is_batch_reduction_with_loss_hint():
    d = diagnose(np.array(8 * 2.3), np.array(2.3), TOL, quantity="loss", batch_size=N)
    assert d.label == "batch_reduction"
    assert "average" in d.fix


def test_factor_of_batch_size_without_batch_size_is_scaled(rng):
    ref = rng.standard_normal((N, 3))
    d = diagnose(N * ref, ref, TOL, quantity="grad:W")
    assert d.label == "scaled"


def test_doubled_derivative_is_scaled_by_two(rng):
    x, target = rng.standard_normal((N, 4)), rng.standard_normal((N, 4))
    ref = (x - target) / N  # d/dx of 0.5 * mean squared error
    d = diagnose(
        _roundoff(2 * (x - target) / N, rng), ref, TOL, quantity="grad_input", batch_size=N
    )
    _json_ok(d)
    assert d.label == "scaled"
    assert d.detail["factor"] == pytest.approx(2.0, rel=1e-12)
    assert d.message == "values are 2 times the reference's"
    assert "factor of 2" in d.fix


def test_negative_factor_is_scaled_and_mentions_sign(rng):
    ref = rng.standard_normal((3, 4))
    d = diagnose(-2 * ref, ref, TOL, quantity="grad:W")
    assert d.label == "scaled"
    assert d.detail["factor"] == pytest.approx(-2.0)
    assert "sign" in d.fix


def test_square_weight_gradient_transposed(rng):
    x, grad_out = rng.standard_normal((N, 4)), rng.standard_normal((N, 4))
    d = diagnose(grad_out.T @ x, x.T @ grad_out, TOL, quantity="grad:W")
    _json_ok(d)
    assert d.label == "transposed"
    assert d.detail["ours_shape"] == [4, 4]


def test_sigmoid_backward_missing_local_derivative(rng):
    x, upstream = rng.standard_normal((N, 5)), rng.standard_normal((N, 5))
    s = 1 / (1 + np.exp(-x))
    ref = upstream * s * (1 - s)
    d = diagnose(upstream.copy(), ref, TOL, quantity="grad_input", upstream=upstream)
    _json_ok(d)
    assert d.label == "missing_local_derivative"
    assert "s * (1 - s)" in d.fix


def test_upstream_equality_only_counts_for_input_gradient(rng):
    upstream, ref = rng.standard_normal((N, 5)), rng.standard_normal((N, 5))
    d = diagnose(upstream, ref, TOL, quantity="output", upstream=upstream)
    assert d.label == "unexplained"


# ------------------------------------------------------------------ what is not labelled


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ndim=st.integers(0, 3))
def test_unrelated_arrays_are_unexplained(seed, ndim):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(2, 6, ndim))
    ours, ref = rng.standard_normal(shape), rng.standard_normal(shape)
    d = diagnose(ours, ref, TOL, quantity="grad_input", batch_size=N, upstream=ours + 1)
    _json_ok(d)
    assert d.label == "unexplained"
    for key in ("max_abs", "max_rel", "rel_norm", "cosine", "mismatch_frac", "location"):
        assert key in d.detail


def test_one_element_is_never_scaled():
    d = diagnose(np.array(3.1), np.array(2.3), TOL, quantity="loss", batch_size=N)
    assert d.label == "unexplained"
    assert " at " not in d.message


def test_matching_pair_raises(rng):
    ref = rng.standard_normal((N, 3))
    with pytest.raises(ValueError, match="does not diverge"):
        diagnose(_roundoff(ref, rng), ref, TOL, quantity="output")


def test_small_noise_is_unexplained_not_scaled(rng):
    ref = rng.standard_normal((N, 6))
    ours = ref * (1 + 1e-3 * rng.standard_normal(ref.shape))
    d = diagnose(ours, ref, TOL, quantity="grad_input", batch_size=N)
    assert d.label == "unexplained"
    assert d.detail["cosine"] > 0.999


@given(factor=st.floats(0.01, 100) | st.floats(-100, -0.01))
def test_batch_size_one_never_gives_batch_reduction(factor):
    assume(abs(abs(factor) - 1) > 1e-3)
    ref = np.random.default_rng(1).standard_normal((1, 5))  # one example, five features
    d = diagnose(factor * ref, ref, TOL, quantity="grad_input", batch_size=1)
    # a factor of the feature count (5 or 1/5) is a reduction over the wrong count; near it,
    # within the fit's allowance (1e-6 relative) but not exactly, either label could be read
    off = min(abs(factor / 5 - 1), abs(factor / 0.2 - 1))
    assume(off < 1e-9 or off > 1e-5)
    over_features = off < 1e-9
    assert d.label == ("reduction_count" if over_features else "scaled")
    if over_features:
        assert (d.detail["count_of"], d.detail["count"]) == ("features", 5)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple),
    factor=st.floats(1e-3, 1e3) | st.floats(-1e3, -1e-3),
    batch_size=st.integers(2, 64),
)
def test_scaled_recovers_any_other_factor(seed, shape, factor, batch_size):
    for special in (1.0, -1.0, batch_size, 1 / batch_size):
        assume(abs(factor - special) > 1e-3 * abs(special))
    # a count of the tensor (a dimension or a product of some: features, N x C, elements) or
    # its inverse is reduction_count, not scaled
    counts = {int(np.prod(c)) for k in range(1, len(shape) + 1) for c in combinations(shape, k)}
    for special in [n for n in counts if n >= 3] + [1 / n for n in counts if n >= 3]:
        assume(abs(abs(factor) - special) > 1e-3 * special)
    assume(np.prod(shape) > 1)
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(shape)
    d = diagnose(
        _roundoff(factor * ref, rng), ref, TOL, quantity="grad_input", batch_size=batch_size
    )
    assert d.label == "scaled"
    assert d.detail["factor"] == pytest.approx(factor, rel=1e-9)


# ------------------------------------------------------------------ where the error sits


def test_error_confined_to_rows(rng):
    ref = rng.standard_normal((6, 4))
    ours = ref.copy()
    ours[[0, 3]] += 0.5
    d = diagnose(ours, ref, TOL, quantity="output")
    assert d.label == "unexplained"
    assert d.detail["location"]["rows"] == [0, 3]
    assert "differ in 8 of 24 elements (33.3%), all in rows [0, 3]" in d.message
    assert "rows [0, 3]" in d.fix


def test_error_only_on_diagonal_of_jacobian(rng):
    ref = rng.standard_normal((5, 5))
    ours = ref + np.diag(rng.uniform(0.5, 1.0, 5))
    d = diagnose(ours, ref, TOL, quantity="output")
    assert d.label == "unexplained"
    assert d.detail["location"]["diagonal_only"] is True
    assert "on the diagonal" in d.message


def test_relu_mask_inverted_makes_no_sign_claim_against_zeros(rng):
    x, upstream = rng.standard_normal((N, 6)), rng.standard_normal((N, 6))
    d = diagnose(upstream * (x < 0), upstream * (x > 0), TOL, quantity="grad_input")
    assert d.label == "mask_inverted"
    assert d.detail["sign_differs_frac"] == 0.0  # every differing element is 0 on one side
    assert "opposite sign" not in d.message


def test_missing_relu_mask_is_named_from_the_reference_zeros(rng):
    z, upstream = rng.standard_normal((N, 6)), rng.standard_normal((N, 6))
    d = diagnose(upstream, upstream * (z > 0), TOL, quantity="grad_output")
    assert d.label == "mask_missing"
    assert d.detail["unmasked"] == int((z <= 0).sum())
    assert "where the reference is exactly 0, and the rest match: a mask is missing" in d.message
    assert "(z > 0)" in d.fix


def test_describe_location_2d():
    m = np.zeros((4, 3), dtype=bool)
    m[1] = True
    m[3, 2] = True
    loc = describe_location(m)
    assert loc["count"] == 4 and loc["numel"] == 12
    assert loc["rows"] == [1] and loc["cols"] == []
    assert loc["rows_hit"] == [1, 3] and loc["n_cols_hit"] == 3
    assert loc["indices"][0] == [1, 0]
    assert "diagonal_only" not in loc


def test_describe_location_square_and_higher_rank():
    assert describe_location(np.eye(3, dtype=bool))["diagonal_only"] is True
    assert describe_location(~np.eye(3, dtype=bool))["off_diagonal_only"] is True
    m = np.zeros((2, 30, 2), dtype=bool)
    m[1] = True
    loc = describe_location(m)
    assert loc["count"] == 60 and loc["truncated"] is True
    assert len(loc["indices"]) == 20 and loc["indices"][0] == [1, 0, 0]
    json.dumps(loc)


def test_float32_input_is_accepted(rng):
    ref = rng.standard_normal((N, 3)).astype(np.float32)
    d = diagnose(3 * ref, ref, tolerance_for("float32"), quantity="output")
    assert d.label == "scaled"
    assert d.detail["factor"] == pytest.approx(3.0, rel=1e-6)


def test_unknown_label_is_rejected():
    with pytest.raises(ValueError, match="unknown diagnosis label"):
        Diagnosis("typo", {}, "m", "f")


def test_a_flipped_kernel_is_named(rng):
    ref = rng.standard_normal((2, 3, 3, 3))  # (F, C, HH, WW) conv weight gradient
    d = diagnose(ref[..., ::-1, ::-1].copy(), ref, TOL, quantity="grad:W")
    assert d.label == "unexplained"
    assert d.detail["flipped_last_two_axes"] is True
    assert "a flipped kernel" in d.message and "cross-correlation" in d.fix
