"""The last-resort diagnosis, ``unexplained``: the error statistics of a diverging pair, where
its mismatches lie (``describe_location``) and what they look like, for a student to go on.
Where the zero patterns name a mask (``comparison.diagnose.masks``) the same statistics carry
that label instead."""

from __future__ import annotations

import numpy as np

from gradparity.comparison.diagnose.common import (
    Diagnosis,
    _at,
    _Context,
    _diff,
    _fmt,
    _index,
    _num,
    _rel_norm,
)
from gradparity.comparison.diagnose.masks import mask_pattern
from gradparity.core.labels import UNEXPLAINED
from gradparity.core.metrics import first_largest

_MAX_LISTED = 20
# Cosine above this: ours points the reference's way, only the length is off (a near-factor).
_NEARLY_PARALLEL = 0.999
_NOT_ONE = 0.02  # a near-factor this close to 1 says nothing the error statistics do not


def describe_location(mismatch: np.ndarray) -> dict:
    """Where the ``True`` entries of a boolean mask (any shape) lie.

    Always ``count``, ``numel``, ``indices`` (the first 20 as multi-index lists) and
    ``truncated``. 2-D masks add ``rows``/``cols`` (wholly mismatching), ``rows_hit``/
    ``cols_hit`` (any mismatch; lists hold at most 20) with ``n_rows_hit``/``n_cols_hit``, and
    square ones ``diagonal_only``/``off_diagonal_only``.
    """
    m = np.asarray(mismatch, dtype=bool)
    where = np.argwhere(m)
    loc: dict = {
        "count": int(m.sum()),
        "numel": int(m.size),
        "indices": where[:_MAX_LISTED].tolist(),
        "truncated": bool(len(where) > _MAX_LISTED),
    }
    if m.ndim == 2:
        rows_hit, cols_hit = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        loc.update(
            rows=np.flatnonzero(m.all(axis=1))[:_MAX_LISTED].tolist(),
            cols=np.flatnonzero(m.all(axis=0))[:_MAX_LISTED].tolist(),
            rows_hit=rows_hit[:_MAX_LISTED].tolist(),
            n_rows_hit=len(rows_hit),
            cols_hit=cols_hit[:_MAX_LISTED].tolist(),
            n_cols_hit=len(cols_hit),
        )
        if m.shape[0] == m.shape[1]:
            diag = np.eye(m.shape[0], dtype=bool)
            loc["diagonal_only"] = bool(m.any() and not (m & ~diag).any())
            loc["off_diagonal_only"] = bool(m.any() and not (m & diag).any())
    return loc


def unexplained(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis:
    """The last resort: the error statistics, where the mismatches lie, and what they look like
    (a flipped kernel, a near-constant factor), labelled ``unexplained``, or ``mask_missing`` /
    ``mask_inverted`` where the zero patterns say so. o, r: equal shapes, float64."""
    d = _diff(o, r, ctx.tol)
    errors = ctx.tol.errors(o, r)
    mismatch, err = errors.mismatch, errors.error
    loc = describe_location(mismatch)
    worst = first_largest(err)
    # Only where both sides are nonzero: against an exact 0 a sign says nothing.
    signed = mismatch & (o != 0) & (r != 0)
    with np.errstate(invalid="ignore"):
        flipped = np.sign(o[signed]) != np.sign(r[signed])
    sign_frac = float(flipped.mean()) if flipped.size else 0.0
    detail = {
        "max_abs": _num(d.max_abs),
        "max_rel": _num(d.max_rel),
        "rel_norm": _num(_rel_norm(o, r)),
        "cosine": d.cosine,
        "mismatch_frac": d.mismatch_frac,
        "mismatch_count": d.mismatch_count,
        "numel": d.numel,
        "worst_index": [int(i) for i in worst],
        "ours_at_worst": _num(o[worst]),
        "ref_at_worst": _num(r[worst]),
        "sign_differs_frac": sign_frac,
        "location": loc,
    }
    region = _region(loc, o.shape)
    message = (
        f"values differ in {d.mismatch_count} of {d.numel} elements ({100 * d.mismatch_frac:.1f}%)"
        f"{', ' + region[0] if region else ''}; max abs error {_fmt(err[worst])}{_at(worst)}: "
        f"ours {_fmt(o[worst])}, reference {_fmt(r[worst])}"
    )
    if sign_frac >= 0.5:
        message += f"; {100 * sign_frac:.0f}% of the differing elements have the opposite sign"
    fix = f"compare the formula for the {ctx.noun} with the reference's term by term"
    if o.ndim >= 2 and ctx.tol.matches(o, r[..., ::-1, ::-1]):
        detail["flipped_last_two_axes"] = True
        message += "; it equals the reference with its last two axes reversed (a flipped kernel)"
        fix = (
            "do not flip the kernel: torch's convolution is a cross-correlation, so "
            "dW[f, c] = sum over positions of (input window * upstream gradient)"
        )
    label = UNEXPLAINED
    mask = mask_pattern(o, r, mismatch)
    if mask is not None:
        label, fix = mask.label, mask.fix
        detail.update(mask.detail)
        message += mask.phrase
    if region:
        fix += f"; the error is confined to {region[1]}"
    with np.errstate(invalid="ignore"):  # inf / inf where both sides share an infinity: nan
        factor = float(np.vdot(o, r) / np.vdot(r, r)) if np.any(r) else 1.0
    if d.cosine > _NEARLY_PARALLEL and abs(factor - 1.0) > _NOT_ONE:
        detail["approx_factor"] = factor
        message += f"; close to {_fmt(factor)} times the reference's, but not exactly"
        fix += (
            f"; look for a factor of about {_fmt(factor)} that is not quite constant "
            "(an epsilon, or a correction such as Adam's 1 - beta**t)"
        )
    return Diagnosis(label, detail, message, fix)


def _region(loc: dict, shape: tuple[int, ...]) -> tuple[str, str] | None:
    """(message phrase, fix phrase) saying where the mismatches lie; None if not confined."""
    count, listed = loc["count"], [tuple(i) for i in loc["indices"]]
    if count == 0 or count == loc["numel"]:
        return None
    if count <= 3:
        at = ", ".join(_index(i) for i in listed)
        return f"only at {at}", at
    if len(shape) != 2:
        return None
    for axis, name in ((0, "rows"), (1, "columns")):
        hit, n_hit = loc[f"{name[:3]}s_hit"], loc[f"n_{name[:3]}s_hit"]
        if n_hit < shape[axis] and n_hit <= _MAX_LISTED:
            return f"all in {name} {hit}", f"{name} {hit}"
    if loc.get("diagonal_only"):
        return "all on the diagonal", (
            "the diagonal: check the terms that apply only when i == j (e.g. the delta_ij of the "
            "softmax Jacobian)"
        )
    if loc.get("off_diagonal_only"):
        return "all off the diagonal", "the off-diagonal elements: check the i != j cross terms"
    return None
