"""The Jacobian probe: build a small layer's local Jacobian on both sides and say where they differ.

An upstream-gradient check sees one vector-Jacobian product ``J^T g`` only, and a bug can hide
in the part of ``J`` that a particular ``g`` barely weights. For a layer with at most
``MAX_JACOBIAN_ELEMENTS`` inputs and outputs per sample we build ``J`` itself, one row per
backward of a basis vector, and describe where ours and reference differ: on the diagonal
(the Kronecker-delta term of softmax-like layers), off it (the cross terms), in whole rows or
columns, in sign, or as the transpose.

Only 2-D ``(batch, features)`` inputs and outputs are probed. The Jacobian is per sample,
``(batch, out, in)``: block ``b`` is ``d out[b, :] / d x[b, :]``, the same-sample block of the
full batch Jacobian. Both sides use basis vectors that are one-hot in one sample's output, so
they compute exactly these blocks even for a layer that mixes samples (batch norm); only its
cross-sample terms go unchecked.

The patterns that prove a label (a transposed Jacobian; ours diagonal where the reference mixes
its inputs: ``missing_cross_terms``; both diagonal with different diagonals:
``elementwise_derivative``) are named in ``gradparity.evidence.jacobian_labels``; the rest
only add their sentence to the row's message.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradparity.core.metrics import first_largest
from gradparity.core.tolerance import Tolerance
from gradparity.sides.adapt import before_pass
from gradparity.sides.fresh import StateSnapshot, independent_copy, working_copy

MAX_JACOBIAN_ELEMENTS = 256  # per-sample input size and output size limit (each)
# Each sample's Jacobian block costs ``out`` backward passes of ours' layer. The blocks are
# built for every sample while that takes at most this many passes, else for as many samples
# as fit (at least MIN_JACOBIAN_SAMPLES): a pattern (a transpose, missing cross terms) shows in
# every sample alike, and a wide layer's one sample gives many points to fit a formula to.
MAX_JACOBIAN_BACKWARDS = 256
MIN_JACOBIAN_SAMPLES = 1


def jacobian_samples(batch: int, n_out: int) -> int:
    """How many samples' Jacobian blocks are built: the first ``jacobian_samples`` ones."""
    return min(batch, max(MIN_JACOBIAN_SAMPLES, MAX_JACOBIAN_BACKWARDS // max(n_out, 1)))


@dataclass(frozen=True)
class JacobianProbe:
    """Both per-sample Jacobians and where they differ.

    ours, reference: (samples, out_features, in_features), ``[b, i, j] = d out[b, i] / d x[b, j]``
    for the first ``samples = jacobian_samples(batch, out_features)`` samples of the batch.
    pattern: see ``describe_jacobian_difference``. message: one sentence for a student.
    """

    ours: np.ndarray
    reference: np.ndarray
    pattern: dict
    message: str


def _require_2d(what: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise ValueError(f"the Jacobian probe needs a 2-D (batch, features) {what}, got {shape}")


@contextmanager
def _forwarded(layer: Any, x: np.ndarray) -> Iterator[tuple[Callable[[], Any], np.ndarray]]:
    """(a factory of layers in the state right after forward on ``x``, each used for one
    backward; the output). The caller's layer and ``x`` end as they were.

    Copying the once-forwarded layer is preferred over re-running forward: it is cheaper and
    keeps a single forward state (e.g. one dropout mask from global randomness). When that
    state has no independent copy (it holds, say, a generator, or a define-by-run graph whose
    nodes link by weak reference: ``sides.fresh``), each call restores the layer to its state
    before forward and runs forward again, which must reproduce the output, or the rows would
    mix different forward states.
    """
    with working_copy(layer) as base:
        before_pass(base)  # a wrap(..., reset=) layer's inputs cached by earlier calls dropped
        before = StateSnapshot(base)
        out = np.asarray(base.forward(x.copy()))
        template = independent_copy(base)
        if template is not None:
            yield (lambda: copy.deepcopy(template)), out
            return

        def reforward() -> Any:
            before.restore()
            again = np.asarray(base.forward(x.copy()))
            if not np.array_equal(again, out, equal_nan=True):
                raise ValueError(
                    "the layer's forward state cannot be copied and re-running forward "
                    "gives a different output, so its Jacobian is not well defined"
                )
            return base

        yield reforward, out


def _numpy_jacobian_from(ready: Callable[[], Any], x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Rows of the per-sample Jacobian (samples, out, in) of the first ``jacobian_samples``
    samples, by backward of one-hot grad_out, each on a layer from ``ready`` (layers may pop
    caches or accumulate grads with +=)."""
    _require_2d("output", out.shape)
    batch, n_out = out.shape
    samples = jacobian_samples(batch, n_out)
    jac = np.empty((samples, n_out, x.shape[1]))
    for b in range(samples):
        for i in range(n_out):
            grad_out = np.zeros_like(out)
            grad_out[b, i] = 1
            grad_in = np.asarray(ready().backward(grad_out))
            if grad_in.shape != x.shape:
                raise ValueError(
                    f"backward returned shape {grad_in.shape}, not the input's {x.shape}"
                )
            jac[b, i] = grad_in[b]
    return jac


def numpy_jacobian(layer: Any, x: np.ndarray) -> np.ndarray:
    """Per-sample Jacobian of a protocol layer at ``x``, by backward of output basis vectors.

    x: (batch, in_features). Returns float64 (samples, out_features, in_features) for the first
    ``samples = jacobian_samples(batch, out_features)``. Runs samples * out_features backwards; the
    caller's layer and ``x`` are left untouched.
    """
    _require_2d("input", x.shape)
    with _forwarded(layer, x) as (ready, out):
        return _numpy_jacobian_from(ready, x, out)


def torch_jacobian(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Per-sample Jacobian of ``module`` at ``x``, computed in x's dtype (float64 by default).

    x: (batch, in_features). Returns float64 (samples, out_features, in_features) for the first
    ``samples = jacobian_samples(batch, out_features)``. Works on a deep
    copy of the module converted to x's dtype, so the caller's parameters, dtype and buffers
    stay as they are. Plain autograd rather than ``torch.func``: a forward that updates
    buffers in place (batch-norm running stats) is refused inside a ``torch.func`` transform.
    One batched backward per sample keeps memory at out * batch * (out + in), not the full
    batch Jacobian's out * in * batch**2.
    """
    _require_2d("input", x.shape)
    xt = torch.as_tensor(x.copy()).requires_grad_(True)  # on the default (reference) device
    with torch.enable_grad():
        out = copy.deepcopy(module).to(xt.dtype)(xt)
    _require_2d("output", tuple(out.shape))
    batch, n_out = out.shape
    eye = torch.eye(n_out, dtype=out.dtype)
    samples = jacobian_samples(batch, n_out)
    jac = np.empty((samples, n_out, x.shape[1]))
    for b in range(samples):
        basis = torch.zeros((n_out, batch, n_out), dtype=out.dtype)
        basis[:, b, :] = eye
        jac[b] = _basis_backward(out, xt, basis)[:, b, :].cpu().numpy()  # (n_out, batch, in)
    return jac


def _basis_backward(out: torch.Tensor, xt: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """dx for each of ``basis`` (k, *out.shape): one batched backward, or one backward each
    for a module built on a custom autograd Function without a batching rule (the autodiff
    reference's, whose backward runs NumPy code)."""
    try:
        (rows,) = torch.autograd.grad(out, xt, basis, retain_graph=True, is_grads_batched=True)
    except RuntimeError:
        rows = torch.stack([torch.autograd.grad(out, xt, g, retain_graph=True)[0] for g in basis])
    return rows


def too_large(x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> str | None:
    """None if probing is affordable, else a note like 'skipped: 784 inputs per sample > 256'."""
    sizes = ((math.prod(x_shape[1:]), "inputs"), (math.prod(out_shape[1:]), "outputs"))
    over = [f"{n} {what}" for n, what in sizes if n > MAX_JACOBIAN_ELEMENTS]
    if not over:
        return None
    return f"skipped: {' and '.join(over)} per sample > {MAX_JACOBIAN_ELEMENTS}"


def describe_jacobian_difference(ours: np.ndarray, reference: np.ndarray, tol: Tolerance) -> dict:
    """Where two per-sample Jacobians (batch, out, in) differ; a JSON-serialisable dict.

    Keys (an entry mismatches when ``tol`` says so, see ``gradparity.core.tolerance``):
    samples, out_features, in_features; entries (total) and mismatch_entries (all samples);
    whole_rows / whole_cols: output (input) indices whose every entry mismatches in every
    sample, i.e. that output's derivative (the gradient to that input) is wrong throughout;
    sign_flipped_entries: mismatching entries where both sides are non-zero with opposite
    signs (matching entries are skipped: round-off around zero flips signs meaninglessly);
    negated: there are mismatches, yet ours matches the negated reference; ours_zero: there
    are mismatches and ours is zero everywhere (within the tolerance's allowance at zero);
    worst: the mismatching entry with the largest error (sample, out, in, ours, reference),
    or None. Only for a square Jacobian, else None, since only there is i == j meaningful:
    diagonal_mismatches, off_diagonal_mismatches; diagonal_match, off_diagonal_match;
    diagonal_only / off_diagonal_only (there are mismatches, all on / all off i == j);
    ours_diagonal_zero / ours_offdiag_zero (ours is zero there, within the tolerance, and
    mismatches there: the reference is not); transposed (there are mismatches, yet ours
    matches the reference's per-sample transpose); reference_elementwise (the reference's
    off-diagonal is exactly zero: an elementwise layer such as a sigmoid).
    """
    if ours.shape != reference.shape or ours.ndim != 3:
        raise ValueError(
            f"need two (batch, out, in) Jacobians, got {ours.shape} and {reference.shape}"
        )
    o = np.asarray(ours, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    batch, n_out, n_in = r.shape
    errors = tol.errors(o, r)
    mismatch, err = errors.mismatch, errors.error
    any_mismatch = bool(mismatch.any())
    finite_r = np.abs(r[np.isfinite(r)])
    # "Zero" means within what the tolerance allows around a zero reference entry.
    zero = tol.rtol * (float(finite_r.max()) if finite_r.size else 0.0) + tol.atol

    def ours_zero(where: np.ndarray | slice = slice(None)) -> bool:
        return bool(np.all(np.abs(o[where]) <= zero))

    worst = None
    if any_mismatch:
        b, i, j = first_largest(np.where(mismatch, err, -1.0))
        worst = {
            "sample": int(b),
            "out": int(i),
            "in": int(j),
            "ours": float(o[b, i, j]),
            "reference": float(r[b, i, j]),
        }
    pattern: dict = {
        "samples": batch,
        "out_features": n_out,
        "in_features": n_in,
        "entries": int(mismatch.size),
        "mismatch_entries": int(mismatch.sum()),
        # Guarded: with no mismatch (or no samples) .all() would be vacuously true.
        "whole_rows": np.flatnonzero(mismatch.all(axis=(0, 2))).tolist() if any_mismatch else [],
        "whole_cols": np.flatnonzero(mismatch.all(axis=(0, 1))).tolist() if any_mismatch else [],
        "sign_flipped_entries": int((mismatch & (np.sign(o) * np.sign(r) < 0)).sum()),
        "negated": any_mismatch and tol.matches(o, -r),
        "ours_zero": any_mismatch and ours_zero(),
        "worst": worst,
    }
    square_keys = (
        "diagonal_mismatches",
        "off_diagonal_mismatches",
        "diagonal_match",
        "off_diagonal_match",
        "diagonal_only",
        "off_diagonal_only",
        "ours_diagonal_zero",
        "ours_offdiag_zero",
        "transposed",
        "reference_elementwise",
    )
    if n_out != n_in:
        return pattern | dict.fromkeys(square_keys)
    diag = np.broadcast_to(np.eye(n_out, dtype=bool), r.shape)
    diag_bad, off_bad = int(mismatch[diag].sum()), int(mismatch[~diag].sum())
    transposed = any_mismatch and tol.matches(o, r.transpose(0, 2, 1))
    return pattern | {
        "diagonal_mismatches": diag_bad,
        "off_diagonal_mismatches": off_bad,
        "diagonal_match": diag_bad == 0,
        "off_diagonal_match": off_bad == 0,
        "diagonal_only": diag_bad > 0 and off_bad == 0,
        "off_diagonal_only": off_bad > 0 and diag_bad == 0,
        "ours_diagonal_zero": diag_bad > 0 and ours_zero(diag),
        "ours_offdiag_zero": off_bad > 0 and ours_zero(~diag),
        "transposed": bool(transposed),
        "reference_elementwise": not np.abs(r[~diag]).any(),
    }


def _message(p: dict) -> str:
    """One sentence for a student from a ``describe_jacobian_difference`` pattern.

    The most specific explanation that fits all mismatches wins, hence the order of the checks.
    """
    k, n, batch = p["mismatch_entries"], p["entries"], p["samples"]
    share = f"{k} of {n} entries over {batch} sample{'' if batch == 1 else 's'}"
    if k == 0:
        return f"ours' Jacobian matches the reference's in all {n} entries"
    if p["ours_zero"]:
        return (
            f"ours' Jacobian is zero everywhere ({share} differ): backward passes no "
            "gradient through (e.g. it returns zeros or multiplies by a zero mask)"
        )
    if p["negated"]:
        return f"ours' Jacobian is the reference's negated ({share} differ): a sign error"
    if p["transposed"]:
        return (
            f"ours' Jacobian is the reference's transposed ({share} differ): backward "
            "multiplies by J instead of J^T, e.g. by W where W.T belongs"
        )
    if p["ours_offdiag_zero"]:
        also = "" if p["diagonal_match"] else ", and its diagonal is wrong as well"
        return (
            f"ours' Jacobian is diagonal only ({share} differ): the off-diagonal terms "
            "(-s_i*s_j for softmax) are missing; an elementwise derivative was used for a "
            f"layer that mixes its inputs{also}"
        )
    if p["diagonal_only"] and p["reference_elementwise"]:
        return (
            "the layer is elementwise (both Jacobians are diagonal) and ours' derivative "
            f"f'(x) is wrong ({share})"
        )
    if p["diagonal_only"]:
        zero = ", where ours is zero" if p["ours_diagonal_zero"] else ""
        return (
            f"the Jacobians differ only on the diagonal ({share}{zero}): the "
            "Kronecker-delta (i == j) term is wrong (inverted or missing)"
        )
    if p["off_diagonal_only"]:
        return (
            f"the Jacobians differ only off the diagonal ({share}): the cross terms "
            "d out_i/d x_j (i != j) are wrong while the elementwise part is right"
        )
    rows, cols = p["whole_rows"], p["whole_cols"]
    if 0 < len(rows) < p["out_features"] and k == len(rows) * p["in_features"] * batch:
        return (
            f"the Jacobians differ in whole rows only (outputs {rows}): ours' derivative "
            "of those outputs is wrong with respect to every input"
        )
    if 0 < len(cols) < p["in_features"] and k == len(cols) * p["out_features"] * batch:
        return (
            f"the Jacobians differ in whole columns only (inputs {cols}): the gradient "
            "ours sends to those inputs is wrong from every output"
        )
    parts = [f"{p['sign_flipped_entries']} of them with the opposite sign"]
    if p["diagonal_match"] is not None:
        parts.append(f"diagonal {'agrees' if p['diagonal_match'] else 'differs'}")
        parts.append(f"off-diagonal {'agrees' if p['off_diagonal_match'] else 'differs'}")
    w = p["worst"]
    return (
        f"the Jacobians differ in {share} ({', '.join(parts)}); the worst is "
        f"d out[{w['out']}]/d x[{w['in']}] of sample {w['sample']}: ours {w['ours']:.6g}, "
        f"reference {w['reference']:.6g}"
    )


def probe(
    layer: Any, module: torch.nn.Module, x: np.ndarray, tol: Tolerance
) -> JacobianProbe | str:
    """Both Jacobians of a layer at x (batch, features) and where they differ.

    Returns a note string instead when the probe does not apply: a non-2-D input or output,
    more than MAX_JACOBIAN_ELEMENTS inputs or outputs per sample, or Jacobian shapes that
    disagree (a shape bug that the ordinary comparison already names).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        return f"skipped: the Jacobian probe takes 2-D (batch, features) inputs, got {x.shape}"
    with _forwarded(layer, x) as (ready, out):
        if out.ndim != 2:
            return (
                f"skipped: the Jacobian probe takes 2-D (batch, features) outputs, got {out.shape}"
            )
        note = too_large(x.shape, out.shape)
        if note is not None:
            return note
        ours = _numpy_jacobian_from(ready, x, out)
    reference = torch_jacobian(module, x)
    if ours.shape != reference.shape:
        return f"skipped: ours' Jacobian is {ours.shape} but the reference's is {reference.shape}"
    pattern = describe_jacobian_difference(ours, reference, tol)
    return JacobianProbe(ours=ours, reference=reference, pattern=pattern, message=_message(pattern))
