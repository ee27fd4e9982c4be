"""The central-difference engine both referees use: its step and direction policy, its
accuracy on functions whose gradient is known, and what it does with a function that raises
or returns a non-finite value (passes both on: the referees decide, as tested here too)."""

from __future__ import annotations

import numpy as np
import pytest

import gradparity as gp
from gradparity.corpus.function_bugs import cross_entropy, function_setup
from gradparity.evidence import central_difference as cd
from gradparity.evidence.function_numeric import NumericLoss

# The accuracy the referees' tolerances count on (1e-5 relative separates right from wrong):
# measured at 4e-11 to 9e-11 on the function below at every scale.
ACCURACY = 1e-9


def _smooth(scale: float) -> tuple[np.ndarray, cd.Moved, np.ndarray]:
    """(base (6, 5) of magnitude ``scale``, f(step) = sum(sin(3u) exp(u / 2)) at
    u = (base + step) / scale, its exact gradient at the base)."""
    base = scale * np.random.default_rng(0).standard_normal((6, 5))

    def moved(step: np.ndarray) -> float:
        u = (base + step) / scale
        return float(np.sum(np.sin(3 * u) * np.exp(u / 2)))

    u = base / scale
    exact = (3 * np.cos(3 * u) + np.sin(3 * u) / 2) * np.exp(u / 2) / scale
    return base, moved, exact


def _relative_error(numeric: np.ndarray, exact: np.ndarray) -> float:
    return float(np.abs(numeric - exact).max() / np.abs(exact).max())


# --- step policy ------------------------------------------------------------------------


def test_the_float64_step_is_a_millionth_of_the_scale_and_at_least_a_millionth():
    assert cd.relative_step() == cd.relative_step("float64") == 1e-6
    assert cd.step_size(np.zeros((2, 3))) == 1e-6
    assert cd.step_size(np.array([0.25, -0.5])) == 1e-6
    assert cd.step_size(np.array([[3.0, -40.0]])) == pytest.approx(4e-5, rel=1e-15)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_the_relative_step_is_the_power_of_ten_at_or_below_the_cube_root_of_eps(dtype):
    cube_root = float(np.finfo(dtype).eps) ** (1 / 3)
    step = cd.relative_step(dtype)
    assert step <= cube_root < 10 * step
    assert np.log10(step) == round(np.log10(step))


def test_a_coarser_dtype_gets_a_larger_step():
    assert cd.relative_step("float32") == pytest.approx(1e-3)
    assert cd.step_size(np.array([5.0]), "float32") == pytest.approx(5e-3)


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e6])
def test_full_gradient_of_a_smooth_function_is_exact_within_the_stated_accuracy(scale):
    base, moved, exact = _smooth(scale)
    numeric = cd.full_gradient(moved, base.shape, cd.step_size(base))
    assert numeric.shape == base.shape
    assert _relative_error(numeric, exact) < ACCURACY


def test_a_step_that_ignored_the_scale_would_miss_the_stated_accuracy():
    """Why the step grows with the value: at scale 1e3 a fixed step of 1e-6 errs ~2e-7."""
    base, moved, exact = _smooth(1e3)
    fixed = cd.full_gradient(moved, base.shape, cd.relative_step())
    assert _relative_error(fixed, exact) > 100 * ACCURACY


def test_a_quadratic_has_no_truncation_error():
    rng = np.random.default_rng(1)
    a, b, base = rng.standard_normal((4, 4)), rng.standard_normal(4), rng.standard_normal(4)
    a = a + a.T

    def moved(step: np.ndarray) -> float:
        v = base + step
        return float(0.5 * v @ a @ v + b @ v)

    numeric = cd.full_gradient(moved, base.shape, cd.step_size(base))
    np.testing.assert_allclose(numeric, a @ base + b, rtol=0, atol=ACCURACY)


def test_slopes_are_the_exact_directional_derivatives():
    base, moved, exact = _smooth(1.0)
    directions = cd.random_directions(base.shape, 5, np.random.default_rng(2))
    numeric = cd.slopes(moved, directions, cd.step_size(base))
    analytic = cd.along(exact, directions)
    assert numeric.shape == analytic.shape == (5,)
    assert _relative_error(numeric, analytic) < ACCURACY


# --- direction policy -------------------------------------------------------------------


def test_up_to_the_limit_the_whole_gradient_is_measured():
    base, moved, exact = _smooth(1.0)
    measured = cd.numeric_gradient(
        moved, base, np.random.default_rng(0), full_limit=base.size, directions=3
    )
    assert measured.full is not None and measured.directions == [] and measured.entries == 0
    assert _relative_error(measured.full, exact) < ACCURACY


def test_above_the_limit_random_directions_then_entries_are_sampled():
    base, moved, exact = _smooth(1.0)
    largest = np.zeros(base.shape)
    largest[2, 3], largest[5, 0] = -9.0, 7.0
    measured = cd.numeric_gradient(
        moved, base, np.random.default_rng(0), full_limit=base.size - 1, directions=4,
        entries=5, largest_of=largest,
    )  # fmt: skip
    assert measured.full is None
    assert len(measured.directions) == 9 and measured.entries == 5
    random, singles = measured.directions[:4], measured.directions[4:]
    assert all(np.count_nonzero(d) == d.size for d in random)  # every entry weighs in
    assert all(np.count_nonzero(d) == 1 and d.sum() == 1.0 for d in singles)
    assert singles[0][2, 3] == 1.0 and singles[1][5, 0] == 1.0  # the largest first
    assert _relative_error(measured.slopes, cd.along(exact, measured.directions)) < ACCURACY


def test_sampled_directions_are_seeded_and_reproducible():
    base, moved, _ = _smooth(1.0)

    def sample(seed: int) -> cd.NumericGradient:
        return cd.numeric_gradient(
            moved, base, np.random.default_rng(seed), full_limit=0, directions=3, entries=2
        )

    first, again, other = sample(7), sample(7), sample(8)
    for d, e in zip(first.directions, again.directions, strict=True):
        np.testing.assert_array_equal(d, e)
    np.testing.assert_array_equal(first.slopes, again.slopes)
    assert not np.array_equal(first.directions[0], other.directions[0])


def test_random_directions_are_standard_normal_draws_in_order():
    directions = cd.random_directions((2, 3), 2, np.random.default_rng(5))
    expected = np.random.default_rng(5).standard_normal((2, 2, 3))
    np.testing.assert_array_equal(np.stack(directions), expected)


# --- functions that raise or return non-finite values -------------------------------------


def test_an_error_the_function_raises_is_passed_on_unchanged():
    def moved(step: np.ndarray) -> float:
        if step[1] != 0:
            raise ZeroDivisionError("entry 1 moved")
        return float(np.sum(step))

    with pytest.raises(ZeroDivisionError, match="entry 1 moved"):
        cd.full_gradient(moved, (3,), 1e-6)


def test_a_non_finite_value_stays_non_finite_where_it_was_met():
    def moved(step: np.ndarray) -> float:
        return np.nan if step[1] > 0 else float(np.sum(2.0 * step))

    numeric = cd.full_gradient(moved, (3,), 1e-6)
    assert np.isnan(numeric[1])
    np.testing.assert_allclose(numeric[[0, 2]], 2.0, rtol=1e-9)
    assert np.isnan(cd.slope(moved, np.ones(3), 1e-6))


def test_loss_fn_is_put_back_after_a_step_even_when_it_raises():
    setup = function_setup(None, 0, numeric=True)
    params = setup["params"]
    calls = {"n": 0}

    def fails_once_moved(p, x, y):
        calls["n"] += 1
        if calls["n"] > 1:
            raise ValueError("moved")
        return cross_entropy(p, x, y)

    loss = NumericLoss(fails_once_moved, params, params, setup["x"], setup["target"])
    with pytest.raises(gp.InputError, match="raised ValueError"):
        loss.moving("W1")(np.ones(params["W1"].shape))
    np.testing.assert_array_equal(loss.work["W1"], params["W1"])


def _numeric_setup_failing_when(moved_only: str, failure) -> dict:
    """The corpus network without a reference, loss_fn calling ``failure()`` when parameter
    ``moved_only`` alone has moved (so the check that loss_fn uses its params still passes)."""
    setup = function_setup(None, 0, numeric=True)
    original = {k: v.copy() for k, v in setup["params"].items()}

    def loss_fn(p, x, y):
        moved = {k for k in p if not np.array_equal(p[k], original[k])}
        return failure() if moved == {moved_only} else cross_entropy(p, x, y)

    return {**setup, "loss_fn": loss_fn}


def _raise():
    raise ArithmeticError("bad step")


def test_loss_fn_raising_at_a_step_is_one_line_naming_loss_fn():
    setup = _numeric_setup_failing_when("b3", _raise)
    with pytest.raises(gp.InputError) as info:
        gp.compare_function(**setup)
    message = str(info.value)
    assert "\n" not in message
    assert "loss_fn(params, x, target) raised ArithmeticError" in message and "bad step" in message


def test_loss_fn_non_finite_at_a_step_is_one_line_asking_for_a_finite_loss():
    setup = _numeric_setup_failing_when("b3", lambda: float("nan"))
    with pytest.raises(gp.InputError) as info:
        gp.compare_function(**setup)
    assert str(info.value) == "loss_fn returned nan; it must return a finite loss"
