"""Distance between one tensor of ours and the same tensor of the reference."""

from __future__ import annotations

from collections.abc import Iterator
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


# Within these magnitudes the dot products of up to 10^30 elements neither overflow nor lose
# digits to underflow, so the vectors need no rescaling first.
_PLAIN_RANGE = (1e-140, 1e140)
# Elements per block of the block-wise passes: their float64 temporaries stay under a MB
# (cheap to allocate, in cache) whatever the tensor's size (a 50M-parameter model's
# gradients are compared block by block).
_BLOCK = 1 << 16


def _largest(a: np.ndarray) -> float:
    """max |a| without a temporary (0.0 for an empty array; NaN when a holds NaN)."""
    return max(float(a.max()), -float(a.min())) if a.size else 0.0


def _blocks(*arrays: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """The arrays (one shape) as float64 blocks of whole rows along the first axis, raveled:
    views where the dtype and layout allow, so no full-size copy is made."""
    first = arrays[0]
    if first.ndim > 1 and all(a.flags.f_contiguous and not a.flags.c_contiguous for a in arrays):
        # Transposed views (a weight gradient in ours' (in, out) layout): their transposes are
        # contiguous, and the comparisons and sums do not depend on the order of elements.
        arrays = tuple(a.T for a in arrays)
        first = arrays[0]
    if first.ndim == 0:
        yield tuple(np.asarray(a, dtype=np.float64).reshape(1) for a in arrays)
        return
    rows = max(1, _BLOCK // max(1, first[0].size))
    for start in range(0, first.shape[0], rows):
        yield tuple(
            np.asarray(a[start : start + rows], dtype=np.float64).reshape(-1) for a in arrays
        )


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two same-shape finite arrays; 1.0 when both are zero."""
    a, b = np.asarray(a), np.asarray(b)
    top_a, top_b = _largest(a), _largest(b)
    if top_a == 0.0 and top_b == 0.0:
        return 1.0
    if top_a == 0.0 or top_b == 0.0:
        return 0.0
    low, high = _PLAIN_RANGE
    # Scaled by the largest magnitude first where the squares of values near 1e160 overflow.
    plain = low < top_a < high and low < top_b < high
    sa, sb = (1.0, 1.0) if plain else (top_a, top_b)
    ab = aa = bb = 0.0
    for x, y in _blocks(a, b):
        if not plain:
            x, y = x / sa, y / sb
        # einsum, not the BLAS dot: a threaded BLAS spends more on waking its threads than on
        # a sum of this size, and far more on a busy machine.
        ab += float(np.einsum("i,i->", x, y))
        aa += float(np.einsum("i,i->", x, x))
        bb += float(np.einsum("i,i->", y, y))
    return float(ab / np.sqrt(aa * bb))


def first_largest(values: np.ndarray) -> tuple[int, ...]:
    """The index of the first element of ``values`` (any shape, non-empty, no NaN) that ties
    for the largest to a relative ``_TIE``: which of several equal errors is named must not
    depend on the last bits of a sum, which move with the CPU and the thread count."""
    top = float(values.max())
    tied = values >= top - (abs(top) * _TIE if np.isfinite(top) else 0.0)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(tied)), values.shape))


def _every_error_below(
    o: np.ndarray, r: np.ndarray, tol: Tolerance, fraction: float, scale: float
) -> bool:
    """Whether |o - r| <= ``fraction`` x the allowed error at every element (strictly below
    when ``fraction`` < 1), by ``Tolerance``'s rule, block by block; ``scale`` is max |r|,
    finite (a non-finite reference takes the general rule)."""
    for x, y in _blocks(o, r):
        # In place, in Tolerance.allowed's order: rtol * |r| + rtol * scale + atol.
        allowed = np.abs(y)
        allowed *= tol.rtol
        allowed += tol.rtol * scale
        allowed += tol.atol
        with np.errstate(invalid="ignore", over="ignore"):
            error = np.subtract(x, y)
            np.abs(error, out=error)
        # NaN compares False, so a NaN of ours is out of tolerance, as the general rule says.
        if fraction < 1:
            allowed *= fraction
            inside = np.less(error, allowed)
        else:
            inside = np.less_equal(error, allowed)
        if not inside.all():
            return False
    return True


def within_tolerance(ours: np.ndarray, ref: np.ndarray, tol: Tolerance) -> bool:
    """No element of ours out of ``tol`` against ``ref`` (same shapes): ``tensor_diff(...).ok``
    block by block in a few passes, for the common question "does this tensor agree?"."""
    o, r = np.asarray(ours), np.asarray(ref)
    if o.size == 0:
        return True
    scale = _largest(r)
    if np.isfinite(scale):
        return _every_error_below(o, r, tol, 1.0, scale)
    return not tol.mismatch(o, r).any()


def _below_floor(o: np.ndarray, r: np.ndarray, tol: Tolerance) -> TensorDiff | None:
    """The statistics of a pair whose every error is below the noise floor (recorded as 0), in
    a few passes without full-size temporaries: what ``tensor_diff`` would compute; None for
    any other pair."""
    scale = _largest(r)
    if not (np.isfinite(scale) and _every_error_below(o, r, tol, tol.floor(), scale)):
        return None
    first = (0,) * o.ndim  # every ratio is 0: the first element is the first of the tied
    ref_first = float(r[first])
    allowed = tol.rtol * abs(ref_first) + tol.rtol * scale + tol.atol
    return TensorDiff(
        max_abs=0.0,
        max_rel=0.0,
        cosine=cosine_similarity(o, r),
        mismatch_count=0,
        numel=int(o.size),
        worst_index=first,
        ours_at_worst=float(o[first]),
        ref_at_worst=ref_first,
        allowed_at_worst=float(allowed),
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
    if np.size(ours) == 0:
        return TensorDiff(0.0, 0.0, 1.0, 0, 0, None, None, None, None)
    quiet = _below_floor(np.asarray(ours), np.asarray(ref), tol)
    if quiet is not None:
        return quiet
    o = np.asarray(ours, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
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
