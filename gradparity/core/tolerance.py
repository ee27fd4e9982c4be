"""How close is close enough: per-dtype tolerances for comparing ours against reference.

An element ``i`` of a tensor pair (ours ``o``, reference ``r``) mismatches when

    |o_i - r_i| > rtol * |r_i| + rtol * scale + atol

where ``scale = max|r|`` is the reference tensor's largest magnitude. The ``rtol * scale``
term makes the test normwise: round-off in a sum grows with the size of its terms, not with
the (possibly cancelled) result, so an element that is tiny only because of cancellation is
not flagged. ``atol`` only matters for all-zero reference tensors.

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
        """Allowed absolute error per element of ``ref`` (same shape as ``ref``)."""
        mag = np.abs(ref)
        scale = float(mag.max()) if mag.size else 0.0
        return self.rtol * mag + self.rtol * scale + self.atol

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
