"""Distance between one tensor of ours and the same tensor of the reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradparity.core.tolerance import Tolerance, ratio_to_allowed

# Elements whose error ratios agree to this relative precision are tied for "worst": the first
# of them is named, so the index does not depend on the last bits of a sum.
_TIE = 1e-6


@dataclass(frozen=True)
class TensorDiff:
    """Error statistics of ours against reference (both in ours' layout).

    ``worst_index`` is the element whose error is largest relative to what is allowed there;
    ``ours_at_worst`` and ``ref_at_worst`` are the two values at that element.
    """

    max_abs: float
    max_rel: float
    cosine: float
    mismatch_count: int
    numel: int
    worst_index: tuple[int, ...] | None
    ours_at_worst: float | None
    ref_at_worst: float | None
    allowed_at_worst: float | None

    @property
    def mismatch_frac(self) -> float:
        return self.mismatch_count / self.numel if self.numel else 0.0

    @property
    def ok(self) -> bool:
        return self.mismatch_count == 0


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two same-shape finite arrays; 1.0 when both are zero."""
    a = a.ravel().astype(np.float64)
    b = b.ravel().astype(np.float64)
    # Scaled by the largest magnitude first: the squares of values near 1e160 overflow.
    a = a / max(float(np.abs(a).max(initial=0.0)), np.finfo(np.float64).tiny)
    b = b / max(float(np.abs(b).max(initial=0.0)), np.finfo(np.float64).tiny)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def first_largest(values: np.ndarray) -> tuple[int, ...]:
    """The index of the first element of ``values`` (any shape, non-empty, no NaN) that ties
    for the largest to a relative ``_TIE``: which of several equal errors is named must not
    depend on the last bits of a sum, which move with the CPU and the thread count."""
    top = float(values.max())
    tied = values >= top - (abs(top) * _TIE if np.isfinite(top) else 0.0)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(tied)), values.shape))


def _allowed_and_error(
    o: np.ndarray, r: np.ndarray, tol: Tolerance
) -> tuple[np.ndarray, np.ndarray] | None:
    """(allowed, |o - r|) by ``Tolerance``'s rule for float64 arrays whose reference is finite;
    None when it is not (the general rule then handles the non-finite values)."""
    mag = np.abs(r)
    scale = float(mag.max())
    if not np.isfinite(scale):
        return None
    allowed = tol.rtol * mag + tol.rtol * scale + tol.atol  # the order Tolerance.allowed sums in
    return allowed, np.abs(o - r)


def within_tolerance(ours: np.ndarray, ref: np.ndarray, tol: Tolerance) -> bool:
    """No element of ours out of ``tol`` against ``ref`` (same shapes): ``tensor_diff(...).ok``
    in a few passes over the values, for the common question "does this tensor agree?"."""
    o = np.asarray(ours, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if o.size == 0:
        return True
    measured = _allowed_and_error(o, r, tol)
    if measured is None:
        return not tol.mismatch(o, r).any()
    allowed, error = measured
    # NaN compares False, so a NaN of ours is out of tolerance, as the general rule says.
    return bool(np.all(error <= allowed))


def _below_floor(o: np.ndarray, r: np.ndarray, tol: Tolerance) -> TensorDiff | None:
    """The statistics of a pair whose every error is below the noise floor (recorded as 0), in
    a few passes: what ``tensor_diff`` would compute in many; None for any other pair."""
    measured = _allowed_and_error(o, r, tol)
    if measured is None:
        return None
    allowed, error = measured
    if not np.all(error < tol.floor() * allowed):  # NaN compares False: the general path
        return None
    first = (0,) * o.ndim  # every ratio is 0: the first element is the first of the tied
    return TensorDiff(
        max_abs=0.0,
        max_rel=0.0,
        cosine=cosine_similarity(o, r),
        mismatch_count=0,
        numel=int(o.size),
        worst_index=first,
        ours_at_worst=float(o[first]),
        ref_at_worst=float(r[first]),
        allowed_at_worst=float(allowed[first]),
    )


def tensor_diff(ours: np.ndarray, ref: np.ndarray, tol: Tolerance) -> TensorDiff:
    """Compare two arrays of the same shape under ``tol``.

    ours, ref: any shape, identical. Non-finite entries count as mismatches unless both sides
    hold the same non-finite value. Errors below ``tol.floor()`` of the allowed error count
    as 0, and the worst index is the first of the elements tied (to ``_TIE``) for the largest
    error ratio, so a matching pair gives the same statistics on any machine.
    """
    if ours.shape != ref.shape:
        raise ValueError(f"tensor_diff needs equal shapes, got {ours.shape} and {ref.shape}")
    o = np.asarray(ours, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if o.size == 0:
        return TensorDiff(0.0, 0.0, 1.0, 0, 0, None, None, None, None)
    quiet = _below_floor(o, r, tol)
    if quiet is not None:
        return quiet
    errors = tol.errors(o, r)
    mismatch_count = int(np.count_nonzero(errors.mismatch))
    err, allowed = errors.above_floor(), errors.allowed
    finite_o, finite_r = o, r
    if not (np.isfinite(o).all() and np.isfinite(r).all()):
        finite_o, finite_r = np.where(np.isfinite(o), o, 0.0), np.where(np.isfinite(r), r, 0.0)
    ratio = ratio_to_allowed(err, allowed)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rel = err / np.abs(finite_r)  # inf where the reference is 0 and ours is not, nan both 0
    rel_max = float(np.nanmax(rel)) if not np.isnan(rel).all() else 0.0
    worst = first_largest(ratio)
    return TensorDiff(
        max_abs=float(err.max()),
        max_rel=rel_max,
        cosine=cosine_similarity(finite_o, finite_r),
        mismatch_count=mismatch_count,
        numel=int(o.size),
        worst_index=tuple(int(i) for i in worst),
        ours_at_worst=float(o[worst]),
        ref_at_worst=float(r[worst]),
        allowed_at_worst=float(allowed[worst]),
    )
