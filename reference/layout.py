"""Layout conversions between a NumPy parameter and a torch parameter holding the same numbers.

A conversion is named, reversible and shape-driven: ``identity``, ``transpose`` (a weight
stored (in, out) against torch's (out, in)) and ``reshape`` (a bias (1, n) or (n, 1) against
torch's (n,), a per-channel vector (1, C, 1, 1) against (C,), a kernel stored flat (75,)
against (1, 3, 5, 5)). Conversions chain with `` + `` (applied from ours to torch, at most
one reshape): ``reshape + transpose`` is a dense weight stored flat in (in, out) order, and
``gates g,i,f,o -> i,f,g,o`` reorders the blocks of a stacked recurrent weight (each gate's
rows, along the first axis once in torch's orientation). For a square weight the shape cannot
tell identity from transpose: both are returned as candidates and the caller decides (see
``candidate_conversions``); likewise for a flat dense weight (``parameter_conversions``).
"""

from __future__ import annotations

import math

import numpy as np

IDENTITY = "identity"
TRANSPOSE = "transpose"
RESHAPE = "reshape"
GATES = "gates"
STEP = " + "  # joins the steps of a chained conversion


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


def parameter_conversions(ours_shape: tuple[int, ...], torch_shape: tuple[int, ...]) -> list[str]:
    """``candidate_conversions``, else the reshapes between a flat vector and a parameter of
    the same size: one for a kernel or any shape of three or more axes (C order), two for a
    2-D weight (flat in (out, in) order, or in (in, out) order: the caller decides). Shapes of
    equal size neither of which is flat, e.g. (5, 5, 3) against (3, 5, 5), fit nothing: more
    than one axis order would fit and none can be preferred."""
    found = candidate_conversions(ours_shape, torch_shape)
    if found or math.prod(ours_shape) != math.prod(torch_shape):
        return found
    ours_flat, torch_flat = len(squeezed(ours_shape)) == 1, len(squeezed(torch_shape)) == 1
    if ours_flat and len(torch_shape) == 2:
        return [RESHAPE, RESHAPE + STEP + TRANSPOSE]
    if torch_flat and len(ours_shape) == 2:
        return [RESHAPE, TRANSPOSE + STEP + RESHAPE]
    return [RESHAPE] if ours_flat or torch_flat else []


def is_transposed(conversion: str) -> bool:
    """Whether ``conversion`` swaps the axes of a weight (ours stores it (in, out))."""
    return TRANSPOSE in steps(conversion)


def following(options: tuple[str, ...] | list[str], convention: str) -> str:
    """The one of ``options`` (the layouts of a square or flat weight) that transposes exactly
    when ``convention`` (identity or transpose: how the model stores its weights) does."""
    return next((o for o in options if is_transposed(o) == is_transposed(convention)), options[0])


def steps(conversion: str) -> list[str]:
    """The steps of a chained conversion, in the order they apply from ours to torch."""
    return conversion.split(STEP)


def with_gates(conversion: str, ours_order: str, torch_order: str) -> str:
    """``conversion`` followed by the reordering of gate blocks from ``ours_order`` to
    ``torch_order`` (comma-separated letters, e.g. "g,i,f,o" and "i,f,g,o"); ``conversion``
    itself when the orders are equal."""
    if ours_order == torch_order:
        return conversion
    gates = f"{GATES} {ours_order} -> {torch_order}"
    return gates if conversion == IDENTITY else conversion + STEP + gates


def squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its singleton axes: (n, 1) and (1, n) both give (n,)."""
    return tuple(d for d in shape if d != 1)


def to_torch_layout(
    value: np.ndarray, conversion: str, torch_shape: tuple[int, ...], view: bool = False
) -> np.ndarray:
    """Apply ``conversion`` to a NumPy-side array; result has ``torch_shape``, contiguous
    (a copy) unless ``view``, where a transposed view saves copying a large array."""
    parts = steps(conversion)
    out = np.asarray(value)
    for part, shape in zip(parts, _shapes_after(parts, tuple(torch_shape))):
        if part == TRANSPOSE:
            out = out.T
        elif part.startswith(GATES):
            out = _reorder_gates(out, *_orders(part))
        else:  # identity or reshape
            out = np.ascontiguousarray(out).reshape(shape)
    return out if view else np.ascontiguousarray(out)


def to_ours_layout(
    value: np.ndarray, conversion: str, ours_shape: tuple[int, ...], view: bool = False
) -> np.ndarray:
    """Undo ``conversion`` on a torch-side array; result has ``ours_shape``, contiguous (a
    copy) unless ``view``."""
    parts = steps(conversion)
    out = np.asarray(value)
    for part, shape in reversed(list(zip(parts, _shapes_before(parts, tuple(ours_shape))))):
        if part == TRANSPOSE:
            out = out.T
        elif part.startswith(GATES):
            torch_order, ours_order = reversed(_orders(part))
            out = _reorder_gates(out, torch_order, ours_order)
        else:  # identity or reshape
            out = np.ascontiguousarray(out).reshape(shape)
    return out if view else np.ascontiguousarray(out)


# A conversion holds at most one reshape, so the shape on its far side is only needed where
# the walk from the known end has not crossed it yet: the two helpers below are exact there.
def _shapes_after(parts: list[str], torch_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shape of the array after each step of ``parts``, ending with ``torch_shape``."""
    shapes = [torch_shape]
    for part in reversed(parts[1:]):
        shapes.insert(0, shapes[0][::-1] if part == TRANSPOSE else shapes[0])
    return shapes


def _shapes_before(parts: list[str], ours_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shape of the array before each step of ``parts``, starting with ``ours_shape``."""
    shapes = [ours_shape]
    for part in parts[:-1]:
        shapes.append(shapes[-1][::-1] if part == TRANSPOSE else shapes[-1])
    return shapes


def _orders(gates_step: str) -> tuple[str, str]:
    """("g,i,f,o", "i,f,g,o") from "gates g,i,f,o -> i,f,g,o"."""
    source, target = gates_step.removeprefix(GATES).split("->")
    return source.strip(), target.strip()


def _reorder_gates(value: np.ndarray, source: str, target: str) -> np.ndarray:
    """``value``'s equal blocks along axis 0, one per gate in ``source`` order, put in
    ``target`` order."""
    names = source.split(",")
    blocks = np.split(value, len(names), axis=0)
    return np.concatenate([blocks[names.index(gate)] for gate in target.split(",")], axis=0)


def describe(conversion: str, ours_shape: tuple[int, ...], torch_shape: tuple[int, ...]) -> str:
    """Human wording, e.g. 'transpose (3, 2) -> (2, 3)'."""
    return f"{conversion} {tuple(ours_shape)} -> {tuple(torch_shape)}"
