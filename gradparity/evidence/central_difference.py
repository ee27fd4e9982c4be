"""The one central-difference engine: the numeric gradient of a scalar function of one array.

Both referees use it: compare's (each side's own forward, ``referee``) and
``compare_function``'s without a reference (the user's ``loss_fn``, ``function_numeric``).

A function is given as ``moved(step)``: its value at the base point moved by ``step``, an
array of the base's shape. The caller applies the step where the value lives (a copy of a
NumPy layer, a torch parameter in its own layout, a working copy of the user's parameters),
so this module needs to know none of them. An error ``moved`` raises propagates unchanged and
a non-finite value comes back as such: each referee decides what they mean.

**Step policy** (``step_size``): h = r * max(1, max |base|) with r the power of ten at or
below eps ** (1/3) of the dtype the function is evaluated in (1e-6 in float64). Central
differences err by h**2 * f''' / 6 (truncation) plus about eps * |f| / h (rounding);
eps ** (1/3) balances the two when f''' is of the order of f, and losses curve faster than
that (a sigmoid or softmax of scores of a few units), so the step is taken below it. Scaling
by the largest value keeps the step relative for large values; the floor of 1 keeps it from
vanishing for values at or near zero (biases start at zero), at the price of a coarse step for
values all much smaller than 1 (errs ~2e-6 relative at a scale of 1e-3).

**Direction policy** (``random_directions``, ``sampled_directions``): a gradient of at most
``full_limit`` entries is measured entry by entry; a larger one along directions of
independent standard normal entries drawn from the caller's seeded generator (every entry
weighs in, so no wrong entry hides), optionally followed by single entries: the largest of a
given array (where a wrong gradient is most visible) and random others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Moved = Callable[[np.ndarray], float]


def relative_step(dtype: str | np.dtype = "float64") -> float:
    """The step relative to the value's scale for a function evaluated in ``dtype``: the power
    of ten at or below eps ** (1/3) (1e-6 in float64, 1e-3 in float32)."""
    cube_root = float(np.finfo(dtype).eps) ** (1.0 / 3.0)
    return 10.0 ** math.floor(math.log10(cube_root))


def step_size(base: np.ndarray, dtype: str | np.dtype = "float64") -> float:
    """The central-difference step at ``base`` (any shape): ``relative_step(dtype)`` times
    its largest magnitude, or times 1 where that is smaller."""
    return relative_step(dtype) * max(1.0, float(np.abs(base).max(initial=0.0)))


def slope(moved: Moved, direction: np.ndarray, h: float) -> float:
    """Central difference of ``moved`` along ``direction`` (the base's shape) with step ``h``:
    (f(base + h d) - f(base - h d)) / 2h, the directional derivative <grad, d>."""
    step = h * direction
    return (moved(step) - moved(-step)) / (2.0 * h)


def slopes(moved: Moved, directions: Sequence[np.ndarray], h: float) -> np.ndarray:
    """``slope`` along each of ``directions``: shape (len(directions),)."""
    return np.array([slope(moved, d, h) for d in directions], dtype=np.float64)


def unit(shape: tuple[int, ...], index: tuple[int | np.integer, ...]) -> np.ndarray:
    """The array of ``shape`` that is 1 at ``index`` and 0 elsewhere."""
    out = np.zeros(shape)
    out[index] = 1.0
    return out


def full_gradient(moved: Moved, shape: tuple[int, ...], h: float) -> np.ndarray:
    """The whole numeric gradient (``shape``), entry by entry: two calls of ``moved`` each."""
    out = np.zeros(shape)
    for index in np.ndindex(shape):
        out[index] = slope(moved, unit(shape, index), h)
    return out


def along(a: np.ndarray, directions: Sequence[np.ndarray]) -> np.ndarray:
    """The directional derivatives an analytic gradient ``a`` gives: <a, d> for each of
    ``directions`` (each of a's shape); shape (len(directions),)."""
    return np.array([float(np.sum(a * d)) for d in directions], dtype=np.float64)


def random_directions(
    shape: tuple[int, ...], count: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """``count`` directions of ``shape`` with independent standard normal entries, drawn
    from ``rng`` in order (the same seed gives the same directions)."""
    return [rng.standard_normal(shape) for _ in range(count)]


def sampled_directions(
    shape: tuple[int, ...],
    count: int,
    entries: int,
    rng: np.random.Generator,
    largest_of: np.ndarray | None = None,
) -> tuple[list[np.ndarray], int]:
    """(directions, how many of them are single entries): ``count`` random directions, then
    ``entries`` single entries of ``shape``: the ``entries // 2`` largest of ``largest_of``
    (when given, of ``shape``) and random others. Draws from ``rng`` in that order."""
    directions = random_directions(shape, count, rng)
    size = math.prod(shape)
    picks = [] if largest_of is None else list(np.argsort(-np.abs(largest_of.ravel())))
    picks = picks[: entries // 2]
    picks += list(rng.choice(size, size=entries - len(picks), replace=False))
    directions += [unit(shape, np.unravel_index(int(i), shape)) for i in picks]
    return directions, len(picks)


@dataclass(frozen=True)
class NumericGradient:
    """What central differences measured at the base point: the whole gradient (``full``,
    the base's shape), or derivatives (``slopes``, (k,)) along ``directions``, of which the
    last ``entries`` are single entries."""

    full: np.ndarray | None
    directions: list[np.ndarray]
    slopes: np.ndarray
    entries: int = 0


def numeric_gradient(
    moved: Moved,
    base: np.ndarray,
    rng: np.random.Generator,
    *,
    full_limit: int,
    directions: int,
    entries: int = 0,
    largest_of: np.ndarray | None = None,
    dtype: str | np.dtype = "float64",
) -> NumericGradient:
    """Central differences of ``moved`` at ``base`` (any shape) under the step policy: the
    whole gradient when ``base`` has at most ``full_limit`` entries, else sampled along
    ``sampled_directions(base.shape, directions, entries, rng, largest_of)``."""
    h = step_size(base, dtype)
    if base.size <= full_limit:
        return NumericGradient(full_gradient(moved, base.shape, h), [], np.zeros(0))
    picked, singles = sampled_directions(base.shape, directions, entries, rng, largest_of)
    return NumericGradient(None, picked, slopes(moved, picked, h), singles)
