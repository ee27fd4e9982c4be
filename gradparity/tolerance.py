"""How close is close enough: per-dtype tolerances for comparing ours against reference.

An element ``i`` of a tensor pair (ours ``o``, reference ``r``) mismatches when

    |o_i - r_i| > rtol * |r_i| + rtol * scale + atol

where ``scale = max|r|`` is the reference tensor's largest magnitude. The ``rtol * scale``
term makes the test normwise: round-off in a sum grows with the size of its terms, not with
the (possibly cancelled) result, so an element that is tiny only because of cancellation is
not flagged. ``atol`` only matters for all-zero reference tensors.

Float64 figures from ``benchmarks/tolerance.py``: on correct code (5072 tensors) the largest
NumPy-vs-torch difference is 4.8e-8 of the allowed error; the smallest error any value-changing
bug of the self-test corpus makes is 2.4e6 times the allowed error. ``rtol = 1e-7`` leaves
about seven orders of magnitude of margin on one side and six on the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Elementwise tolerance; see the module docstring for the test it defines."""

    rtol: float
    atol: float
    dtype: str

    def allowed(self, ref: np.ndarray) -> np.ndarray:
        """Allowed absolute error per element of ``ref`` (same shape as ``ref``)."""
        mag = np.abs(ref)
        scale = float(mag.max()) if mag.size else 0.0
        return self.rtol * mag + self.rtol * scale + self.atol

    def as_dict(self) -> dict:
        return asdict(self)


_DEFAULTS = {
    "float64": Tolerance(rtol=1e-7, atol=1e-12, dtype="float64"),
    # float32 round-off of a few hundred-term sums is ~1e-6 relative; calibrated against a
    # float64 run in the float32 issue, until then a conservative bound.
    "float32": Tolerance(rtol=1e-4, atol=1e-7, dtype="float32"),
}


def tolerance_for(dtype: str, rtol: float | None = None, atol: float | None = None) -> Tolerance:
    """The default tolerance of ``dtype`` ("float64" or "float32"), optionally overridden."""
    if dtype not in _DEFAULTS:
        raise ValueError(f"dtype must be 'float64' or 'float32', not {dtype!r}")
    base = _DEFAULTS[dtype]
    return Tolerance(
        rtol=base.rtol if rtol is None else float(rtol),
        atol=base.atol if atol is None else float(atol),
        dtype=dtype,
    )
