"""``compare_function(..., reference=None)``: the float64 central-difference referee on the
user's own ``loss_fn(params, x, target)``, parameter by parameter.

A parameter of at most ``FULL_LIMIT`` entries gets its whole numeric gradient (two loss calls
per entry), so every diagnosis applies as against a torch reference. A larger one is sampled:
``DIRECTIONS`` random directions and ``ENTRIES`` single entries (the largest of ours' gradient
and random ones); ours' directional derivatives, and those of its transpose or batch sum, are
tested against the numeric ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradparity.comparison.diagnose.common import transpose_fix
from gradparity.comparison.diagnose.values import diagnose
from gradparity.comparison.diff import broadcasts_onto, compare_tensor, failed_row
from gradparity.core.errors import InputError
from gradparity.core.metrics import tensor_diff
from gradparity.core.rounding import round_sig
from gradparity.core.row import Row
from gradparity.core.status import Status
from gradparity.core.tolerance import Tolerance
from gradparity.evidence import central_difference
from gradparity.evidence.central_difference import Moved, NumericGradient
from gradparity.evidence.penalty import explain_penalty
from gradparity.evidence.progress import Progress
from gradparity.evidence.repeats import mark_repeat
from gradparity.locate.function import NUMERIC_REFERENCE
from gradparity.pairing.structure import layer_index, rebuild
from gradparity.reference.layout import squeezed
from gradparity.sides.function_run import UserRun, call_loss_fn

FULL_LIMIT = 256
DIRECTIONS = 6
ENTRIES = 6
# Central differences with central_difference's step are good to ~1e-9 relative to the loss;
# a bug is off by O(1), so 1e-5 (plus 1e-8 of the loss) separates the two with room on both
# sides.
NUMERIC_RTOL = 1e-5
NUMERIC_ATOL_PER_LOSS = 1e-8
# Central differences carry their own error, which moves with the machine's round-off (on
# correct code it reaches 3.5e-3 of the allowed error: benchmarks/tolerance.py); below a tenth
# of the allowed error it is written as 0, so a report is the same on any machine.
NUMERIC_NOISE_FLOOR = 0.1


def batch_of(x: np.ndarray, target: np.ndarray) -> tuple[int | None, bool | None]:
    """(batch size, examples as columns) as the shapes of x and target show them; None for
    what they leave open (x and target of the same shape, or square)."""
    if x.ndim < 2:
        return 1, False
    if x.ndim > 2:
        return int(x.shape[0]), False
    rows, cols = x.shape
    t = target.shape
    by_rows = len(t) >= 1 and t[0] == rows and (len(t) == 1 or t[1] != cols)
    by_cols = (len(t) == 1 and t[0] == cols) or (len(t) == 2 and t[1] == cols and t[0] != rows)
    if by_rows and not by_cols:
        return rows, False
    if by_cols and not by_rows:
        return cols, True
    return None, None


def batch_and_layout(
    x: np.ndarray, target: np.ndarray, batch_size: int | None
) -> tuple[int | None, str]:
    """(batch size, layout word) for the diagnoses of a function's gradients: ``batch_size``
    when given, else what ``batch_of`` reads from the shapes; the layout is "columns" for
    examples held as columns, "" for rows, "unknown" when the shapes leave it open (a
    transpose fix then names both)."""
    batch, columns = batch_of(x, target)
    if batch_size is not None and x.ndim == 2:
        batch, columns = batch_size, x.shape[1] == batch_size != x.shape[0]
    return batch, {True: "columns", False: "", None: "unknown"}[columns]


class NumericLoss:
    """The user's loss at a working copy of the parameters, one entry moved at a time.
    ``precision``: the dtype loss_fn returns its value in; central differences need float64
    (float32's rounding, ~1e-7 of the loss, swamps a difference over a step of 1e-6)."""

    def __init__(self, loss_fn: Callable, params: Any, flat: dict, x, target) -> None:
        self.fn, self.x, self.target = loss_fn, x, target
        self.work = {n: np.array(a, dtype=np.float64, copy=True) for n, a in flat.items()}
        self.tree = rebuild(params, self.work)
        self.base, self.precision = self._evaluate()

    def _evaluate(self) -> tuple[float, str]:
        value, precision = call_loss_fn(self.fn, self.tree, self.x.copy(), self.target.copy())
        if not np.isfinite(value):
            raise InputError(f"loss_fn returned {value}; it must return a finite loss")
        return value, precision

    def __call__(self) -> float:
        return self._evaluate()[0]

    def moving(self, name: str) -> Moved:
        """The loss with parameter ``name`` moved by a step (its shape), put back after each
        call: the function ``central_difference`` differentiates."""
        p = self.work[name]
        base = p.copy()

        def value(step: np.ndarray) -> float:
            p[...] = base + step
            try:
                return self()
            finally:
                p[...] = base

        return value

    def gradient(self, name: str, progress: Progress | None = None) -> np.ndarray:
        """The whole numeric gradient of parameter ``name`` (its shape), entry by entry;
        ``progress`` shows how far it got."""
        p = self.work[name]
        moved = self.moving(name)
        if progress is not None:
            moved = progress.counting(f"{name} (warm-up input)", moved, p.size)
        return central_difference.full_gradient(moved, p.shape, central_difference.step_size(p))

    def uses_params(self, rng: np.random.Generator) -> bool:
        """Does moving every entry by a random amount change the loss at all? (Random: a
        linear softmax or SVM loss does not change when all scores move together.)"""
        saved = {n: a.copy() for n, a in self.work.items()}
        for a in self.work.values():
            a += 1e-3 * max(1.0, float(np.abs(a).max())) * rng.standard_normal(a.shape)
        moved = self()
        for n, a in self.work.items():
            a[...] = saved[n]
        return moved != self.base


def numeric_tolerance(
    loss_value: float, rtol: float | None = None, atol: float | None = None
) -> Tolerance:
    """The tolerance against central differences at a loss of ``loss_value``; ``rtol`` and
    ``atol`` replace the defaults where given."""
    return Tolerance(
        NUMERIC_RTOL if rtol is None else float(rtol),
        # Rounded as the report writes it: the loss's last bits move with the machine.
        round_sig(NUMERIC_ATOL_PER_LOSS * max(1.0, abs(loss_value)))
        if atol is None
        else float(atol),
        "float64",
        NUMERIC_NOISE_FLOOR,
    )


def matches_numeric(loss: NumericLoss, name: str, g: np.ndarray, rng: np.random.Generator) -> bool:
    """Does ``g`` give loss_fn's directional derivatives along random directions?"""
    p = loss.work[name]
    if g.shape != p.shape:
        return False
    measured = central_difference.numeric_gradient(
        loss.moving(name), p, rng, full_limit=0, directions=DIRECTIONS
    )
    ours = central_difference.along(g, measured.directions)
    return tensor_diff(ours, measured.slopes, numeric_tolerance(loss.base)).ok


def referee_rows(
    rows: list[Row],
    grads: dict[str, np.ndarray],
    make_loss: Callable[[], NumericLoss],
    rng: np.random.Generator,
) -> None:
    """With a torch reference and loss_fn: a diverging gradient that matches central
    differences of loss_fn is right for ours' own loss, so the reference (or its loss) is what
    differs. Sets ``referee`` ("ours" or "reference", also shown in ``detail``) and the
    wording, in place."""
    diverging = [
        r for r in rows if r.diverged and r.diagnosis not in ("stale", "accumulated", "raised")
    ]
    if not diverging:
        return
    loss = make_loss()
    if loss.precision != "float64":  # its central differences would be rounding noise
        return
    for row in diverging:
        name = row.address.name
        assert name is not None  # every row here is a parameter's gradient (grad:<name>)
        ours_right = matches_numeric(loss, name, grads[name], rng)
        row.referee = row.detail["referee"] = "ours" if ours_right else "reference"
        if ours_right:
            row.message = (
                f"ours matches central differences of loss_fn, the reference does not "
                f"({row.message}): the reference computes another function than ours"
            )
            row.fix = (
                "make the reference model and reference_loss compute what loss_fn computes "
                "(same layers, same cost and reduction, same penalty terms)"
            )


def _candidates(g: np.ndarray, shape: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """(label, ours brought to the parameter's shape): "" = as it is (or reshaped)."""
    core = squeezed(shape)
    found = []
    if g.shape == shape or squeezed(g.shape) == core:
        found.append(("", g.reshape(shape)))
    if g.ndim == 2 and g.T.shape == shape:
        found.append(("transposed", g.T))
    for axis in range(g.ndim):
        kept = squeezed(g.shape[:axis] + g.shape[axis + 1 :])
        if kept == core and g.shape[axis] != 1:
            found += [
                ("not_reduced", g.sum(axis=axis).reshape(shape)),
                ("not_reduced", g.mean(axis=axis).reshape(shape)),
            ]
    return found


def _sampled_row(
    fn: str,
    name: str,
    g: np.ndarray,
    p: np.ndarray,
    measured: NumericGradient,
    tol: Tolerance,
    batch: int | None,
    layout: str,
) -> Row:
    """Ours' gradient ``g`` of parameter ``p`` against loss_fn's derivatives along the
    sampled directions, trying the layouts ``_candidates`` offers when it does not match."""
    numeric = measured.slopes

    def along(a: np.ndarray) -> np.ndarray:
        return central_difference.along(a, measured.directions)

    row = Row("numeric", fn, "parameter", f"grad:{name}", list(g.shape), list(p.shape))
    row.detail = {"sampled": {"directions": DIRECTIONS, "entries": measured.entries},
                  "numeric": numeric.tolist()}  # fmt: skip
    for label, aligned in _candidates(g, p.shape):
        ours = along(aligned)
        d = tensor_diff(ours, numeric, tol)
        if label == "" or row.max_abs is None:
            row.max_abs, row.max_rel, row.cosine = d.max_abs, d.max_rel, d.cosine
            row.mismatch_frac, row.detail["ours"] = d.mismatch_frac, ours.tolist()
        if not d.ok:
            continue
        if label == "" and g.shape == p.shape:
            return row
        if label == "" and broadcasts_onto(g.shape, p.shape, p.shape):
            row.broadcasts = True
            row.message = (
                f"gradient has shape {g.shape}, the parameter {p.shape}: the values are right "
                "and an update p -= lr * g broadcasts, but a gradient usually has its "
                "parameter's shape"
            )
            return row
        row.status, row.diagnosis = Status.DIVERGED, label or "shape_mismatch"
        row.message, row.fix = _sampled_words(label, name, g.shape, p.shape, layout)
        return row
    row.status = Status.DIVERGED
    if g.shape != p.shape:
        row.diagnosis = "shape_mismatch"
        row.message = (
            f"gradient of {name} has shape {g.shape}, the parameter {p.shape}, and no layout "
            "of it matches the numeric gradient"
        )
        row.fix = f"give it the shape {p.shape} and check the formula"
        return row
    found = diagnose(along(g), numeric, tol, quantity=f"grad:{name}", batch_size=batch)
    row.diagnosis, row.fix = found.label, found.fix
    row.detail.update(found.detail)
    row.message = found.message
    if found.label == "unexplained":
        assert row.mismatch_frac is not None  # set whenever values were compared
        row.message = (
            f"ours' directional derivatives differ from central differences of loss_fn along "
            f"{round(row.mismatch_frac * len(numeric))} of {len(numeric)} directions "
            f"(max relative error {row.max_rel:.3g})"
        )
    return row


def _sampled_words(label: str, name: str, g_shape, p_shape, layout: str) -> tuple[str, str]:
    if label == "transposed":
        return (
            f"gradient of {name} is the transpose of the numeric gradient (shape {g_shape}, "
            f"the parameter {p_shape})",
            transpose_fix("grad", layout),
        )
    if label == "not_reduced":
        return (
            f"gradient of {name} has shape {g_shape}, the parameter {p_shape}: reduced over its "
            "extra (batch) axis it matches the numeric gradient",
            "sum (or average, as the loss does) over the batch axis, keeping the parameter's shape",
        )
    return (
        f"gradient of {name} has shape {g_shape}, the parameter {p_shape}; the values match "
        "after reshaping",
        f"reshape it to {p_shape}",
    )


def _numeric_words(text: str) -> str:
    return text.replace("the reference's", "the numeric gradient's").replace(
        "the reference", "the numeric gradient"
    )


def numeric_rows(
    fn: str,
    params: Any,
    flat: dict[str, np.ndarray],
    run: UserRun,
    warm_run: UserRun,
    loss_fn: Callable,
    x: np.ndarray,
    target: np.ndarray,
    *,
    x_warm: np.ndarray,
    rng: np.random.Generator,
    meta: dict,
    batch_size: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> dict[str, Any]:
    """Every parameter gradient of ``run`` against central differences of ``loss_fn``, judged
    here (the rows, deepest parameter first); the gradients at ``x_warm`` (the warm-up input)
    tell stale and accumulated ones. Returns what the front end's plan needs: rows, depth
    (parameter -> position towards the output), arrays, tolerance, notes and meta."""
    loss = NumericLoss(loss_fn, params, flat, x, target)
    if loss.precision != "float64":
        raise InputError(
            f"loss_fn returned a {loss.precision} value; central differences need the loss in "
            "float64 (float32 rounding swamps them): compute and return it in float64 (drop "
            "np.float32(...) or .astype(np.float32))"
        )
    if not loss.uses_params(rng):
        raise InputError(
            "loss_fn returned the same loss when every parameter changed; it must compute the "
            "loss from the params it is given, not from arrays it holds"
        )
    batch, layout = batch_and_layout(x, target, batch_size)
    tol = numeric_tolerance(loss.base, rtol, atol)
    depth = layer_index(list(flat), [a.shape for a in flat.values()])
    rows: list[Row] = []
    arrays: dict = {}
    warm_loss: NumericLoss | None = None
    grads = run.grads or {}
    with Progress() as progress:  # cleared even when loss_fn raises
        for name in sorted(flat, key=lambda n: -depth[n]) if run.grads is not None else []:
            if name in run.bad_grads:  # complex: a finding, never compared as real
                rows.append(failed_row("numeric", fn, "parameter", run.bad_grads[name]))
                continue
            g, p = grads[name], loss.work[name]
            total = p.size if p.size <= FULL_LIMIT else DIRECTIONS + ENTRIES
            moved = progress.counting(name, loss.moving(name), total)
            measured = central_difference.numeric_gradient(
                moved, p, rng, full_limit=FULL_LIMIT, directions=DIRECTIONS, entries=ENTRIES,
                largest_of=g if g.shape == p.shape else None,
            )  # fmt: skip
            if measured.full is None:
                rows.append(_sampled_row(fn, name, g, p, measured, tol, batch, layout))
                continue
            expected = measured.full
            row = compare_tensor(
                "numeric", fn, "parameter", f"grad:{name}", g, expected, tol,
                batch_size=batch, param_shape=p.shape, conversion=layout,
            )  # fmt: skip
            explain_penalty(row, g, expected, p, tol)
            row.conversion = ""
            arrays[(fn, row.quantity)] = {"ours": g, "reference": expected}
            rows.append(row)
            if row.diverged and g.shape == p.shape and warm_run.grads is not None:
                if warm_loss is None:  # the loss at the warm-up input, made once when needed
                    warm_loss = NumericLoss(loss_fn, params, flat, x_warm, target)
                mark_repeat(row, g, expected, warm_loss.gradient(name, progress), tol)
    for row in rows:  # here the reference is the numeric gradient: say so
        row.message = _numeric_words(row.message)
        row.fix = _numeric_words(row.fix)
    return {
        "rows": rows,
        "depth": depth,
        "arrays": arrays,
        "tolerance": tol,
        "notes": [f"reference: float64 central differences of loss_fn (loss {loss.base:.6g})"]
        + [f"{r.address.name} has over {FULL_LIMIT} entries: sampled along {DIRECTIONS} "
           f"random directions and {ENTRIES} single entries" for r in rows
           if "sampled" in r.detail],
        "meta": {**meta, "batch_size": batch, "examples_as": layout or "rows",
                 "reference": NUMERIC_REFERENCE},
    }  # fmt: skip
