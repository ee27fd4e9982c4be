"""A parameter gradient off by a multiple of the parameter itself: a weight-decay term."""

from __future__ import annotations

import numpy as np

from gradparity.core.labels import UNEXPLAINED
from gradparity.core.metrics import tensor_diff
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance


def explain_penalty(
    row: Row, ours: np.ndarray, ref: np.ndarray, param: np.ndarray, tol: Tolerance
) -> None:
    """An unexplained parameter gradient that is off by exactly c times the parameter: a
    weight-decay (L2) term missing, extra or with another factor."""
    shapes = {np.shape(ours), np.shape(ref), np.shape(param)}
    if row.diagnosis != UNEXPLAINED or len(shapes) != 1:
        return
    p = np.asarray(param, dtype=np.float64)
    norm = float(np.vdot(p, p))
    c = float(np.vdot(ours - ref, p)) / norm if norm > 0 else 0.0
    if c == 0.0 or not tensor_diff(ours, ref + c * p, tol).ok:
        return
    name = row.address.name
    row.detail["penalty_factor"] = c
    row.message = (
        f"ours minus the reference is {c:.3g} times {name} itself: a weight-decay (L2) term "
        "differs (the gradient of 0.5 * reg * sum(W**2) is reg * W)"
    )
    row.fix = (
        "check the reg * W term: in both the loss and its gradient, once, with the same factor "
        "(and in the reference's loss when it has one)"
    )
