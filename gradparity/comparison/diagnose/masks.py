"""Mask labels from the zero patterns of a diverging pair: ``mask_missing`` (every differing
element is an exact 0 of the reference, and the rest match) and ``mask_inverted`` (the two
sides' non-zero elements are disjoint and every differing element is zero on exactly one side:
ours passes the gradient where the reference blocks it and blocks it where the reference
passes it). ``unexplained`` asks for them once its error statistics are in, so a mask label
keeps those statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradparity.core.labels import MASK_INVERTED, MASK_MISSING


@dataclass(frozen=True)
class MaskPattern:
    """A mask label with what ``unexplained`` adds for it: detail keys, a message phrase (to
    append after the statistics) and the fix."""

    label: str
    detail: dict
    phrase: str
    fix: str


def mask_pattern(o: np.ndarray, r: np.ndarray, mismatch: np.ndarray) -> MaskPattern | None:
    """The mask label of ours ``o`` against the reference ``r`` (equal shapes), given the
    elements out of tolerance (``mismatch``, boolean, same shape); None when neither fits."""
    if not mismatch.any():
        return None
    return _missing(r, mismatch) or _inverted(o, r, mismatch)


def _missing(r: np.ndarray, mismatch: np.ndarray) -> MaskPattern | None:
    zero = r == 0
    # A reference that is 0 everywhere has no mask to read: every value would pass for one.
    if zero.all() or (mismatch & ~zero).any():
        return None
    count = int(mismatch.sum())
    return MaskPattern(
        MASK_MISSING,
        {"unmasked": count},
        f"; all {count} differing elements are where the reference is exactly 0, and the rest "
        "match: a mask is missing",
        "multiply by the mask the reference applies, e.g. (z > 0) for a ReLU",
    )


def _inverted(o: np.ndarray, r: np.ndarray, mismatch: np.ndarray) -> MaskPattern | None:
    ours_zero, ref_zero = o == 0, r == 0
    blocked = mismatch & ours_zero & ~ref_zero  # ours 0 where the reference passes a value
    passed = mismatch & ~ours_zero & ref_zero  # ours passes a value where the reference is 0
    both_nonzero = ~ours_zero & ~ref_zero
    # Disjoint supports leave no differing element outside ``blocked`` and ``passed``.
    if not (blocked.any() and passed.any()) or both_nonzero.any():
        return None
    n_blocked, n_passed = int(blocked.sum()), int(passed.sum())
    return MaskPattern(
        MASK_INVERTED,
        {"blocked_where_reference_passes": n_blocked, "passed_where_reference_blocks": n_passed},
        f"; the mask is inverted: ours is exactly 0 at {n_blocked} elements where the reference "
        f"is not, and non-zero at {n_passed} elements where the reference is exactly 0",
        "invert the mask's comparison: pass the gradient where the forward passed its input, "
        "e.g. grad_out * (x > 0) for a ReLU, not (x <= 0) or (x < 0)",
    )
