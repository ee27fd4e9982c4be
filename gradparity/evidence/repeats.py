"""The one stale/accumulated detector: does a diverging value repeat an earlier one?

Every front end runs ours' code on an earlier input first (a warm-up call, or the previous
training step), so a value computed from old state shows up as equal to the right value for
that earlier input (``stale``), and gradients added to across calls as equal to the sum of the
right values so far (``accumulated``).
"""

from __future__ import annotations

import numpy as np

from gradparity.core.metrics import tensor_diff
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance


def _matches(ours: np.ndarray, candidate: np.ndarray | None, tol: Tolerance) -> bool:
    return (
        candidate is not None
        and np.shape(ours) == np.shape(candidate)
        and tensor_diff(np.asarray(ours), np.asarray(candidate), tol).ok
    )


def repeat_label(
    ours: np.ndarray | None,
    now: np.ndarray | None,
    earlier: np.ndarray | None,
    earlier_sum: np.ndarray | None,
    tol: Tolerance,
) -> str | None:
    """ "stale" when ``ours`` equals ``earlier`` (the right value for the previous input),
    "accumulated" when it equals ``now + earlier_sum`` (the right value for this input plus
    the right values of every earlier one), else None. All arrays in ours' layout; None for
    a value that does not exist (``earlier_sum`` None: accumulation is not possible here)."""
    if ours is None:
        return None
    if _matches(ours, earlier, tol):
        return "stale"
    if now is None or earlier_sum is None or np.shape(now) != np.shape(earlier_sum):
        return None
    return "accumulated" if _matches(ours, np.asarray(now) + np.asarray(earlier_sum), tol) else None


_REPEAT_WORDS = {
    "stale": (
        "equals the right value for the previous call's input: the function used values "
        "cached by an earlier call",
        "recompute every cached activation on each call",
    ),
    "accumulated": (
        "equals the sum of the right gradients for this call and the previous one: "
        "gradients are added to across calls",
        "start each call from zero gradients (np.zeros_like(p) for every p)",
    ),
}


def mark_repeat(
    row: Row, ours: np.ndarray, now: np.ndarray, old: np.ndarray, tol: Tolerance
) -> None:
    """Relabel a diverging value ``stale`` (it equals ``old``, the right value for the
    previous call's input) or ``accumulated`` (it equals ``now + old``)."""
    label = repeat_label(ours, now, old, old, tol)
    if label is not None:
        row.diagnosis = label
        row.message, row.fix = _REPEAT_WORDS[label]
