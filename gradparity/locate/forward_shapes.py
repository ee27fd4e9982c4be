"""Backward rows that fail only because their layer's forward output has another shape.

In isolation a layer's backward is fed the reference's upstream gradient, which has the
reference's output shape. When ours' forward gives another shape (a pooling that rounds the
other way, other padding), that backward cannot be judged: it raises, or differs, because of
the forward alone. Such rows are inherited from the forward's shape mismatch, not root causes of
their own.
"""

from __future__ import annotations

from gradparity.core.address import Kind, kind_of
from gradparity.core.row import Row
from gradparity.core.status import Status


def forward_shape_mismatches(isolate_rows: list[Row]) -> dict[str, Row]:
    """Layer name -> its diverging isolated ``output`` row whose two shapes differ."""
    return {
        row.layer: row
        for row in isolate_rows
        if row.diverged
        and kind_of(row.quantity) == Kind.OUTPUT
        and row.shape_ours is not None
        and row.shape_ref is not None
        and list(row.shape_ours) != list(row.shape_ref)
    }


def inherit_from_forward_shape(row: Row, output: Row) -> None:
    """Mark ``row``, a diverging isolated backward row of ``output``'s layer, inherited from
    that output's shape mismatch, and say so first in its message."""
    row.status = Status.INHERITED
    reason = (
        f"inherited from the forward's shape mismatch: backward was fed the reference's "
        f"upstream gradient of shape {_shape(output.shape_ref)} where ours' output has shape "
        f"{_shape(output.shape_ours)}, so it cannot be judged until the forward is fixed"
    )
    row.message = f"{reason} ({row.message})" if row.message else reason


def _shape(shape: list[int] | None) -> str:
    return str(tuple(shape or ()))
