"""How close is close enough: per-dtype tolerances for comparing ours against reference.

An element ``i`` of a tensor pair (ours ``o``, reference ``r``) mismatches when

    |o_i - r_i| > rtol * |r_i| + rtol * scale + atol

where ``scale = max|r|`` is the reference tensor's largest magnitude. The ``rtol * scale``
term makes the test normwise: round-off in a sum grows with the size of its terms, not with
the (possibly cancelled) result, so an element that is tiny only because of cancellation is
not flagged. ``atol`` only matters for all-zero reference tensors. Non-finite values match
only the same value on the other side (inf against inf); the allowance is computed as if they
were 0. ``Tolerance.errors`` is this rule, and every stage, renderer and plot asks it.

Float64 figures from ``benchmarks/tolerance.py``: on correct code (5072 tensors) the largest
NumPy-vs-torch difference is 6.1e-8 of the allowed error; the smallest error any value-changing
bug of the self-test corpus makes is 2.4e6 times the allowed error. ``rtol = 1e-7`` leaves
about seven orders of magnitude of margin on one side and six on the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# An error below this fraction of the allowed error is recorded as exactly 0 (the noise floor of
# ``metrics.tensor_diff``). Round-off that moves with the BLAS kernel, the CPU and the thread
# count lives far below it (correct code measures at most 6.1e-8 of the allowed error:
# benchmarks/tolerance.py), so the statistics of a matching tensor are the same on any machine.
NOISE_FLOOR = 1e-3
# float32's round-off on correct code reaches 1.26e-2 of its allowed error (benchmarks/
# tolerance.py): its floor sits 7.9 times above that, so float32 reports are the same on any
# machine too.
NOISE_FLOORS = {"float64": NOISE_FLOOR, "float32": 0.1}


@dataclass(frozen=True)
class Tolerance:
    """Elementwise tolerance; see the module docstring for the test it defines.

    ``noise_floor``: errors below this fraction of the allowed error are recorded as 0; None
    means the dtype's entry of ``NOISE_FLOORS``. A comparison whose reference carries its own
    error (central differences) sets a higher one.
    """

    rtol: float
    atol: float
    dtype: str
    noise_floor: float | None = None

    def allowed(self, ref: np.ndarray) -> np.ndarray:
        """Allowed absolute error per element of ``ref`` (finite, any shape; same shape out)."""
        mag = np.abs(ref)
        scale = float(mag.max()) if mag.size else 0.0
        return self.rtol * mag + self.rtol * scale + self.atol

    def errors(self, ours: np.ndarray, ref: np.ndarray) -> ElementErrors:
        """The error and the allowance of every element of ours against ``ref`` (same shape,
        compared in float64)."""
        r = np.asarray(ref, dtype=np.float64)
        finite_r = r if np.isfinite(r).all() else np.where(np.isfinite(r), r, 0.0)
        return ElementErrors(element_errors(ours, r), self.allowed(finite_r), self.floor())

    def mismatch(self, ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Boolean mask (``ref``'s shape) of the elements of ours out of tolerance."""
        return self.errors(ours, ref).mismatch

    def matches(self, ours: np.ndarray, ref: np.ndarray) -> bool:
        """Equal shapes and no element out of tolerance."""
        return np.shape(ours) == np.shape(ref) and not self.mismatch(ours, ref).any()

    def floor(self) -> float:
        """The noise floor in force, as a fraction of the allowed error."""
        if self.noise_floor is not None:
            return self.noise_floor
        return NOISE_FLOORS.get(self.dtype, NOISE_FLOOR)

    def as_dict(self) -> dict:
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "dtype": self.dtype,
            "noise_floor": self.floor(),
        }


@dataclass(frozen=True)
class ElementErrors:
    """Per-element errors of ours against the reference, as ``Tolerance.errors`` measures them.

    error: |ours - ref|, 0 where both hold the same non-finite value, inf where either is NaN
    or only one is infinite; allowed: the allowed error there; floor: the noise floor, a
    fraction of the allowed error. All arrays have the compared tensors' shape.
    """

    error: np.ndarray
    allowed: np.ndarray
    floor: float

    @property
    def mismatch(self) -> np.ndarray:
        """The one mismatch rule: an element is out of tolerance when its error exceeds what is
        allowed there."""
        return self.error > self.allowed

    def above_floor(self) -> np.ndarray:
        """``error`` with the errors below the noise floor set to exactly 0: what is recorded,
        so a matching tensor gives the same statistics on any machine."""
        return np.where(self.error < self.floor * self.allowed, 0.0, self.error)


def element_errors(ours: np.ndarray | float, ref: np.ndarray | float) -> np.ndarray:
    """|ours - ref| per element in float64 (same shape as both): 0 where both hold the same
    non-finite value, inf where either is NaN or only one is infinite."""
    o = np.asarray(ours, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(o - r)
    if np.isfinite(error).all():  # the common case, kept cheap: both sides finite
        return error
    error = np.where(~np.isfinite(o) & (o == r), 0.0, error)
    return np.where(np.isnan(error), np.inf, error)


def ratio_to_allowed(error: np.ndarray | float, allowed: np.ndarray | float) -> np.ndarray:
    """``error / allowed`` per element: 0 where both are 0 (no error), inf where only the
    allowance is 0; above 1 means out of tolerance."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.divide(error, allowed)
    return np.where(np.isnan(ratio), 0.0, ratio)


_DEFAULTS = {
    "float64": Tolerance(rtol=1e-7, atol=1e-12, dtype="float64"),
    # float32 round-off of a few hundred-term sums is ~1e-6 relative; calibrated against a
    # float64 run in the float32 issue, until then a conservative bound.
    "float32": Tolerance(rtol=1e-4, atol=1e-7, dtype="float32"),
}


def tolerance_for(dtype: str, rtol: float | None = None, atol: float | None = None) -> Tolerance:
    """The default tolerance of ``dtype`` (a name in ``validate.DTYPES``), optionally
    overridden."""
    if dtype not in _DEFAULTS:
        names = " or ".join(repr(name) for name in _DEFAULTS)
        raise ValueError(f"dtype must be {names}, not {dtype!r}")
    base = _DEFAULTS[dtype]
    return Tolerance(
        rtol=base.rtol if rtol is None else float(rtol),
        atol=base.atol if atol is None else float(atol),
        dtype=dtype,
    )
