"""Distance between one tensor of ours and the same tensor of the reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradparity.tolerance import Tolerance


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
    """Cosine of the angle between two same-shape arrays; 1.0 when both are zero."""
    a = a.ravel().astype(np.float64)
    b = b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def tensor_diff(ours: np.ndarray, ref: np.ndarray, tol: Tolerance) -> TensorDiff:
    """Compare two arrays of the same shape under ``tol``.

    ours, ref: any shape, identical. Non-finite entries count as mismatches unless both sides
    hold the same non-finite value.
    """
    if ours.shape != ref.shape:
        raise ValueError(f"tensor_diff needs equal shapes, got {ours.shape} and {ref.shape}")
    o = np.asarray(ours, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if o.size == 0:
        return TensorDiff(0.0, 0.0, 1.0, 0, 0, None, None, None, None)
    both_same_nonfinite = ~np.isfinite(o) & ~np.isfinite(r) & (o == r)
    finite_r = np.where(np.isfinite(r), r, 0.0)
    allowed = tol.allowed(finite_r)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(o - r)
    err = np.where(both_same_nonfinite, 0.0, err)
    err = np.where(np.isnan(err), np.inf, err)
    mismatch = err > allowed
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(np.abs(r) > 0, err / np.abs(r), np.where(err > 0, np.inf, 0.0))
    worst = np.unravel_index(int(np.argmax(err / allowed)), o.shape)
    return TensorDiff(
        max_abs=float(err.max()),
        max_rel=float(rel.max()),
        cosine=cosine_similarity(np.where(np.isfinite(o), o, 0.0), finite_r),
        mismatch_count=int(mismatch.sum()),
        numel=int(o.size),
        worst_index=tuple(int(i) for i in worst),
        ours_at_worst=float(o[worst]),
        ref_at_worst=float(r[worst]),
        allowed_at_worst=float(allowed[worst]),
    )
