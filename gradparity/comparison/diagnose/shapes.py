"""Shape tests of ``diagnose``: ours and the reference have different shapes.

Labels, in order: ``transposed`` (2-D, values match once transposed), ``not_reduced`` (an extra
batch axis that sums, or averages, to the reference), else ``shape_mismatch``, for a forward
output with the cause read off the shapes (``comparison.diagnose.forward_shapes``). Where a layout
(transpose or reshape) brings ours to the reference's shape but the values still differ, the
value tests are run on the aligned values; they are passed in as ``diagnose_values`` so that
this module does not import ``gradparity.comparison.diagnose.values``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from gradparity.comparison.diagnose.common import (
    _TRANSPOSE_FIX,
    Diagnosis,
    _Context,
    _shape,
)
from gradparity.comparison.diagnose.forward_shapes import forward_shape_mismatch
from gradparity.core.labels import NOT_REDUCED, SHAPE_MISMATCH, TRANSPOSED
from gradparity.core.tolerance import Tolerance
from gradparity.reference.layout import squeezed

# Above this rank the subsets of axes to reduce over are too many to try: only axis 0 is.
_MAX_SUBSET_NDIM = 6

# The value tests: ``gradparity.comparison.diagnose.values._diagnose_values``.
ValueTests = Callable[[np.ndarray, np.ndarray, _Context], Diagnosis]


def _diagnose_shapes(
    o: np.ndarray, r: np.ndarray, ctx: _Context, diagnose_values: ValueTests
) -> Diagnosis:
    """Shape tests; o.shape != r.shape. diagnose_values: the value tests, for aligned values."""
    # Singleton axes only, e.g. (6, 1) against (6,): a harmless layout the harness may convert.
    if squeezed(o.shape) == squeezed(r.shape):
        return _shape_mismatch(o, r, ctx, diagnose_values, "reshape", o.reshape(r.shape))
    if o.ndim == 2 and o.T.shape == r.shape:
        if not ctx.tol.matches(o.T, r):
            return _shape_mismatch(o, r, ctx, diagnose_values, "transposed", o.T)
        return Diagnosis(
            TRANSPOSED,
            {"ours_shape": list(o.shape), "ref_shape": list(r.shape)},
            f"{ctx.noun} is the transpose of the reference's: shape {_shape(o.shape)}, the "
            f"reference {_shape(r.shape)}",
            ctx.hint(_TRANSPOSE_FIX),
        )
    found = _not_reduced(o, r, ctx)
    if found is not None:
        return found
    if _find_reduction(r, o, ctx.tol) is not None:
        return _shape_mismatch(o, r, ctx, diagnose_values, "reduced")
    if o.size == r.size and ctx.tol.matches(o.reshape(r.shape), r):
        return _shape_mismatch(o, r, ctx, diagnose_values, "reshape", o.reshape(r.shape))
    # A forward output's shape comes from the layer's configuration, not from what it
    # differentiates: its advice reads the cause (rounding, padding, filters) off the shapes.
    if ctx.kind == "output":
        found = forward_shape_mismatch(o, r, ctx)
        if found is not None:
            return found
    return _shape_mismatch(o, r, ctx, diagnose_values, "other")


def _not_reduced(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    """Ours has an extra batch axis (perhaps with more extra axes) that reduces to ref."""
    found = _find_reduction(o, r, ctx.tol)
    if found is None:
        return None
    axes, how = found
    arg = str(axes[0]) if len(axes) == 1 else str(axes)
    where = f"the batch axis (axis {arg})" if len(axes) == 1 else f"axes {arg}"
    subject = "it"
    if ctx.kind == "grad" and how == "sum":
        subject = "delta" if ctx.layout == "columns" else "grad_out"
    keep = ", keepdims=True" if o.ndim == r.ndim else ""
    detail = {"ours_shape": list(o.shape), "ref_shape": list(r.shape), "axis": axes[0],
              "axes": list(axes), "batch_size": int(o.shape[axes[0]]),
              "reduction": how}  # fmt: skip
    return Diagnosis(
        NOT_REDUCED,
        detail,
        f"{_shape_head(o, r, ctx)}; {'summed' if how == 'sum' else 'averaged'} over {where} "
        "it equals the reference",
        f"{'sum' if how == 'sum' else 'average'} it over {where}: "
        f"{subject}.{how}(axis={arg}{keep})",
    )


def _find_reduction(
    big: np.ndarray, small: np.ndarray, tol: Tolerance
) -> tuple[tuple[int, ...], str] | None:
    """Axes (one, or several with 0) and "sum" or "mean" that reduce ``big`` to ``small``.

    Only reductions whose kept axes equal ``small``'s shape up to singleton axes are tried;
    fewer axes first, sum before mean.
    """
    if big.ndim == 0 or big.ndim <= len(squeezed(small.shape)):
        return None
    others = range(1, big.ndim) if big.ndim <= _MAX_SUBSET_NDIM else range(0)
    # Any single axis (the batch axis is last when examples are columns), then axis 0 with more.
    singles = [(i,) for i in range(big.ndim)]
    combos = [(0, *e) for k in range(1, big.ndim) for e in itertools.combinations(others, k)]
    for axes in singles + combos:
        kept = tuple(n for i, n in enumerate(big.shape) if i not in axes)
        if squeezed(kept) != squeezed(small.shape):
            continue
        for how in ("sum", "mean"):
            if tol.matches(getattr(big, how)(axis=axes).reshape(small.shape), small):
                return axes, how
    return None


def _shape_mismatch(
    o: np.ndarray,
    r: np.ndarray,
    ctx: _Context,
    diagnose_values: ValueTests,
    layout: str,
    aligned: np.ndarray | None = None,
) -> Diagnosis:
    """layout: "reshape", "transposed", "reduced" (ours lacks the batch axis ref has) or
    "other"; aligned: ours brought to ref's shape by that layout, where there is one;
    diagnose_values: the value tests, run on aligned values that still differ."""
    detail: dict = {"ours_shape": list(o.shape), "ref_shape": list(r.shape), "layout": layout}
    if ctx.param_shape is not None:
        detail["param_shape"] = list(ctx.param_shape)
    head = _shape_head(o, r, ctx)
    if layout == "reduced":
        return Diagnosis(
            SHAPE_MISMATCH,
            detail,
            f"{head}; the reference reduced over its batch axis equals ours",
            f"keep the batch axis: the reference has one entry per example, shape "
            f"{_shape(r.shape)}; do not sum or average over it",
        )
    if aligned is None:
        fix = (
            f"give it the shape {_shape(r.shape)}: a gradient has the shape of what it "
            "differentiates; check which axes the formula keeps and which it sums over"
        )
        return Diagnosis(SHAPE_MISMATCH, detail, head, fix)
    if layout == "transposed":
        verb, fix = "transposing", ctx.hint(_TRANSPOSE_FIX)
    else:
        verb, fix = "reshaping", f"reshape it to {_shape(r.shape)}: .reshape({_shape(r.shape)})"
        if ctx.kind == "grad" and not ctx.tol.matches(aligned, r):
            fix = (
                f"give it the shape {_shape(r.shape)}; if it is a sum over the batch, sum over "
                "the examples' axis (axis 1 with examples as columns, axis 0 as rows) and keep "
                "the parameter's"
            )
    detail["values_match"] = ctx.tol.matches(aligned, r)
    if detail["values_match"]:
        return Diagnosis(SHAPE_MISMATCH, detail, f"{head}; the values match after {verb}", fix)
    inner = diagnose_values(aligned, r, ctx)
    detail["after_layout"] = {"label": inner.label, "detail": inner.detail}
    return Diagnosis(
        SHAPE_MISMATCH, detail, f"{head}; after {verb}: {inner.message}", f"{fix}; {inner.fix}"
    )


def _shape_head(o: np.ndarray, r: np.ndarray, ctx: _Context) -> str:
    if ctx.param_shape is not None and o.shape != ctx.param_shape:
        return f"{ctx.noun} has shape {_shape(o.shape)}, the parameter {_shape(ctx.param_shape)}"
    return f"{ctx.noun} has shape {_shape(o.shape)}, the reference {_shape(r.shape)}"
