"""A parameter gradient off by a multiple of the parameter itself: a weight-decay term
(``weight_decay``). Used by ``compare_function`` (against torch and against central
differences) and by ``compare`` (``weight_decay_probe`` over the isolate run)."""

from __future__ import annotations

import numpy as np

from gradparity.core.labels import UNEXPLAINED, WEIGHT_DECAY
from gradparity.core.plan import Context
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.sides.adapt import params_of


def penalty_factor(
    ours: np.ndarray, ref: np.ndarray, param: np.ndarray, tol: Tolerance
) -> float | None:
    """The c with ``ours`` matching ``ref + c * param`` under ``tol`` (least squares, c != 0),
    else None. ours, ref, param: one shape (the parameter's)."""
    if not (np.shape(ours) == np.shape(ref) == np.shape(param)):
        return None
    o, r, p = (np.asarray(a, dtype=np.float64) for a in (ours, ref, param))
    if not (np.isfinite(o).all() and np.isfinite(r).all() and np.isfinite(p).all()):
        return None
    norm = float(np.vdot(p, p))
    c = float(np.vdot(o - r, p)) / norm if norm > 0 else 0.0
    if c == 0.0 or not tol.matches(o, r + c * p):
        return None
    return c


def explain_penalty(
    row: Row, ours: np.ndarray, ref: np.ndarray, param: np.ndarray, tol: Tolerance
) -> None:
    """Label an unexplained parameter gradient that is off by exactly c times the parameter
    ``weight_decay``: a weight-decay (L2) term missing, extra or with another factor."""
    if row.diagnosis != UNEXPLAINED:
        return
    c = penalty_factor(ours, ref, param, tol)
    if c is None:
        return
    name = row.address.name
    term = f"{abs(c):.3g} * {name}"
    row.diagnosis = WEIGHT_DECAY
    # "penalty_factor" is the key earlier reports wrote; "c" is the label's own.
    row.detail.update(c=c, penalty_factor=c)
    row.message = (
        f"ours minus the reference is {c:.3g} times {name} itself: a weight-decay (L2) term "
        "differs (the gradient of 0.5 * reg * sum(W**2) is reg * W)"
    )
    penalty = f"0.5 * {abs(c):.3g} * sum({name}**2)"
    row.fix = (
        f"remove the L2 term {term} from the gradient of {name} (or add {penalty} to the "
        "loss, on both sides)"
        if c > 0
        else f"add the L2 term {term} to the gradient of {name}, as the loss's {penalty} "
        "needs (or remove that term from the loss, on both sides)"
    )


def weight_decay_probe(ctx: Context) -> None:
    """``compare``'s evidence step: each diverging isolate ``grad:<param>`` row that is off by
    c times the layer's parameter value (ours' layout) is ``weight_decay``."""
    probes = ctx.captures["probes"]
    for row in ctx.rows_of("isolate"):
        key = row.address.name
        if not row.diverged or not row.quantity.startswith("grad:") or key is None:
            continue
        values = ctx.arrays.get((row.layer, row.quantity), {})
        param = params_of(probes[row.layer].pair.layer).get(key)
        if "ours" in values and param is not None:
            explain_penalty(row, values["ours"], values["reference"], param, ctx.tolerance)
