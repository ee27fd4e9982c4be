"""Name the likely bug behind one diverging pair of tensors (ours against the reference).

``diagnose`` runs fixed numeric tests and returns the first that fits to the tolerance; a label
is never guessed. Shapes differ: ``transposed`` (2-D, values match once transposed),
``not_reduced`` (an extra batch axis that sums, or averages, to the reference), else
``shape_mismatch``. Shapes agree, in this order: ``nonfinite``, ``zero``, ``sign_flipped``,
``batch_reduction``, ``reduction_count`` (a factor that is another count of the quantity:
features, N x C, elements, a pool area; ``comparison.diagnose.counts``), ``scaled``,
``transposed`` (square), ``missing_local_derivative`` (ours equals the upstream gradient),
``upstream_ignored`` (ours times the upstream gradient equals the reference), ``transposed``
for an output flattened in another axis order (``comparison.diagnose.forward_shapes``), else
the error statistics (``gradparity.comparison.diagnose.unexplained``), labelled ``mask_missing`` or
``mask_inverted`` where the zero patterns say so (``comparison.diagnose.masks``), otherwise
``unexplained``. The shape tests live in ``gradparity.comparison.diagnose.shapes``;
``Diagnosis`` and the shared helpers in ``gradparity.comparison.diagnose.common``, the labels
in ``gradparity.core.labels``. The harness assigns ``accumulated``, ``stale``,
``mutates_input`` and ``raised``: they need several steps or the call itself; evidence steps
that know the parameter's value assign ``weight_decay`` (``gradparity.evidence.penalty``) and
``transposed`` from ``W @ dZ`` for ``W.T @ dZ`` (``gradparity.evidence.weight_access``).
After these, more evidence plug-ins of ``compare`` may name a row the value tests could not,
each by its own numeric test on the layer alone: ``tied_maxima`` (``gradparity.evidence.ties``),
then ``transposed``, ``missing_cross_terms`` and ``elementwise_derivative`` from the Jacobian
probe (``gradparity.evidence.jacobian_labels``), then ``extra_activation_derivative`` and
``gradient_wrt_probabilities`` for the loss gradient (``gradparity.evidence.loss_patterns``).

"Matches" always means ``tol.matches(x, hypothesis)``: the hypothesis (``-ref``,
``f * ref``, ``ref.T``, the upstream gradient, ...) takes the reference's place, so the
tolerance scales with it. A fitted factor counts as ``1``, ``-1``, ``N`` or ``1/N`` within
``max(1e-6, 10 * tol.rtol)`` relative. One element always fits some factor: it is ``scaled``
only when it matches c times the reference for an integer c (or 1/c) of 2 .. 32
(``_SIMPLE_FACTORS``). A ``batch_reduction`` whose factor also equals another constant of the
layer (a channel count, a pool area) says so (detail ``also_equals``); ``compare`` re-runs it
at another batch size (``gradparity.evidence.batch_rerun``). ``detail`` holds only JSON
values; an infinite or NaN statistic is stored as ``None``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from gradparity.comparison.diagnose.common import (
    _TRANSPOSE_FIX,
    Diagnosis,
    _at,
    _close,
    _Context,
    _fit_factor,
    _fmt,
    _num,
    _rel_norm,
    _shape,
)
from gradparity.comparison.diagnose.counts import (
    coincidence_phrase,
    either,
    reduction_count,
    structural_constants,
)
from gradparity.comparison.diagnose.forward_shapes import reordered_output
from gradparity.comparison.diagnose.shapes import _diagnose_shapes
from gradparity.comparison.diagnose.unexplained import describe_location, unexplained
from gradparity.core.labels import (
    BATCH_REDUCTION,
    LABELS,
    MISSING_LOCAL_DERIVATIVE,
    NONFINITE,
    SCALED,
    SIGN_FLIPPED,
    TRANSPOSED,
    UPSTREAM_IGNORED,
    ZERO,
)
from gradparity.core.tolerance import Tolerance

__all__ = [
    "LABELS",
    "Diagnosis",
    "close_factor",
    "coincidence_phrase",
    "describe_location",
    "diagnose",
    "either",
    "fit_factor",
    "structural_constants",
]


def diagnose(
    ours: np.ndarray,
    ref: np.ndarray,
    tol: Tolerance,
    *,
    quantity: str,
    batch_size: int | None = None,
    upstream: np.ndarray | None = None,
    param_shape: tuple[int, ...] | None = None,
    layout: str = "",
) -> Diagnosis:
    """Name what is wrong with ``ours`` given the reference value ``ref``.

    ours: any shape. ref: the correct shape, in ours' layout where the shapes are compatible.
    quantity: "output", "grad_input", "grad:<param>", "loss", "param:<name>", "state:<name>".
    batch_size: leading dimension of the layer input (``batch_reduction`` needs it).
    upstream: dL/d(output) fed to backward, the layer output's shape (for "grad_input").
    param_shape: shape of ours' parameter (for "grad:*").
    layout: the parameter's layout conversion to torch ("identity" means ours stores a weight
    (out, in) like torch, "transpose" (in, out)); it picks the wording of the fix.

    Raises ValueError when the shapes are equal and ours matches ref under ``tol``: only a
    diverging pair has something to diagnose.
    """
    o = np.asarray(ours, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    up = None if upstream is None else np.asarray(upstream, dtype=np.float64)
    pshape = None if param_shape is None else tuple(param_shape)
    ctx = _Context(tol, quantity, batch_size, up, pshape, layout)
    if o.shape != r.shape:
        return _diagnose_shapes(o, r, ctx, _diagnose_values)
    if tol.matches(o, r):
        raise ValueError("pair does not diverge: ours matches the reference under the tolerance")
    return _diagnose_values(o, r, ctx)


# ---------------------------------------------------------------- fixes by kind of quantity
# (_TRANSPOSE_FIX, shared with the shape tests, is in diagnose_common)

_ZERO_FIX = {
    "grad": "the gradient is never written, or is written to a copy: assign the computed value "
    "into layer.grads[key] in backward",
    "grad_input": "backward returns zeros: return the computed dL/dx (e.g. grad_out @ W.T), not "
    "a freshly allocated array",
    "output": "forward returns zeros: return the computed result, not a buffer never filled",
    "loss": "the loss is zero: compute it from the logits and the targets and return it",
    "param": "the parameter was zeroed: update it in place (p -= lr * g) instead of replacing it",
    "state": "the optimiser state stays zero: update it every step and store it back",
    "other": "the value is never computed: check that it is written and returned",
}
_SIGN_FIX = {
    "grad": "flip the sign: check the order of a subtraction (softmax - onehot, not onehot - "
    "softmax) and that the minus of a derivative such as d(1 - x)/dx is kept",
    "param": "step against the gradient: p -= lr * grad, not p += lr * grad",
    "state": "flip the sign in the state update, e.g. m = beta * m + (1 - beta) * grad",
    "loss": "the loss is -log(p) of the true class: restore the minus sign",
    "other": "flip the sign: check the order of a subtraction",
}
_SIGN_FIX["grad_input"] = _SIGN_FIX["grad"]


# ---------------------------------------------------------------- same shape


def _diagnose_values(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis:
    """Value tests in order; o and r have the same shape and do not match."""
    for test in (_nonfinite, _zero, _sign_flipped, _batch_reduction, reduction_count, _scaled,
                 _transposed_square, _missing_local_derivative, _upstream_ignored,
                 reordered_output):  # fmt: skip
        found = test(o, r, ctx)
        if found is not None:
            return found
    return unexplained(o, r, ctx)


def _nonfinite(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    bad = ~np.isfinite(o) & np.isfinite(r)
    if not bad.any():
        return None
    first = np.unravel_index(int(np.argmax(bad)), o.shape)
    n_nan, n_inf = int(np.isnan(o[bad]).sum()), int(np.isinf(o[bad]).sum())
    detail = {"nan": n_nan, "inf": n_inf, "numel": int(o.size),
              "first_index": [int(i) for i in first], "ref_at_first": float(r[first])}  # fmt: skip
    return Diagnosis(
        NONFINITE,
        detail,
        f"{ctx.noun} has {n_nan} NaN and {n_inf} infinite values where the reference is finite "
        f"({'first' + _at(first) + ': ' if first else ''}the reference is {_fmt(r[first])} there)",
        "find the exp, log, division or sqrt that overflows or divides by zero and use a stable "
        "form: subtract the row max before exp, clip probabilities before log, add a small eps "
        "before dividing",
    )


# Ours this small next to the reference is zero up to round-off (e.g. a sum that cancels).
_ROUND_OFF_ZERO = 1e-10


def _zero(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    if not np.any(r != 0) or not np.isfinite(o).all():
        return None
    ref_max, ours_max = float(np.max(np.abs(r))), float(np.max(np.abs(o)))
    # Against an infinite or NaN reference every finite value would pass for "zero".
    if ours_max > _ROUND_OFF_ZERO * ref_max or not np.isfinite(ref_max):
        return None
    # Round-off's own size moves with the machine: the report names the bound it is under.
    bound = _ROUND_OFF_ZERO * ref_max
    what = "all zeros" if ours_max == 0 else f"zero up to round-off (below {_fmt(bound)})"
    size = {"ours_max_abs": 0.0} if ours_max == 0 else {"ours_max_abs_below": _num(bound)}
    return Diagnosis(
        ZERO,
        {"numel": int(o.size), "ref_max_abs": _num(ref_max), **size},
        f"{ctx.noun} is {what}; the reference's largest magnitude is {_fmt(ref_max)}",
        ctx.hint(_ZERO_FIX),
    )


def _sign_flipped(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    if not ctx.tol.matches(-o, r):
        return None
    at = np.unravel_index(int(np.argmax(np.abs(np.nan_to_num(r)))), r.shape)
    return Diagnosis(
        SIGN_FLIPPED,
        {"factor": -1.0},
        f"{ctx.noun} has the opposite sign of the reference's everywhere (ours {_fmt(o[at])}, "
        f"reference {_fmt(r[at])}{_at(at)})",
        ctx.hint(_SIGN_FIX),
    )


def fit_factor(o: np.ndarray, r: np.ndarray, tol: Tolerance) -> float | None:
    """Least-squares f with ``o`` matching f * ``r`` under ``tol``, else None."""
    return _fit_factor(o, r, tol)


def close_factor(a: float, b: float, tol: Tolerance) -> bool:
    """A fitted factor ``a`` counts as ``b`` (the closeness of the module docstring)."""
    return _close(a, b, tol)


def _batch_reduction(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    n = ctx.batch_size
    if n is None or n <= 1:
        return None
    f = _fit_factor(o, r, ctx.tol)
    if f is None:
        return None
    loss = ctx.kind == "loss"
    if _close(f, n, ctx.tol):
        ours_red, ref_red = "sum", "mean"
        message = f"values are {_fmt(f)} times the reference's, the batch size: ours sums over "
        fix = (
            "average the per-example losses over the batch instead of summing them"
            if loss
            else f"divide by the batch size ({n}) exactly once, where the loss averages over the "
            f"batch: for a mean loss dL/dprediction carries the 1/{n} (softmax-CE: "
            f"(softmax - onehot) / {n}); if the loss also averages over outputs, check that "
            "divisor too"
        )
    elif _close(f, 1 / n, ctx.tol):
        ours_red, ref_red = "mean", "sum"
        message = f"values are 1/{n} of the reference's (factor {_fmt(f)}): ours averages over "
        fix = (
            "sum the per-example losses over the batch, as the reference does"
            if loss
            else f"remove the extra division by the batch size ({n}): the 1/{n} of a mean loss "
            "belongs in dL/dlogits only, and a layer's backward must not divide again"
        )
    else:
        return None
    message += f"the batch where the reference {'averages' if ref_red == 'mean' else 'sums'}"
    if ours_red == "mean" and not loss:
        message += ", or divides by the batch size twice"
    detail = {"factor": f, "batch_size": int(n), "ours_reduction": ours_red,
              "ref_reduction": ref_red}  # fmt: skip
    also = structural_constants(o.shape, n, ctx.kind, ctx.upstream, ctx.param_shape)
    if also:
        detail["also_equals"] = also
        message += coincidence_phrase(also, n)
    return Diagnosis(BATCH_REDUCTION, detail, message, fix, ours_reduction=ours_red)


def _scaled(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    # One element always fits some factor, so there only a simple exact one says something.
    if o.size == 1:
        return _scaled_scalar(o, r, ctx)
    f = _fit_factor(o, r, ctx.tol)
    if f is None or _close(f, 1.0, ctx.tol) or _close(f, -1.0, ctx.tol):
        return None
    if ctx.kind in ("param", "state"):  # an update or optimiser state: not calculus
        fix = (
            f"find the extra factor of {_fmt(f)}: check the learning rate, the momentum/beta "
            "coefficients and the bias correction"
        )
    elif _close(abs(f), 2.0, ctx.tol):
        fix = "remove the extra factor of 2: d(0.5 * x**2)/dx is x, not 2x; or a term is doubled"
    elif _close(abs(f), 0.5, ctx.tol):
        fix = "a factor of 2 is missing: d(x**2)/dx is 2x; or a term should appear twice"
    else:
        fix = (
            f"find the extra constant factor of {_fmt(f)} in the formula: a wrong constant, or "
            "a normalisation applied twice"
        )
    residual = float(np.linalg.norm(o - f * r) / np.linalg.norm(o))
    # Round-off of an exact factor (1e-17 here, 1e-16 on another CPU) is written as 0, like
    # the errors below tensor_diff's noise floor, so the report is the same on any machine.
    residual = residual if residual >= ctx.tol.floor() * ctx.tol.rtol else 0.0
    return Diagnosis(
        SCALED,
        {"factor": f, "residual": residual},
        f"values are {_fmt(f)} times the reference's",
        fix + ("; the sign is flipped as well" if f < 0 else ""),
    )


# ---------------------------------------------------------------- one element

# A scalar's ratio is "exact" when ours matches c times the reference under the comparison's
# own tolerance for c (or -c) an integer 2 .. 32 or its inverse: a count the value was averaged
# or summed over (classes, outputs, elements per example, N x C), or a term counted k times.
# Only these: a ratio such as 3/2 has no count behind it and is left to ``unexplained``'s
# near-factor note. A random ratio falls in one of these 62 windows, each about 4 * rtol
# relative wide, with a chance of about 1e-5 at float64's rtol (1e-2 at float32's); the batch
# size and its inverse are tested first, by ``_batch_reduction``.
_MAX_SIMPLE = 32
_SIMPLE_FACTORS = [
    Fraction(k) if inverse == 1 else Fraction(1, k)
    for k in range(2, _MAX_SIMPLE + 1)
    for inverse in (1, -1)
]


def _exact_scalar_factor(o: np.ndarray, r: np.ndarray, tol: Tolerance) -> Fraction | None:
    """The simplest c of ``_SIMPLE_FACTORS`` (or its negative) with ours matching c * ref."""
    ov, rv = float(o.reshape(-1)[0]), float(r.reshape(-1)[0])
    if not (np.isfinite(ov) and np.isfinite(rv)) or rv == 0.0 or ov == 0.0:
        return None
    sign = 1 if (ov > 0) == (rv > 0) else -1
    for c in _SIMPLE_FACTORS:
        if tol.matches(o, sign * float(c) * r):
            return sign * c
    return None


def _scaled_scalar(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    c = _exact_scalar_factor(o, r, ctx.tol)
    if c is None:
        return None
    ratio = float(o.reshape(-1)[0]) / float(r.reshape(-1)[0])
    text = str(c)  # "3", "-1/18"
    inverse = abs(c.numerator) == 1
    what = f"{'-' if c < 0 else ''}1/{c.denominator} of" if inverse else f"{text} times"
    fix = (
        f"find the extra factor of {text}: a loss averaged over a different count (all elements "
        "instead of the batch, or the reverse), a wrong constant, or a term counted twice"
    )
    return Diagnosis(
        SCALED,
        {"factor": ratio, "exact_factor": text, "numel": 1},
        f"the value is {what} the reference's (ours {_fmt(o.reshape(-1)[0])}, reference "
        f"{_fmt(r.reshape(-1)[0])}): {text} exactly, to the tolerance",
        fix + ("; the sign is flipped as well" if c < 0 else ""),
    )


def _transposed_square(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    if o.ndim != 2 or o.shape[0] != o.shape[1] or not ctx.tol.matches(o.T, r):
        return None
    return Diagnosis(
        TRANSPOSED,
        {"ours_shape": list(o.shape), "ref_shape": list(r.shape)},
        f"{ctx.noun} is the transpose of the reference's (both have shape {_shape(o.shape)})",
        ctx.hint(_TRANSPOSE_FIX),
    )


def _missing_local_derivative(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    up = ctx.upstream
    if ctx.kind != "grad_input" or up is None or not ctx.tol.matches(o, up):
        return None
    ref_vs_up = _rel_norm(r, up)
    return Diagnosis(
        MISSING_LOCAL_DERIVATIVE,
        {"ref_rel_diff_to_upstream": _num(ref_vs_up)},
        f"{ctx.noun} equals the upstream gradient: the local derivative was not multiplied in "
        f"(the reference differs from the upstream gradient by {_fmt(ref_vs_up)} relative)",
        _LOCAL_DERIVATIVE_FIX.get(ctx.layout, _LOCAL_DERIVATIVE_FIX[""]),
    )


def _upstream_ignored(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    up = ctx.upstream
    if ctx.kind != "grad_input" or up is None or up.shape != o.shape:
        return None
    if not ctx.tol.matches(o * up, r):
        return None
    return Diagnosis(
        UPSTREAM_IGNORED,
        # ours times the upstream is within tolerance: only ours' own distance says more
        {"rel_norm": _num(_rel_norm(o, r))},
        f"{ctx.noun} times the upstream gradient equals the reference's: ours returns the local "
        "derivative alone, without grad_out",
        "multiply the local derivative by grad_out (the upstream gradient), e.g. "
        "grad_out * y * (1 - y) for a sigmoid, not y * (1 - y)",
    )


# Keyed by the layer's weight layout ("" for a layer without a weight).
_LOCAL_DERIVATIVE_FIX = {
    "": "multiply grad_out by the layer's local derivative, e.g. grad_out * s * (1 - s) for a "
    "sigmoid, grad_out * (x > 0) for a ReLU",
    "transpose": "multiply by the weight: dL/dx = grad_out @ W.T for a weight stored (in, out)",
    "identity": "multiply by the weight: dL/dx = grad_out @ W for a weight stored (out, in)",
}
