"""Layout conversions between a NumPy parameter and a torch parameter holding the same numbers.

A conversion is named, reversible and shape-driven: ``identity``, ``transpose`` (a weight
stored (in, out) against torch's (out, in)) and ``reshape`` (a bias (1, n) or (n, 1) against
torch's (n,)). For a square weight the shape cannot tell identity from transpose: both are
returned as candidates and the caller decides (see ``candidate_conversions``).
"""

from __future__ import annotations

import numpy as np

IDENTITY = "identity"
TRANSPOSE = "transpose"
RESHAPE = "reshape"


def candidate_conversions(ours_shape: tuple[int, ...], torch_shape: tuple[int, ...]) -> list[str]:
    """Conversions that turn an array of ``ours_shape`` into ``torch_shape``, likeliest first.

    Empty when none fits. A square 2-D shape yields both ``identity`` and ``transpose``.
    """
    ours_shape, torch_shape = tuple(ours_shape), tuple(torch_shape)
    found: list[str] = []
    if ours_shape == torch_shape:
        found.append(IDENTITY)
    if len(ours_shape) == 2 and ours_shape[::-1] == torch_shape:
        found.append(TRANSPOSE)
    if not found and squeezed(ours_shape) == squeezed(torch_shape):
        found.append(RESHAPE)
    return found


def squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its singleton axes: (n, 1) and (1, n) both give (n,)."""
    return tuple(d for d in shape if d != 1)


def to_torch_layout(value: np.ndarray, conversion: str, torch_shape: tuple[int, ...]) -> np.ndarray:
    """Apply ``conversion`` to a NumPy-side array; result has ``torch_shape``."""
    if conversion == TRANSPOSE:
        return np.ascontiguousarray(value.T)
    return np.ascontiguousarray(value).reshape(torch_shape)


def to_ours_layout(value: np.ndarray, conversion: str, ours_shape: tuple[int, ...]) -> np.ndarray:
    """Undo ``conversion`` on a torch-side array; result has ``ours_shape``."""
    if conversion == TRANSPOSE:
        return np.ascontiguousarray(value.T)
    return np.ascontiguousarray(value).reshape(ours_shape)


def describe(conversion: str, ours_shape: tuple[int, ...], torch_shape: tuple[int, ...]) -> str:
    """Human wording, e.g. 'transpose (3, 2) -> (2, 3)'."""
    return f"{conversion} {tuple(ours_shape)} -> {tuple(torch_shape)}"
