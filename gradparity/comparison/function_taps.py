"""A ``gp.tap`` value against the reference module's output (or dL/d(output)) it is mapped to:
the reference's value brought into the layout of ours' tap."""

from __future__ import annotations

import numpy as np

from gradparity.pairing.function_align import tap_conversion
from gradparity.reference.layout import to_ours_layout


def aligned_tap(ours: np.ndarray, ref: np.ndarray, columns: bool) -> np.ndarray | None:
    """The reference's value in the layout of ours' tap; None when no layout fits."""
    conversion = tap_conversion(ours.shape, ref.shape, columns)
    return None if conversion is None else to_ours_layout(ref, conversion, ours.shape)
