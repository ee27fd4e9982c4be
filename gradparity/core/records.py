"""What one run of one layer produced, on either side: the plain data the pipeline passes on.

Also how the user's code is kept from crashing a comparison: ``USER_ERRORS`` are what a call
into it may raise and still become a finding, and ``real_array`` turns each value ours' code
hands back into a private real array or a ``BadValue`` naming what is wrong with it.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from gradparity.core.errors import InputError
from gradparity.core.validate import numpy_values

# What a call into the user's code may raise and still become a finding (or a refusal): a
# layer or reference that calls sys.exit() must not end the caller's process. A
# KeyboardInterrupt still stops the run.
USER_ERRORS = (Exception, SystemExit)


@dataclass
class LayerRecord:
    """Everything recorded for one layer in one run.

    input (N, ...), output (N, ...), grad_output (like output: the upstream gradient fed to
    backward), grad_input (like input), grads {param key: array}. ``error`` is set when the
    layer raised (then later fields stay None); ``mutated`` names arrays the layer changed in
    place ("input" in forward, "grad_output" in backward). ``backward_updates`` describes each
    parameter backward itself updated (through an optimiser), keyed by param key: where its
    gradient was read from (see ``sides.backward_updates``).
    """

    input: np.ndarray | None = None
    output: np.ndarray | None = None
    grad_output: np.ndarray | None = None
    grad_input: np.ndarray | None = None
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    error: dict | None = None
    mutated: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    backward_updates: dict[str, dict] = field(default_factory=dict)
    # Running statistics after the forward ({name: array}), ours' attribute names or the
    # reference's buffer names; empty where the layer keeps none or does not update them.
    buffers: dict[str, np.ndarray] = field(default_factory=dict)


class BadValue(TypeError):
    """A value ours' code returned or stored that cannot be compared as real numbers (None,
    text, complex values). The layer did not raise, but it is reported like a layer that
    did: a ``raised`` finding on ``quantity`` whose message says what the value is."""

    def __init__(self, quantity: str, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.quantity, self.fix = quantity, fix


def real_array(value: Any, what: str, quantity: str, private: bool = True) -> np.ndarray:
    """A private copy of ``value`` as a NumPy array of real numbers (a torch tensor is read
    without NumPy's conversion warnings); with ``private`` False, the array itself where it
    is one (streaming: a gradient that only the run's own copy of a layer holds). ``BadValue``
    on ``quantity``, naming ``what`` ("forward's output", "grads['W']"), when it is None, not
    numeric, or complex: complex values would otherwise be compared by their real part
    alone."""
    if value is None:
        raise BadValue(quantity, f"{what} is None", f"make {what} an array")
    try:
        arr = np.array(numpy_values(what, value), copy=private)
    except InputError as exc:  # ragged lists, a meta tensor
        raise BadValue(quantity, str(exc), f"make {what} a numeric array") from None
    if arr.dtype.kind == "c":
        imag = float(np.max(np.abs(arr.imag))) if arr.size else 0.0
        raise BadValue(
            quantity,
            f"ours is complex: {what} has dtype {arr.dtype} (imaginary part up to {imag:.3g}), "
            "so it cannot be compared as real numbers",
            "keep the computation real: look for where a complex number enters (1j, "
            "np.emath.sqrt of a negative value, an array made with a complex dtype)",
        )
    if arr.dtype.kind not in "fiub":
        raise BadValue(
            quantity,
            f"{what} is a {type(value).__name__} of dtype {arr.dtype}, not numbers",
            f"make {what} a numeric array",
        )
    return arr


@overload
def snapshot(value: None) -> None: ...
@overload
def snapshot(value: np.ndarray) -> np.ndarray: ...
def snapshot(value: np.ndarray | None) -> np.ndarray | None:
    """A private copy of an array-like (None stays None), so later in-place edits cannot leak."""
    if value is None:
        return None
    return np.array(value, copy=True)


def error_info(phase: str, exc: BaseException) -> dict:
    """JSON-ready description of an exception raised in ``phase`` ("forward"/"backward"). A
    ``BadValue`` adds the quantity it concerns and its fix, and no place (that would be
    gradparity's own line)."""
    if isinstance(exc, BadValue):
        return {
            "phase": phase,
            "type": "BadValue",
            "message": str(exc),
            "where": "",
            "quantity": exc.quantity,
            "fix": exc.fix,
        }
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return {"phase": phase, "type": type(exc).__name__, "message": str(exc), "where": where}


def failure_words(error: dict, first_line_only: bool = False) -> tuple[str, str]:
    """(what happened, what to do) for an ``error_info`` dict: the exception and where it was
    raised, or what was wrong with a value (``BadValue``)."""
    if error["type"] == "BadValue":
        return error["message"], error["fix"]
    message = error["message"]
    if first_line_only:
        message = next((line for line in message.splitlines() if line.strip()), "")
    where = f" at {error['where']}" if error.get("where") else ""
    return (
        f"{error['phase']} raised {error['type']}: {message}{where}",
        f"fix the exception in {error['phase']}",
    )


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape and values, NaN equal to NaN."""
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
