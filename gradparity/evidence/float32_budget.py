"""The allowed error of a float32 run judged against an exact float64 gradient: the user's own
float32 rounding, measured per tensor.

The user's code runs twice, on their float32 arrays and on float64 copies
(``sides.float64_twin``): the whole ``grads`` function (``float32_tolerances``), or each
isolated layer probe of layered code (``layer_tolerances``). For correct code their float32
error against the exact gradient is that drift (the float64 run's own rounding is ~1e-16 of
it); a bug is in both runs, so it shows on top of the drift. Each tensor's budget is
``DRIFT_FACTOR`` times its drift, at least ``FLOOR_ULPS`` float32 ulps of the tensor's scale
(max|exact|). It is carried by the one mismatch rule as ``Tolerance(rtol=budget / scale)``:
the allowed error is the budget where the exact value is 0, up to twice that at the largest
element.

Against a torch twin (``sides.reference_twin``) the drift is the reference's, whose kernels
may round less than any float32 implementation must (a fused sum of products), so a budget
there also adds the tensor's ``conditioning``: how far it moves when the layer's operands are
rounded once more (nudged by one relative float32 ulp). Here the reference is the exact
gradient of the user's own code and the drift is their own rounding, which holds that
already: no conditioning is added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gradparity.core.address import Address, Kind
from gradparity.core.plan import Entry, TensorPair
from gradparity.core.records import LayerRecord
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance, element_errors, tolerance_for
from gradparity.sides.float64_twin import float64_run
from gradparity.sides.function_run import UserRun

# A row's key: (layer, quantity), as the report's arrays are keyed; (mode, layer, quantity)
# where one report holds the same tensor in chain and isolate mode (``compare``'s).
Key = tuple[str, ...]

# The float32 error may reach this multiple of the measured drift before it is called a bug.
DRIFT_FACTOR = 4.0
# The smallest budget, in float32 ulps (eps = 2**-23) of the tensor's scale: a tensor whose
# two runs happen to agree exactly still gets a few roundings' room.
FLOOR_ULPS = 8
FLOAT32_EPS = float(np.finfo(np.float32).eps)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32
NO_ROWS = Tolerance(0.0, 0.0, "float32")  # the report's tolerance when no row was measured
# A drift above this fraction of the tensor's magnitude (~8000 float32 ulps) is not rounding: a
# random draw (a dropout mask not shared), or code computing something else in float64. One
# isolated zoo layer's rounding stayed below 1e-5 of it (3 seeds at input scales 1e-3 to 1e3).
NOT_ROUNDING = 2.0**-10


@dataclass(frozen=True)
class Budget:
    """One tensor's allowance: ``drift`` max|float32 run - float64 run| (None when that is not
    rounding: see ``_drift``), ``scale`` max|exact| over its finite values, ``allowed`` the
    budget (absolute, where the exact value is 0)."""

    drift: float | None
    scale: float
    allowed: float
    # In a chain, what the error the layer received from upstream accounts for (None: none
    # measured), included in ``allowed``.
    received: float | None = None
    # Against a torch twin, what one float32 rounding of the operands makes of the tensor
    # (None: not measured), included in ``allowed``.
    conditioning: float | None = None

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
        shown = {"drift": self.drift, "scale": self.scale, "allowed": self.allowed}
        if self.conditioning is not None:
            shown["conditioning"] = self.conditioning
        return shown if self.received is None else {**shown, "received": self.received}


def measured_budget(
    ours32: np.ndarray,
    ours64: np.ndarray | None,
    exact: np.ndarray,
    operands: float = 0.0,
    conditioning: float | None = None,
) -> Budget:
    """The budget of one tensor: the user's float32 value ``ours32``, their float64 value
    ``ours64`` (None when that run did not make it) and the exact value (same shapes).
    ``operands``: the largest magnitude the tensor was computed from, where that can exceed
    its own (an upstream gradient times a derivative that cancels to ~0): the floor's ulps
    are then taken of it. ``conditioning``: what one float32 rounding of its operands makes
    of it (None: not measured), added to the budget."""
    scale = largest(exact)
    floor = FLOOR_ULPS * FLOAT32_EPS * max(scale, operands)
    drift = _drift(ours32, ours64, exact)
    allowed = floor if drift is None else max(DRIFT_FACTOR * drift, floor)
    # The reference's kernel may round less than an honest float32 implementation must (a
    # fused sum rounds its products once): what rounding the operands once makes is added.
    allowed += conditioning or 0.0
    return Budget(drift, scale, allowed, conditioning=conditioning)


def reference_budget(
    ref32: np.ndarray,
    ref64: np.ndarray,
    operands: float = 0.0,
    conditioning: float | None = None,
) -> Budget:
    """The budget of one tensor judged against a torch reference: the reference's float32
    value ``ref32`` against its float64 twin's ``ref64`` (same shape), which stands in for the
    exact value. Its scale is the float32 reference's, which the mismatch rule meets: where
    that is all 0 (a derivative rounded to 0), the budget is an absolute one. ``operands``
    and ``conditioning`` as in ``measured_budget``."""
    measured = measured_budget(ref32, ref64, ref64, operands, conditioning)
    return replace(measured, scale=largest(ref32))


def largest(values: np.ndarray) -> float:
    """max|values| over the finite ones (0 when there is none)."""
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size else 0.0


def beyond_rounding(drift: float | None, magnitude: float) -> bool:
    """Whether a measured ``drift`` (None: none measured) is far more than float32 rounding
    of values up to ``magnitude`` (the largest the tensor, or what it was computed from,
    holds in either run) could make, so that it must not widen a budget. A drift below
    float32's smallest normal number is underflow (a sigmoid's 1e-147 is 0 in float32), which
    is rounding whatever the magnitude."""
    return drift is not None and drift > max(NOT_ROUNDING * magnitude, FLOAT32_TINY)


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
    budgets), else ``default``; ``budgets`` are the measurements behind them. ``by_mode``:
    keys are (mode, layer, quantity); ``judged_by``: how the note says the drift was measured."""

    default: Tolerance
    tolerances: dict[Key, Tolerance] = field(default_factory=dict)
    budgets: dict[Key, Budget] = field(default_factory=dict)
    by_mode: bool = False
    judged_by: str = ""

    def of(self, key: Key) -> Tolerance:
        """The tolerance of the row keyed ``key``."""
        return self.tolerances.get(key, self.default)

    def annotate(self, rows: list[Row]) -> list[str]:
        """Put each row's budget in its detail (``float32_budget``); the note showing every
        budget beside its row's error (none without budgets)."""
        shown = []
        for row in rows:
            key = (row.mode, row.layer, row.quantity) if self.by_mode else (row.layer, row.quantity)
            budget = self.budgets.get(key)
            if budget is None:
                continue
            row.detail["float32_budget"] = budget.as_dict()
            label = f"{row.mode} {_label(row)}" if self.by_mode else _label(row)
            shown.append((label, row.max_abs, budget))
        return [budget_note(shown, self.judged_by or OWN_ROUNDING)] if shown else []


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
        return RowTolerances(fixed), [_fixed_note("your code", _raised(twin.error), fixed)]
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
    budgets: dict[Key, Budget] = {
        key: measured_budget(ours, ours64, theirs)
        for key, ours, ours64, theirs in measured
        if theirs is not None
    }
    tolerances: dict[Key, Tolerance] = {key: b.tolerance(rtol, atol) for key, b in budgets.items()}
    return RowTolerances(widest(tolerances.values()), tolerances, budgets), []


def layer_tolerances(
    entries: list[Entry],
    twins: Mapping[str, LayerRecord],
    rtol: float | None,
    atol: float | None,
) -> tuple[RowTolerances, list[str]]:
    """(the tolerance of every tensor pair of ``entries``, the gradients of isolated float32
    layer probes against the exact gradient, notes): each pair's budget measured against its
    layer's float64 probe in ``twins`` (layer name, or "loss", -> its record); for a layer
    whose float64 probe raised or gave no float64 values, the fixed float32 tolerance and a
    note naming the layer."""
    fixed = tolerance_for("float32", rtol, atol)
    tolerances: dict[Key, Tolerance] = {}
    budgets: dict[Key, Budget] = {}
    unmeasured: dict[str, str] = {}  # layer -> why its rounding was not measured
    for entry in entries:
        if not isinstance(entry, TensorPair) or entry.ours is None:
            continue  # a row already judged (raised, missing)
        key = (entry.layer, entry.quantity)
        twin = twins.get(entry.layer)
        why = _unmeasured(twin)
        if twin is None or why is not None:
            unmeasured.setdefault(entry.layer, why or "did not run")
            tolerances[key] = fixed
            continue
        ours64 = _record_value(twin, entry.quantity)
        budgets[key] = measured_budget(entry.ours, ours64, entry.reference)
        tolerances[key] = budgets[key].tolerance(rtol, atol)
    notes = [_fixed_note(f"layer {name!r}", why, fixed) for name, why in unmeasured.items()]
    return RowTolerances(widest(tolerances.values(), fixed), tolerances, budgets), notes


def _unmeasured(twin: LayerRecord | None) -> str | None:
    """Why a layer's float64 probe measures no rounding (None when it does): it raised, or a
    gradient came back in another float type (the layer casts back to float32)."""
    if twin is None:
        return None
    if twin.error is not None:
        return _raised(twin.error)
    values = [twin.grad_input, *twin.grads.values()]
    cast = sorted({str(v.dtype) for v in values if v is not None and v.dtype.kind == "f"})
    if cast != ["float64"]:
        return f"gave {', '.join(cast) or 'no float'} gradients"
    return None


def _record_value(rec: LayerRecord, quantity: str) -> np.ndarray | None:
    """A record's "grad_input" or "grad:<key>" (None when it has no such gradient)."""
    address = Address.parse(quantity)
    if address.kind is Kind.GRAD_INPUT:
        return rec.grad_input
    return rec.grads.get(address.name or "")


def _raised(error: dict | None) -> str:
    """What code that raised did, in one line (the message's first)."""
    error = error or {}
    first = str(error.get("message", "")).splitlines()[:1]
    return f"raised ({error.get('type')}: {''.join(first)})"


def _fixed_note(what: str, why: str, fixed: Tolerance) -> str:
    """The note of code whose float64 run measured no rounding (``why``: what it did)."""
    return (
        f"float32: {what} {why} when run in float64, so its own rounding was not measured; "
        f"the fixed float32 tolerance (rtol {fixed.rtol:g}, atol {fixed.atol:g}) was used"
    )


def _label(row: Row) -> str:
    """How the budget note names a row: a function's parameter by its name, a tap as a tap,
    a layer's gradient as "layer quantity"."""
    if row.type == "parameter":
        return row.quantity
    if row.type == "tap":
        return f"tap {row.layer} ({row.quantity})"
    return f"{row.layer} {row.quantity}"


def widest(tolerances: Iterable[Tolerance], empty: Tolerance = NO_ROWS) -> Tolerance:
    """The report's single tolerance: the loosest rtol and atol of the per-row ones (each row
    was judged by its own); ``empty`` when there is none."""
    given = list(tolerances)
    if not given:
        return empty
    return Tolerance(
        rtol=max(t.rtol for t in given), atol=max(t.atol for t in given), dtype="float32"
    )


OWN_ROUNDING = (
    "float32 judged by your own rounding: your code was run again in float64; each tensor may "
    "differ from the exact gradient by"
)


def budget_note(
    shown: list[tuple[str, float | None, Budget]], judged_by: str = OWN_ROUNDING
) -> str:
    """One line: each tensor's float32 budget beside its error (``shown``: (what, error,
    budget)); ``judged_by`` opens it, saying whose run was repeated in float64 and against
    what the error is taken."""
    parts = [
        f"{what} {_g(error)} of {b.allowed:.3g}"
        + ("" if b.drift is not None else " (floor: the float64 run measured no rounding)")
        for what, error, b in shown
    ]
    return (
        f"{judged_by} {DRIFT_FACTOR:g}x its float32-vs-float64 "
        f"drift (at least {FLOOR_ULPS} float32 ulps of its scale). Error of budget: "
        + "; ".join(parts)
    )


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
