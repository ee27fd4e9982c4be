"""Labels proved by a layer's structure, for a gradient the value tests left ``unexplained``.
Each test rebuilds the reference's value from ours and what the probe fed the layer, and names
the mistake only when that reproduces the reference within tolerance:

- ``skip_path_missing``: ours plus the upstream gradient is the reference's input gradient: a
  residual block returned its branch's gradient without the skip path's identity term;
- ``missing_mean_term``: ours less its own mean over the batch (per channel), or over the
  features (per example), is the reference's: the normalisation's ``- mean(dxhat)`` term is
  missing;
- ``repeats_overwritten``: an embedding's weight gradient differs only in rows whose index
  occurs several times, and each holds one occurrence's upstream row: the rows were assigned
  (``grad[idx] = g``) where they must be summed (``np.add.at``).

The tests that need the reference module (a convolution's kernel, stride and padding; a
recurrent layer's time steps) are in ``conv_labels`` and ``recurrent_labels``.
"""

from __future__ import annotations

import numpy as np

from gradparity.comparison.diff import reference_grad
from gradparity.core.labels import (
    MISSING_MEAN_TERM,
    REPEATS_OVERWRITTEN,
    SKIP_PATH_MISSING,
    UNEXPLAINED,
)
from gradparity.core.plan import Context
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.evidence.explain import _diverging, _ours_value


def skip_path_missing(
    ours: np.ndarray, ref: np.ndarray, upstream: np.ndarray | None, tol: Tolerance
) -> bool:
    """Whether ours (the input gradient, x's shape) plus ``upstream`` (the output's gradient,
    the same shape) matches ``ref`` while ours alone does not."""
    if upstream is None or np.shape(upstream) != np.shape(ours):
        return False
    return tol.matches(ours + upstream, ref) and not tol.matches(ours, ref)


def _mean_axes(ndim: int) -> list[tuple[tuple[int, ...], str]]:
    """The axes a normalisation's mean runs over, with their name: the batch (and spatial)
    axes per channel (batch norm), then the last axis per example (layer norm)."""
    if ndim < 2:
        return []
    return [((0, *range(2, ndim)), "batch"), ((ndim - 1,), "features")]


def missing_mean_axes(ours: np.ndarray, ref: np.ndarray, tol: Tolerance) -> str | None:
    """ "batch" or "features" when ours less its mean over those axes matches ``ref`` (both
    (N, C, ...)) while ours does not; None otherwise."""
    if np.shape(ours) != np.shape(ref) or tol.matches(ours, ref):
        return None
    for axes, name in _mean_axes(np.ndim(ours)):
        centred = ours - np.mean(ours, axis=axes, keepdims=True)
        if tol.matches(centred, ref):
            return name
    return None


def overwritten_rows(
    ours: np.ndarray, ref: np.ndarray, indices: np.ndarray, upstream: np.ndarray, tol: Tolerance
) -> dict | None:
    """For an embedding's weight gradient ours and ref (V, D), its input ``indices`` (shape
    S, whole numbers of any dtype) and ``upstream`` (S + (D,)): {"differing_rows",
    "repeated_rows"} when every differing row's index occurs more than once and ours' row
    equals one of its occurrences' upstream rows; else None."""
    if ours.ndim != 2 or np.shape(ours) != np.shape(ref):
        return None
    indices = np.asarray(indices)
    # The harness may hand the indices over as floats: whole numbers only.
    if not np.isfinite(indices).all() or (indices != np.round(indices)).any():
        return None
    flat = indices.reshape(-1).astype(np.int64)
    if upstream.shape != (*np.shape(indices), ours.shape[1]) or flat.size == 0:
        return None
    if flat.min() < 0 or flat.max() >= ours.shape[0]:
        return None
    rows = upstream.reshape(flat.size, -1)
    counts = np.bincount(flat, minlength=ours.shape[0])
    differing = tol.mismatch(ours, ref).any(axis=1)
    if not differing.any() or (counts[differing] < 2).any():
        return None
    for r in np.flatnonzero(differing):
        if not any(tol.matches(ours[r], one) for one in rows[flat == r]):
            return None
    return {"differing_rows": int(differing.sum()), "repeated_rows": int((counts > 1).sum())}


def _name_skip(row: Row) -> None:
    row.diagnosis = SKIP_PATH_MISSING
    row.message = (
        "ours plus the upstream gradient is the reference's input gradient: the skip path's "
        "identity term (y = block(x) + x gives dL/dx = block's dL/dx + dL/dy) is missing"
    )
    row.fix = "return the block's input gradient plus grad_out"


def _name_mean(row: Row, over: str) -> None:
    row.diagnosis = MISSING_MEAN_TERM
    row.detail["mean_over"] = over
    per = "per channel over the batch" if over == "batch" else "per example over the features"
    row.message = (
        f"ours less its own mean ({per}) is the reference's input gradient: the normalisation "
        "backward lacks the mean term - mean(dxhat)"
    )
    row.fix = (
        "dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), the means over the "
        "axes the statistics were taken over"
    )


def _name_repeats(row: Row, found: dict) -> None:
    row.diagnosis = REPEATS_OVERWRITTEN
    row.detail["repeats"] = found
    row.message = (
        f"the weight gradient differs only in rows whose index occurs several times in the "
        f"input ({found['differing_rows']} rows), each holding one occurrence's upstream row: "
        "the rows were assigned, so repeated indices overwrite each other instead of adding up"
    )
    row.fix = "accumulate with np.add.at(grad, indices, grad_out), not grad[indices] = grad_out"


def structure_probe(ctx: Context) -> None:
    """``compare``'s evidence step: each ``unexplained`` isolate gradient that one of the
    structure tests above reproduces gets that label."""
    for row, probe in _diverging(ctx):
        if row.diagnosis != UNEXPLAINED or row.layer == "loss" or probe.upstream is None:
            continue
        ours = _ours_value(probe.ours, row.quantity)
        if ours is None:
            continue
        ref = reference_grad(probe.pair, probe.ref, row.quantity)
        if row.quantity == "grad_input":
            over = missing_mean_axes(ours, ref, ctx.tolerance)
            if skip_path_missing(ours, ref, probe.upstream, ctx.tolerance):
                _name_skip(row)
            elif over is not None:
                _name_mean(row, over)
        elif probe.ref.input is not None:
            found = overwritten_rows(ours, ref, probe.ref.input, probe.upstream, ctx.tolerance)
            if found is not None:
                _name_repeats(row, found)
