"""Compare stage: one tensor pair (ours, reference) becomes a table row.

Reference values are converted into ours' layout first, so every shape and index in a row is
the one the user sees in their own code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gradparity.comparison.diagnose.values import diagnose
from gradparity.core.metrics import tensor_diff
from gradparity.core.records import LayerRecord, failure_words
from gradparity.core.tolerance import Tolerance
from gradparity.pairing.align import LayerPair
from gradparity.reference.layout import to_ours_layout

# Problems first: the order every rendering sorts rows in.
STATUS_RANK = {"root_cause": 0, "diverged": 1, "inherited": 2, "ok": 3}
# The columns a person reads (renderings pick from these; table.csv has every field).
DISPLAY_COLUMNS = [
    "mode",
    "layer",
    "type",
    "quantity",
    "status",
    "diagnosis",
    "shape_ours",
    "shape_ref",
    "max_abs",
    "max_rel",
    "cosine",
    "mismatch_frac",
    "worst_index",
]


@dataclass
class Row:
    """One compared tensor: the unit of the report table (design schema plus extras)."""

    mode: str
    layer: str
    type: str
    quantity: str
    shape_ours: list[int] | None
    shape_ref: list[int] | None
    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    mismatch_frac: float | None = None
    worst_index: list[int] | None = None
    ours_at_worst: float | None = None
    ref_at_worst: float | None = None
    allowed_at_worst: float | None = None
    status: str = "ok"
    diagnosis: str | None = None
    message: str = ""
    fix: str = ""
    conversion: str = ""
    step: int | None = None  # training: the optimisation step (from 1); None for compare()
    detail: dict = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.status != "ok"

    def as_dict(self) -> dict:
        # Shallow on purpose: dataclasses.asdict deep-copies, and reports have 10^4 rows.
        return dict(self.__dict__)


def _shape(a: np.ndarray | None) -> list[int] | None:
    return None if a is None else [int(d) for d in np.shape(a)]


def broadcasts_onto(
    grad_shape: tuple[int, ...], param_shape: tuple[int, ...], ref_shape: tuple[int, ...]
) -> bool:
    """A gradient shape differing from the reference's by singleton axes only, which an
    in-place update of the parameter still takes ((n,) onto (1, n), not onto (n, 1))."""
    if tuple(grad_shape) == tuple(ref_shape) or math.prod(grad_shape) != math.prod(ref_shape):
        return False
    try:
        return np.broadcast_shapes(tuple(param_shape), tuple(grad_shape)) == tuple(param_shape)
    except ValueError:
        return False


def compare_tensor(
    mode: str,
    pair_name: str,
    type_name: str,
    quantity: str,
    ours: np.ndarray | None,
    ref: np.ndarray,
    tol: Tolerance,
    *,
    batch_size: int | None = None,
    upstream: np.ndarray | None = None,
    param_shape: tuple[int, ...] | None = None,
    conversion: str = "",
) -> Row:
    """Row for one tensor pair; ``ours`` None means the layer never produced it."""
    row = Row(
        mode, pair_name, type_name, quantity, _shape(ours), _shape(ref), conversion=conversion
    )
    if ours is None:
        row.status = "diverged"
        return row
    ours = np.asarray(ours)
    if ours.shape == ref.shape:
        d = tensor_diff(ours, ref, tol)
        row.max_abs, row.max_rel, row.cosine = d.max_abs, d.max_rel, d.cosine
        row.mismatch_frac = d.mismatch_frac
        row.worst_index = list(d.worst_index) if d.worst_index is not None else None
        row.ours_at_worst, row.ref_at_worst = d.ours_at_worst, d.ref_at_worst
        row.allowed_at_worst = d.allowed_at_worst
        if d.ok:
            return row
    if param_shape is not None and broadcasts_onto(ours.shape, param_shape, ref.shape):
        d = tensor_diff(ours.reshape(ref.shape), ref, tol)
        if d.ok:  # right values in a shape that `p -= lr * g` takes
            row.max_abs, row.max_rel, row.cosine = d.max_abs, d.max_rel, d.cosine
            row.mismatch_frac = d.mismatch_frac
            row.detail["broadcasts"] = True
            row.message = (
                f"gradient has shape {ours.shape}, the parameter {tuple(param_shape)}: the values "
                "are right and an update p -= lr * g broadcasts, but a gradient usually has its "
                "parameter's shape"
            )
            return row
    row.status = "diverged"
    diag = diagnose(
        ours,
        ref,
        tol,
        quantity=quantity,
        batch_size=batch_size,
        upstream=upstream,
        param_shape=param_shape,
        layout=conversion,
    )
    row.diagnosis, row.detail = diag.label, dict(diag.detail)
    row.message, row.fix = diag.message, diag.fix
    return row


def reference_grad(pair: LayerPair, rec: LayerRecord, quantity: str) -> np.ndarray:
    """The reference's "grad_input" or "grad:<key>" from ``rec``, in ours' layout."""
    if quantity == "grad_input":
        return rec.grad_input
    p = next(p for p in pair.params if p.key == quantity[5:])
    return to_ours_layout(rec.grads[p.torch_name], p.conversion, p.ours_shape)


def failed_row(mode: str, layer: str, type_name: str, error: dict) -> Row:
    """The ``raised`` row of code that threw, or gave a value that cannot be compared (on the
    quantity that value was for); ``error`` as ``records.error_info`` makes it."""
    quantity = error.get("quantity") or ("output" if error["phase"] == "forward" else "grad_input")
    message, fix = failure_words(error)
    return Row(
        mode,
        layer,
        type_name,
        quantity,
        None,
        None,
        status="diverged",
        diagnosis="raised",
        detail=dict(error),
        message=message,
        fix=fix,
    )
