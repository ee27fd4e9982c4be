"""Behaviour the design fixes, each pinned by a test that fails if the core is quietly weakened.

Each test names the small wrong change it guards against (issue 10, item 8): the tolerance
rule without its normwise term (``tests/test_tolerance_rule.py``), a looser tolerance, an
all-ones upstream gradient in isolation, the stale-cache probe run at the real input, the
locator without its chain-order fallback (``tests/test_locate.py``) and a loosened "matches"
test in the diagnoses.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradparity.comparison.diagnose.values import diagnose
from gradparity.core.tolerance import tolerance_for
from gradparity.corpus import layer_bugs as bugs
from gradparity.corpus.selftest import compare_setup
from gradparity.ours import Linear, Softmax

TOL = tolerance_for("float64")
DOCUMENTED_RTOL = 1e-7  # README, "Tolerance"; written out so that the test does not follow a change
N = 8


def _roots(report) -> list[tuple[str, str, str, str]]:
    return [(f.layer, f.quantity, f.diagnosis, f.mode) for f in report.root_causes]


def _row(report, mode: str, layer: str, quantity: str):
    (row,) = [r for r in report.rows if (r.mode, r.layer, r.quantity) == (mode, layer, quantity)]
    return row


# ------------------------------------------------------------------ the documented tolerance


def _weight_grad_off_by(relative: float) -> type[Linear]:
    class WeightGradOff(Linear):
        def backward(self, grad_out):
            grad_x = super().backward(grad_out)
            self.grads["W"] = self.grads["W"] * (1 + relative)
            return grad_x

    return WeightGradOff


@pytest.mark.parametrize(("times_rtol", "found"), [(2.5, True), (1.5, False)])
def test_a_difference_just_above_the_documented_tolerance_is_found(times_rtol, found):
    """A weight gradient off by a factor 1 + e: the largest element misses by e * max|r| where
    2 rtol max|r| (+ atol) is allowed, so 2.5 rtol is a finding and 1.5 rtol is parity. A 10x
    looser tolerance would miss the first; a 10x tighter one would flag the second."""
    layer = _weight_grad_off_by(times_rtol * DOCUMENTED_RTOL)
    report = compare_setup(*bugs.base_network(0, fc1=layer))
    assert report.tolerance.rtol == DOCUMENTED_RTOL
    if found:
        assert not report.ok
        assert [(f.layer, f.quantity, f.mode) for f in report.root_causes] == [
            ("fc1", "grad:W", "isolate")
        ]
    else:
        assert report.ok and report.root_causes == []


# ------------------------------------------------------------------ random upstream in isolation


class SoftmaxMeanForDot(Softmax):
    """dL/dz = s * (g - mean(g)) instead of s * (g - <g, s>): right whenever g is constant."""

    def backward(self, grad_out):
        return self._s * (grad_out - grad_out.mean(axis=-1, keepdims=True))


def test_isolation_finds_a_softmax_bug_that_an_all_ones_upstream_hides():
    """With g = 1 both formulas give 0, so only a random upstream gradient shows the bug in the
    layer's own isolated run (the chain would still diverge, but blame no layer)."""
    report = compare_setup(*bugs.softmax_network(0, softmax=SoftmaxMeanForDot))
    assert [(f.layer, f.quantity, f.mode) for f in report.root_causes] == [
        ("softmax", "grad_input", "isolate")
    ]
    assert _row(report, "isolate", "softmax", "grad_input").status == "root_cause"


def test_isolation_finds_an_ignored_upstream_gradient():
    """Sigmoid backward returning y (1 - y) is exact for an all-ones upstream gradient."""
    report = compare_setup(*bugs.base_network(0, act=bugs.SigmoidUpstreamIgnored))
    assert [(f.layer, f.quantity, f.mode) for f in report.root_causes] == [
        ("act1", "grad_input", "isolate")
    ]


# ------------------------------------------------------------------ the stale-cache probe


def test_a_stale_cached_input_is_found_in_isolation_and_named_stale():
    """The warm-up forward runs on a different input than the real one; were it the same, a
    cache filled only on the first call would hold the right input and hide the bug."""
    report = compare_setup(*bugs.base_network(0, fc1=bugs.StaleCachedInput))
    assert _roots(report) == [("fc1", "grad:W", "stale", "isolate")]
    assert "previous forward call" in report.root_causes[0].message


def test_a_stale_cached_input_also_diverges_in_the_chain():
    """The chain run is warmed up on a different input as well, as in training."""
    report = compare_setup(*bugs.base_network(0, fc1=bugs.StaleCachedInput))
    assert _row(report, "chain", "fc1", "grad:W").status == "root_cause"
    assert report.first_divergence["backward"] == {"layer": "fc1", "quantity": "grad:W"}


# ------------------------------------------------------------------ "matches" is the tolerance


def _ref(shape=(N, 5), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 2.0, size=shape)


def test_a_factor_of_099_is_scaled_not_a_match():
    r = _ref()
    d = diagnose(0.99 * r, r, TOL, quantity="grad:W")
    assert d.label == "scaled"
    assert d.detail["factor"] == pytest.approx(0.99, rel=1e-12)


def test_a_factor_of_minus_099_is_scaled_not_sign_flipped():
    r = _ref()
    d = diagnose(-0.99 * r, r, TOL, quantity="grad:W")
    assert d.label == "scaled"
    assert d.detail["factor"] == pytest.approx(-0.99, rel=1e-12)


def test_a_factor_of_099_with_noise_is_not_scaled():
    """0.99 r with 0.3% noise on top fits no constant factor to the tolerance: not ``scaled``."""
    r = _ref()
    noise = 1 + 0.003 * np.random.default_rng(1).standard_normal(r.shape)
    d = diagnose(0.99 * r * noise, r, TOL, quantity="grad:W")
    assert d.label == "unexplained"


def test_almost_the_batch_size_is_not_batch_reduction():
    r = _ref()
    d = diagnose(N * 0.995 * r, r, TOL, quantity="grad:W", batch_size=N)
    assert d.label == "scaled"
    assert d.detail["factor"] == pytest.approx(N * 0.995, rel=1e-12)


def test_almost_the_transpose_is_not_transposed():
    r = _ref((4, 4))
    assert diagnose(r.T, r, TOL, quantity="grad:W").label == "transposed"
    assert diagnose(r.T * (1 + 0.005 * _ref((4, 4), 1)), r, TOL, quantity="grad:W").label != (
        "transposed"
    )


def test_almost_the_upstream_gradient_is_not_missing_local_derivative():
    up = np.random.default_rng(2).standard_normal((N, 4))
    ref = up * _ref((N, 4), 3)  # the local derivative multiplied in
    assert diagnose(up, ref, TOL, quantity="grad_input", upstream=up).label == (
        "missing_local_derivative"
    )
    nearly = up * (1 + 0.005 * _ref((N, 4), 4))
    assert diagnose(nearly, ref, TOL, quantity="grad_input", upstream=up).label == "unexplained"


def test_almost_the_sum_over_the_batch_is_not_not_reduced():
    per_example = np.random.default_rng(5).standard_normal((N, 3))
    ref = per_example.sum(axis=0)
    assert diagnose(per_example, ref, TOL, quantity="grad:b").label == "not_reduced"
    d = diagnose(per_example, ref * 1.005, TOL, quantity="grad:b")
    assert d.label == "shape_mismatch"


def test_a_difference_just_beyond_the_tolerance_is_still_diagnosed():
    """The diagnosis's notion of "matches" is the comparison's: a pair 2.5 rtol apart is a
    divergence to diagnose, not a match that diagnose refuses."""
    r = _ref()
    d = diagnose(r * (1 + 2.5 * DOCUMENTED_RTOL), r, TOL, quantity="output")
    assert d.label == "unexplained"
    with pytest.raises(ValueError, match=r"^pair does not diverge"):
        diagnose(r * (1 + 1.5 * DOCUMENTED_RTOL), r, TOL, quantity="output")
