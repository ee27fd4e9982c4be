"""``compare_function(..., "autodiff")``: every parameter gradient against the exact gradient
of the user's own NumPy loss, run on torch tensors (``sides.autodiff.exact_gradients``).

The loss differentiated is ``loss_fn(params, x, target)``, or, for course code whose ``grads``
returns ``(loss, grads)`` (``net.loss(X, y)``), the loss part of that same call. Forward taps
recorded in that run pair with the user's NumPy-run taps by name (a forward bug shows there),
and a gradient tap ``gp.tap("z1", dz1, grad=True)`` with the exact dL/d(tap "z1"). When the
code cannot run on tensors, central differences of the same loss judge instead, and the report
says which was used and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradparity.comparison.diff import compare_tensor, failed_row
from gradparity.core.errors import InputError
from gradparity.core.row import Row
from gradparity.core.tolerance import tolerance_for
from gradparity.evidence.float32_budget import RowTolerances, float32_tolerances
from gradparity.evidence.function_numeric import batch_and_layout, numeric_rows
from gradparity.evidence.penalty import explain_penalty
from gradparity.evidence.repeats import mark_repeat
from gradparity.pairing.structure import flatten, layer_index
from gradparity.sides import autodiff
from gradparity.sides.function_run import UserRun

AUTODIFF = "autodiff"
TENSOR_MODULE = "torch._numpy"


def autodiff_reference(loss_fn: Callable | None, fn: str) -> str:
    """The reference as the report names it."""
    return f"autodiff: exact gradient of {_loss_words(loss_fn, fn)} ({TENSOR_MODULE})"


def _loss_words(loss_fn: Callable | None, fn: str) -> str:
    """The loss differentiated, in words: ``loss_fn``, else the loss ``fn()`` returns."""
    return f"loss_fn {_name(loss_fn)}" if loss_fn is not None else f"the loss your {fn}() returns"


def _name(fn: Any) -> str:
    given = getattr(fn, "__name__", type(fn).__name__)
    return "(lambda)" if given == "<lambda>" else given


class LossCall:
    """The loss to differentiate at (x, target): ``loss_fn(params, x, target)``, or the loss
    of ``grads(x, target)`` returning ``(loss, grads)``; each call gets fresh copies of x and
    target, which the engine runs as tensors."""

    def __init__(self, grads: Callable, loss_fn: Callable | None, params: Any) -> None:
        self.grads, self.loss_fn, self.params = grads, loss_fn, params

    def exact(self, flat: dict[str, np.ndarray], x: np.ndarray, target: np.ndarray):
        """``autodiff.ExactRun`` of the loss at (x, target): the gradients by ``flat``'s names."""
        x_in, t_in = np.array(x, copy=True), np.array(target, copy=True)
        if self.loss_fn is not None:
            loss_fn, params = self.loss_fn, self.params
            return autodiff.exact_gradients(
                lambda: loss_fn(params, x_in, t_in), flat, [loss_fn, self.grads],
                inputs=[x_in, t_in],
            )  # fmt: skip
        grads = self.grads
        return autodiff.exact_gradients(
            lambda: grads(x_in, t_in), flat, [grads], inputs=[x_in, t_in]
        )

    def numeric_loss_fn(self, flat: dict[str, np.ndarray]) -> Callable:
        """A ``loss_fn(params, x, target)`` for central differences: the loss (of ``loss_fn``,
        else the one ``grads`` returns) computed with the live arrays holding the values of
        the ``params`` it is given, put back after each call. The live arrays, since the code
        may read them where they are aliased (layer objects, globals), as autodiff allows."""
        user_loss, params = self.loss_fn, self.params
        grads = self.grads

        def live_loss(moved: Any, x: np.ndarray, target: np.ndarray) -> Any:
            values, saved = flatten(moved), {n: a.copy() for n, a in flat.items()}
            try:
                for n, live in flat.items():
                    live[...] = values[n]
                if user_loss is not None:
                    return user_loss(params, x, target)
                return grads(x, target)[0]
            finally:
                for n, live in flat.items():
                    live[...] = saved[n]

        return live_loss


def _param_rows(
    fn: str,
    flat: dict[str, np.ndarray],
    run: UserRun,
    exact: dict[str, np.ndarray],
    order: list[str],
    tols: RowTolerances,
    batch: int | None,
    layout: str,
) -> tuple[list[Row], dict]:
    """(one row per parameter in ``order``, the arrays compared): ours against the exact
    gradient, with the penalty (L2) explanation, each judged by its tolerance in ``tols``."""
    rows: list[Row] = []
    arrays: dict = {}
    for name in order:
        if name in run.bad_grads:  # complex: a finding, never compared as real
            rows.append(failed_row("chain", fn, "parameter", run.bad_grads[name]))
            continue
        g, expected, p = run.grads[name], exact[name], flat[name]  # type: ignore[index]
        tol = tols.of((fn, f"grad:{name}"))
        row = compare_tensor(
            "chain", fn, "parameter", f"grad:{name}", g, expected, tol,
            batch_size=batch, param_shape=p.shape, conversion=layout,
        )  # fmt: skip
        explain_penalty(row, g, expected, p, tol)
        row.conversion = ""
        arrays[(fn, row.quantity)] = {"ours": g, "reference": expected}
        rows.append(row)
    return rows, arrays


def _tap_rows(
    run: UserRun, exact: Any, tols: RowTolerances, batch: int | None
) -> tuple[list[Row], list[Row], dict, list[str]]:
    """(forward tap rows in call order, gradient tap rows in the order the backward made
    them, the arrays compared, notes on taps the tensor run did not reach)."""
    fwd: list[Row] = []
    bwd: list[Row] = []
    arrays: dict = {}
    missed: list[str] = []
    for name, info in run.bad_taps.items():  # complex or text: a finding, never compared
        fwd.append(failed_row("chain", name, "tap", {**info, "quantity": "output"}))
    for name, info in run.bad_grad_taps.items():
        bwd.append(failed_row("chain", name, "tap", {**info, "quantity": "grad_output"}))
    pairs = [(n, "output", v, exact.taps) for n, v in run.taps.items()]
    pairs += [(n, "grad_output", v, exact.tap_grads) for n, v in run.grad_taps.items()]
    for name, quantity, ours, theirs in pairs:
        if name not in theirs:
            missed.append(name if quantity == "output" else f"{name} (grad=True)")
            continue
        row = compare_tensor("chain", name, "tap", quantity, ours, theirs[name],
                             tols.of((name, quantity)), batch_size=batch)  # fmt: skip
        arrays[(name, quantity)] = {"ours": ours, "reference": theirs[name]}
        (fwd if quantity == "output" else bwd).append(row)
    notes = []
    if missed:
        notes.append(
            f"taps not compared (the differentiated loss never made them, or nothing depends "
            f"on them): {', '.join(missed)}"
        )
    return fwd, bwd, arrays, notes


def autodiff_rows(
    fn: str,
    call: LossCall,
    params: Any,
    flat: dict[str, np.ndarray],
    run: UserRun,
    warm_run: UserRun,
    x: np.ndarray,
    target: np.ndarray,
    *,
    x_warm: np.ndarray,
    rng: np.random.Generator,
    meta: dict,
    batch_size: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    dtype: str = "float64",
) -> dict[str, Any]:
    """The rows of ``run`` judged against the exact gradients of ``call``'s loss (forward
    taps, gradient taps, then parameters deepest first), in the form ``numeric_rows`` returns
    (rows, depth, arrays, tolerance, notes, meta); central differences when the code cannot
    run on tensors, with a note saying why. A float32 ``run`` is judged by its own rounding,
    measured against a float64 run of the same code (``float32_budget``)."""
    if call.loss_fn is None and run.grads is not None and run.loss is None:
        raise InputError(
            f"reference='autodiff' needs loss_fn=callable(params, x, target) -> loss, or a "
            f"{fn}(x, target) that returns (loss, grads); it returned only gradients"
        )
    why_not = autodiff.unavailable()
    exact = None
    if why_not is None and run.grads is not None:
        try:
            exact = call.exact(flat, x, target)
        except autodiff.NotOnTensors as exc:
            why_not = str(exc)
        except ValueError as exc:  # the loss itself is unfit: not scalar, no parameter in it
            raise InputError(f"reference='autodiff': {exc}") from exc
    if why_not is not None and dtype == "float32":
        raise InputError(
            f"reference='autodiff': your code cannot run on tensors ({why_not}), and central "
            "differences need float64: pass float64 arrays and dtype='float64'"
        )
    if why_not is not None:
        judged = numeric_rows(
            fn, params, flat, run, warm_run, call.numeric_loss_fn(flat), x, target,
            x_warm=x_warm, rng=rng, meta=meta, batch_size=batch_size, rtol=rtol, atol=atol,
        )  # fmt: skip
        judged["notes"].insert(
            0, f"autodiff could not run ({why_not}): central differences were used instead"
        )
        judged["meta"]["reference_used"] = "central differences"
        judged["meta"]["reference_loss"] = f"central differences of {_loss_words(call.loss_fn, fn)}"
        return judged
    batch, layout = batch_and_layout(x, target, batch_size)
    tols, budget_notes = RowTolerances(tolerance_for(dtype, rtol, atol)), list[str]()
    if exact is not None and dtype == "float32":
        tols, budget_notes = float32_tolerances(
            call.grads, params, flat, run, exact, (x, target), rtol, atol, fn
        )
    depth = layer_index(list(flat), [a.shape for a in flat.values()])
    rows: list[Row] = []
    arrays: dict = {}
    notes: list[str] = []
    if exact is not None:
        order = sorted(flat, key=lambda n: -depth[n])
        fwd, bwd, arrays, notes = _tap_rows(run, exact, tols, batch)
        params_rows, param_arrays = _param_rows(
            fn, flat, run, exact.grads, order, tols, batch, layout
        )
        arrays.update(param_arrays)
        if warm_run.grads is not None:
            _mark_repeats(
                params_rows, call, flat, run.grads or {}, exact.grads, (x_warm, target), tols
            )
        rows = fwd + bwd + params_rows
        notes += budget_notes + tols.annotate(rows)
        # No timing here: a report is the same on any machine.
        # a kink can only explain a gradient that differs: its probe runs only then
        kink_notes = exact.kink_notes if any(r.diverged for r in rows) else []
        notes[:0] = [
            f"reference: exact gradients by autodiff (loss {exact.loss:.6g})",
            *exact.cut_notes,
            *kink_notes,
        ]
    return {
        "rows": rows,
        "depth": depth,
        "arrays": arrays,
        "tolerance": tols.default,
        "notes": notes,
        "by_name": True,
        "meta": {**meta, "batch_size": batch, "examples_as": layout or "rows",
                 "reference": autodiff_reference(call.loss_fn, fn), "reference_used": AUTODIFF},
    }  # fmt: skip


def _mark_repeats(
    rows: list[Row],
    call: LossCall,
    flat: dict[str, np.ndarray],
    ours: dict[str, np.ndarray],
    exact: dict[str, np.ndarray],
    warm: tuple[np.ndarray, np.ndarray],
    tols: RowTolerances,
) -> None:
    """Relabel diverging gradients (``ours``) that equal the exact ones at the warm-up input
    ``warm`` (x, target) (``stale``) or their sum with the current ``exact`` ones
    (``accumulated``); the warm-up gradients are computed once, when a row needs them."""
    diverging = [
        r for r in rows
        if r.diverged and r.address.name in ours
        and ours[r.address.name].shape == flat[r.address.name].shape
    ]  # fmt: skip
    if not diverging:
        return
    at_warm = call.exact(flat, *warm).grads
    for row in diverging:
        name = row.address.name
        assert name is not None  # every row here is a parameter's gradient
        tol = tols.of((row.layer, row.quantity))
        mark_repeat(row, ours[name], exact[name], at_warm[name], tol)


def check_autodiff_options(
    reference: str, *, tap_map: Any, param_map: Any, **reference_only: Any
) -> None:
    """One line for a reference string other than "autodiff", and for what the autodiff
    reference cannot take: options that pair with a torch model."""
    if reference != AUTODIFF:
        raise InputError(
            f"reference={reference!r} is not known: pass a torch nn.Module, {AUTODIFF!r} (the "
            "exact gradient of your loss_fn) or None (central differences of loss_fn)"
        )
    if tap_map is not None:
        raise InputError(
            "reference='autodiff' pairs taps by name, it takes no tap_map: tap the forward "
            "value as gp.tap('z1', z1) and its gradient as gp.tap('z1', dz1, grad=True)"
        )
    for option, given in {"param_map": param_map, **reference_only}.items():
        if given is not None:
            raise InputError(f"{option} needs a reference model; reference='autodiff' uses loss_fn")
