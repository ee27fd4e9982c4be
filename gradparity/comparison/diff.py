"""Compare stage: one tensor pair (ours, reference) becomes a table row.

Reference values are converted into ours' layout first, so every shape and index in a row is
the one the user sees in their own code.
"""

from __future__ import annotations

import math

import numpy as np

from gradparity.comparison.diagnose.values import diagnose
from gradparity.core.address import Address, Kind
from gradparity.core.labels import RAISED
from gradparity.core.metrics import tensor_diff
from gradparity.core.records import LayerRecord, failure_words
from gradparity.core.row import Row
from gradparity.core.status import Status
from gradparity.core.tolerance import Tolerance
from gradparity.pairing.align import LayerPair
from gradparity.pairing.params import to_ours


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
    diagnosed: bool = True,
) -> Row:
    """Row for one tensor pair; ``ours`` None means the layer never produced it. Without
    ``diagnosed`` a diverging row gets no diagnosis (``diagnose_row`` adds it later, where
    it is needed)."""
    row = Row(
        mode, pair_name, type_name, quantity, _shape(ours), _shape(ref), conversion=conversion
    )
    if ours is None:
        row.status = Status.DIVERGED
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
            row.broadcasts = True
            row.message = (
                f"gradient has shape {ours.shape}, the parameter {tuple(param_shape)}: the values "
                "are right and an update p -= lr * g broadcasts, but a gradient usually has its "
                "parameter's shape"
            )
            return row
    row.status = Status.DIVERGED
    if diagnosed:
        diagnose_row(row, ours, ref, tol, batch_size, upstream, param_shape, conversion)
    return row


def diagnose_row(
    row: Row,
    ours: np.ndarray,
    ref: np.ndarray,
    tol: Tolerance,
    batch_size: int | None = None,
    upstream: np.ndarray | None = None,
    param_shape: tuple[int, ...] | None = None,
    conversion: str = "",
) -> None:
    """Name what is wrong with a diverging row of ``compare_tensor`` (ours, ref: its values)."""
    quantity = row.quantity
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
    row.diagnosis, row.detail = diag.label, {**diag.detail, **row.detail}
    row.batch_size, row.ours_reduction = batch_size, diag.ours_reduction
    row.message, row.fix = diag.message, diag.fix


def reference_grad(pair: LayerPair, rec: LayerRecord, quantity: str) -> np.ndarray:
    """The reference's "grad_input" or "grad:<key>" from ``rec``, in ours' layout."""
    address = Address.parse(quantity)
    if address.kind is Kind.GRAD_INPUT:
        assert rec.grad_input is not None  # the reference side always runs backward
        return rec.grad_input
    p = next(p for p in pair.params if p.key == address.name)
    return to_ours(rec.grads[p.torch_name], p, view=True)  # only read: no copy of a large one


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
        status=Status.DIVERGED,
        diagnosis=RAISED,
        detail=dict(error),
        message=message,
        fix=fix,
    )
