"""What one run of one layer produced, on either side: the plain data the pipeline passes on."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LayerRecord:
    """Everything recorded for one layer in one run.

    input (N, ...), output (N, ...), grad_output (like output: the upstream gradient fed to
    backward), grad_input (like input), grads {param key: array}. ``error`` is set when the
    layer raised (then later fields stay None); ``mutated`` names arrays the layer changed in
    place ("input" in forward, "grad_output" in backward).
    """

    input: np.ndarray | None = None
    output: np.ndarray | None = None
    grad_output: np.ndarray | None = None
    grad_input: np.ndarray | None = None
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    error: dict | None = None
    mutated: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)


def snapshot(value) -> np.ndarray | None:
    """A private copy of an array-like (None stays None), so later in-place edits cannot leak."""
    if value is None:
        return None
    return np.array(value, copy=True)


def error_info(phase: str, exc: BaseException) -> dict:
    """JSON-ready description of an exception raised in ``phase`` ("forward"/"backward")."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return {"phase": phase, "type": type(exc).__name__, "message": str(exc), "where": where}


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape and values, NaN equal to NaN."""
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
