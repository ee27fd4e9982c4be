"""The allowed error of a float32 run judged against an exact float64 gradient: the user's own
float32 rounding, measured per tensor.

The user's code runs twice, on their float32 arrays and on float64 copies
(``sides.float64_twin``). For correct code their float32 error against the exact gradient is
that drift (the float64 run's own rounding is ~1e-16 of it); a bug is in both runs, so it
shows on top of the drift. Each tensor's budget is ``DRIFT_FACTOR`` times its drift, at least
``FLOOR_ULPS`` float32 ulps of the tensor's scale (max|exact|). It is carried by the one
mismatch rule as ``Tolerance(rtol=budget / scale)``: the allowed error is the budget where the
exact value is 0, up to twice that at the largest element.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance, element_errors, tolerance_for
from gradparity.sides.float64_twin import float64_run
from gradparity.sides.function_run import UserRun

# A row's key: (layer, quantity), as the report's arrays are keyed.
Key = tuple[str, str]

# The float32 error may reach this multiple of the measured drift before it is called a bug.
DRIFT_FACTOR = 4.0
# The smallest budget, in float32 ulps (eps = 2**-23) of the tensor's scale: a tensor whose
# two runs happen to agree exactly still gets a few roundings' room.
FLOOR_ULPS = 8
FLOAT32_EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class Budget:
    """One tensor's allowance: ``drift`` max|float32 run - float64 run| (None when that is not
    rounding: see ``_drift``), ``scale`` max|exact| over its finite values, ``allowed`` the
    budget (absolute, where the exact value is 0)."""

    drift: float | None
    scale: float
    allowed: float

    def tolerance(self, rtol: float | None, atol: float | None) -> Tolerance:
        """The one mismatch rule carrying this budget; the user's rtol and atol, when given,
        are added to it."""
        if self.scale > 0:
            return Tolerance(self.allowed / self.scale + (rtol or 0.0), atol or 0.0, "float32")
        # An all-zero exact tensor has no scale: float32's default atol, which exists for it.
        zero_atol = max(self.allowed, tolerance_for("float32").atol)
        return Tolerance(rtol or 0.0, zero_atol + (atol or 0.0), "float32")

    def as_dict(self) -> dict:
        """The numbers a report shows beside the error."""
        return {"drift": self.drift, "scale": self.scale, "allowed": self.allowed}


def measured_budget(ours32: np.ndarray, ours64: np.ndarray | None, exact: np.ndarray) -> Budget:
    """The budget of one tensor: the user's float32 value ``ours32``, their float64 value
    ``ours64`` (None when that run did not make it) and the exact value (same shapes)."""
    finite = np.abs(exact[np.isfinite(exact)])
    scale = float(finite.max()) if finite.size else 0.0
    floor = FLOOR_ULPS * FLOAT32_EPS * scale
    drift = _drift(ours32, ours64, exact)
    allowed = floor if drift is None else max(DRIFT_FACTOR * drift, floor)
    return Budget(drift, scale, allowed)


def _drift(ours32: np.ndarray, ours64: np.ndarray | None, exact: np.ndarray) -> float | None:
    """max|ours32 - ours64|; None where it measures no rounding: no float64 value, another
    shape, a value finite in one run only (float32 overflow is a finding, not a budget), or a
    float64 run further from ``exact`` than the float32 one (the runs differ by more than
    rounding: state kept between calls, such as gradients added to a buffer)."""
    if ours64 is None or np.shape(ours32) != np.shape(ours64) or np.size(ours32) == 0:
        return None
    gap = element_errors(ours32, ours64)
    if not np.isfinite(gap).all():
        return None
    if np.shape(exact) == np.shape(ours32):
        worse = element_errors(ours64, exact).max() > element_errors(ours32, exact).max()
        if worse:
            return None
    return float(gap.max())


@dataclass
class RowTolerances:
    """The tolerance each row is judged by: its own where ``tolerances`` has its key (float32
    budgets), else ``default``; ``budgets`` are the measurements behind them."""

    default: Tolerance
    tolerances: dict[Key, Tolerance] = field(default_factory=dict)
    budgets: dict[Key, Budget] = field(default_factory=dict)

    def of(self, key: Key) -> Tolerance:
        """The tolerance of the row keyed ``key``."""
        return self.tolerances.get(key, self.default)

    def annotate(self, rows: list[Row]) -> list[str]:
        """Put each row's budget in its detail (``float32_budget``); the note showing every
        budget beside its row's error (none without budgets)."""
        shown = []
        for row in rows:
            budget = self.budgets.get((row.layer, row.quantity))
            if budget is None:
                continue
            row.detail["float32_budget"] = budget.as_dict()
            shown.append((_label(row), row.max_abs, budget))
        return [budget_note(shown)] if shown else []


def float32_tolerances(
    grads: Callable,
    params: Any,
    flat: dict[str, np.ndarray],
    run: UserRun,
    exact: Any,
    inputs: tuple[np.ndarray, np.ndarray],
    rtol: float | None,
    atol: float | None,
    fn: str,
) -> tuple[RowTolerances, list[str]]:
    """(the tolerance of every row of ``run``, a float32 run of ``grads`` at ``inputs`` (x,
    target), against ``exact`` (``autodiff.ExactRun``), notes): the measured budgets, or the
    fixed float32 tolerance, with a note, when the code does not run in float64."""
    twin = float64_run(grads, params, flat, *inputs)
    if twin.grads is None:
        fixed = tolerance_for("float32", rtol, atol)
        error = twin.error or {}
        return RowTolerances(fixed), [
            f"float32: your code raised when run in float64 ({error.get('type')}: "
            f"{error.get('message')}), so its own rounding was not measured; the fixed float32 "
            f"tolerance (rtol {fixed.rtol:g}, atol {fixed.atol:g}) was used"
        ]
    measured = [
        ((fn, f"grad:{n}"), v, twin.grads.get(n), exact.grads.get(n))
        for n, v in (run.grads or {}).items()
    ]
    measured += [
        ((n, "output"), v, twin.taps.get(n), exact.taps.get(n)) for n, v in run.taps.items()
    ]
    measured += [
        ((n, "grad_output"), v, twin.grad_taps.get(n), exact.tap_grads.get(n))
        for n, v in run.grad_taps.items()
    ]
    budgets = {
        key: measured_budget(ours, ours64, theirs)
        for key, ours, ours64, theirs in measured
        if theirs is not None
    }
    return RowTolerances(
        widest(budgets, rtol, atol),
        {key: b.tolerance(rtol, atol) for key, b in budgets.items()},
        budgets,
    ), []


def _label(row: Row) -> str:
    return row.quantity if row.type == "parameter" else f"tap {row.layer} ({row.quantity})"


def widest(budgets: Mapping[Any, Budget], rtol: float | None, atol: float | None) -> Tolerance:
    """The report's single tolerance: the loosest of the per-tensor ones (each row was judged
    by its own)."""
    tolerances = [b.tolerance(rtol, atol) for b in budgets.values()]
    return Tolerance(
        rtol=max((t.rtol for t in tolerances), default=0.0),
        atol=max((t.atol for t in tolerances), default=0.0),
        dtype="float32",
    )


def budget_note(shown: list[tuple[str, float | None, Budget]]) -> str:
    """One line: each tensor's float32 budget beside its error against the exact gradient
    (``shown``: (what, error, budget))."""
    parts = [
        f"{what} {_g(error)} of {b.allowed:.3g}"
        + ("" if b.drift is not None else " (floor: the float64 run measured no rounding)")
        for what, error, b in shown
    ]
    return (
        f"float32 judged by your own rounding: your code was run again in float64; each "
        f"tensor may differ from the exact gradient by {DRIFT_FACTOR:g}x its float32-vs-float64 "
        f"drift (at least {FLOOR_ULPS} float32 ulps of its scale). Error of budget: "
        + "; ".join(parts)
    )


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
