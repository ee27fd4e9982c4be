"""``compare_function``: backprop written as one function, checked parameter by parameter.

The user's ``grads(x, target)`` returns gradients structured like ``params`` (or ``(loss,
grads)``); the reference is a torch model holding the same numbers, ``"autodiff"`` (the exact
gradient of the user's own loss, ``evidence.function_autodiff``) or ``None`` (central
differences of the user's own ``loss_fn``). Taps (``gp.tap``) mapped to reference modules (or,
with autodiff, paired by name) turn "some gradient is wrong" into "the bug is between these
two lines".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from gradparity.core.errors import InputError
from gradparity.core.losses import function_loss_meta
from gradparity.core.options import Maps, ReferenceInputs, Tolerances, with_options
from gradparity.core.plan import Captures, Context, Side
from gradparity.core.tolerance import tolerance_for
from gradparity.core.validate import check_flag, check_options, quiet_arithmetic
from gradparity.engine import Evidence, Plan, run
from gradparity.engine.report import COMMON_META
from gradparity.evidence.function_autodiff import (
    LossCall,
    autodiff_reference,
    autodiff_rows,
    check_autodiff_options,
)
from gradparity.evidence.function_evidence import (
    LossFnReferee,
    RepeatedCalls,
    loss_advice,
    penalty_term,
    reference_notes,
)
from gradparity.evidence.function_numeric import NumericLoss, numeric_rows
from gradparity.locate.function import FunctionLocator
from gradparity.locate.minor import separate_minor, tap_without_effect
from gradparity.pairing.function_entries import FunctionPairing
from gradparity.pairing.structure import flatten
from gradparity.pipelines.layers_autodiff import show_budgets
from gradparity.report.report import Report
from gradparity.sides.device import choose_device, reference_device
from gradparity.sides.function_inputs import (
    as_array,
    check_batch_size,
    check_callables,
    check_grad_shapes,
    check_numeric_options,
    function_name,
    function_options,
    warm_input_for,
)
from gradparity.sides.function_reference import FunctionReference
from gradparity.sides.function_run import UserRun
from gradparity.sides.modes import modes_note, reference_modes
from gradparity.sides.numpy_runner import FunctionRunner
from gradparity.sides.reference_twin import judge_by_twin


@quiet_arithmetic
@with_options
def compare_function(
    grads: Callable,
    params: Any,
    reference: nn.Module | str | None,
    x: Any,
    target: Any,
    reference_loss: Callable | None = None,
    reference_x: Any = None,
    reference_target: Any = None,
    param_map: dict[str, str] | None = None,
    tap_map: dict[str, str] | None = None,
    dtype: str = "float64",
    *,
    loss_fn: Callable | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    name: str | None = None,
    tolerances: Tolerances | None = None,
    reference_inputs: ReferenceInputs | None = None,
    maps: Maps | None = None,
    strict: bool = False,
    device: str = "cpu",
    keep_tf32: bool = False,
) -> Report:
    """Compare every parameter gradient that ``grads(x, target)`` returns with a reference.

    params: the live arrays, a dict {name: array}, a list (names p0, p1, ...) or nested lists
    (``{"b": biases, "w": weights}`` gives b[0], w[1], ...); any layout (weights (out, in) or
    (in, out); biases (n,), (n, 1) or (1, n)). grads(x, target) returns gradients in the same
    structure. reference: a torch module whose parameters (in order, or by ``param_map``
    {name: torch parameter name}) hold the same numbers; its inputs are ``reference_x`` and
    ``reference_target`` (default x and target; e.g. x.T when ours holds examples as
    columns (features, N)), its loss ``reference_loss(output, target)`` (default softmax
    cross-entropy, batch mean). tap_map {tap name: "MODULE" | "grad:MODULE"} compares
    ``gp.tap`` values with that module's output or with dL/d(that output).
    reference="autodiff": no model; the exact gradient of ``loss_fn`` (or of the loss
    ``grads`` returns first, as ``net.loss(X, y) -> (loss, grads)`` does), run on tensors;
    taps pair by name (``gp.tap("z1", dz1, grad=True)`` is dL/d(tap "z1")); central
    differences when the code cannot run on tensors, with a note saying why. With
    ``dtype="float32"`` grads runs on the float32 arrays as given and once more on float64
    copies: each tensor's allowed error is that measured drift (``evidence.float32_budget``).
    loss_fn(params, x, target) -> float: ours' loss; with a reference it is compared as the
    ``loss`` row, and with ``reference=None`` it is the referee: every gradient is checked by
    float64 central differences of it. batch_size: for the batch-reduction diagnosis
    (default: the reference's batch, or what x and target show).
    ``grads`` is called twice (a warm-up on a perturbed x first, so cached values show up as
    ``stale``); the live parameters are never left changed.
    ``tolerances`` (rtol, atol), ``reference_inputs`` (reference_x, reference_target,
    reference_loss) and ``maps`` (param_map, tap_map): option objects, merged into those
    keyword arguments (``with_options``). ``strict``: minor differences (small against the
    tensor's scale, or a tap with no effect on the gradients) make ``ok`` False too.
    ``device`` ("cpu", "cuda" or "cuda:N") and ``keep_tf32``: where a torch reference runs and
    whether TF32 stays on there, as in ``compare``.
    """
    dtype, rtol, atol, seed = check_options(dtype, rtol, atol, seed)
    strict = check_flag(strict, "strict")
    choice = choose_device(device, check_flag(keep_tf32, "keep_tf32"))
    if choice.on_gpu and (reference is None or isinstance(reference, str)):
        raise InputError(
            f"device={choice.device!r} needs a torch reference module; {reference!r} runs on "
            "the CPU: leave device out"
        )
    param_map, tap_map, name, batch_size = function_options(param_map, tap_map, name, batch_size)
    check_callables(grads, loss_fn)
    if isinstance(reference, str):
        check_autodiff_options(
            reference, tap_map=tap_map, param_map=param_map,
            reference_loss=reference_loss, reference_x=reference_x,
            reference_target=reference_target,
        )  # fmt: skip
    elif reference is None:
        check_numeric_options(
            loss_fn=loss_fn, dtype=dtype, tap_map=tap_map, param_map=param_map,
            reference_loss=reference_loss, reference_x=reference_x,
            reference_target=reference_target,
        )  # fmt: skip
    flat = flatten(params)  # finite real arrays, else refused
    fn = function_name(grads)
    x_arr, t_arr = as_array("x", x, dtype), as_array("target", target, dtype)
    check_batch_size(batch_size, x_arr)
    tol = choice.tolerance(tolerance_for(dtype, rtol, atol), rtol is not None)
    with reference_device(choice):
        side = None
        if reference is not None and not isinstance(reference, str):  # checked before any call
            side = FunctionReference(
                fn=fn, params=params, flat=flat, reference=reference, x=x_arr, target=t_arr,
                reference_x=reference_x, reference_target=reference_target,
                reference_loss=reference_loss, param_map=param_map, tap_map=tap_map, dtype=dtype,
                loss_fn=loss_fn, tol=tol, device=choice.device,
            )  # fmt: skip
        rng = np.random.default_rng(seed)
        x_warm = warm_input_for(x_arr, rng)
        runner = FunctionRunner(grads, params, flat)

        def ours(captures: Captures) -> None:
            captures["warm_run"] = runner.run(x_warm, t_arr)
            captures["run"] = run = runner.run(x_arr, t_arr)
            if run.grads is not None:
                check_grad_shapes(run.grads, flat)

        if side is None:
            captures: Captures = {}
            ours(captures)
            meta = {"model": name or fn, "seed": seed}
            if reference is None:
                assert (
                    loss_fn is not None
                )  # check_numeric_options refuses reference=None without it
                judged = numeric_rows(
                    fn, params, flat, captures["run"], captures["warm_run"], loss_fn, x_arr, t_arr,
                    x_warm=x_warm, rng=rng, meta={**meta, **function_loss_meta(fn, loss_fn, None)},
                    batch_size=batch_size, rtol=rtol, atol=atol,
                )  # fmt: skip
            else:
                referee = autodiff_reference(loss_fn, fn)
                judged = autodiff_rows(
                    fn, LossCall(grads, loss_fn, params), params, flat, captures["run"],
                    captures["warm_run"], x_arr, t_arr, x_warm=x_warm, rng=rng,
                    meta={**meta, **function_loss_meta(fn, loss_fn, None, judged_by=referee)},
                    batch_size=batch_size, rtol=rtol, atol=atol, dtype=dtype,
                )  # fmt: skip
            return _judged_report(fn, captures["run"], judged, seed, grads, strict)
        batch = batch_size or (int(side.rx.shape[0]) if side.rx.ndim > 1 else 1)
        evidence: list[Evidence] = [penalty_term, loss_advice, RepeatedCalls(x_warm)]
        if loss_fn is not None:
            evidence.append(
                LossFnReferee(
                    lambda: NumericLoss(loss_fn, params, flat, x_arr, t_arr),
                    np.random.default_rng(seed + 1),
                )
            )
        pairing = FunctionPairing(fn, side, batch)
        return run(
            Plan(
                name=name or fn,
                dtype=dtype,
                tolerance=side.tol,
                seed=seed,
                batch_size=batch,
                rng=rng,
                sides=[
                    ours,
                    side,
                    *([float32_judge(pairing, rtol, atol)] if dtype == "float32" else []),
                ],
                pair=lambda captures: (
                    captures["entries"] if "entries" in captures else pairing(captures)
                ),
                evidence=[*evidence, reference_notes, show_budgets],
                locators=[
                    FunctionLocator(fn, set(side.tap_specs), has_reference=True, code=grads),
                    tap_without_effect,
                    separate_minor,
                ],
                fields={"strict": strict},
                meta={
                    "examples_as": "columns" if side.columns else "rows",
                    "reference": type(side.model).__name__,
                    "reference_mode": "train" if side.model.training else "eval",
                    "reference_modes": reference_modes(side.model),
                    **function_loss_meta(fn, loss_fn, _reference_loss_name(side)),
                    **choice.meta(),
                },
                notes=modes_note(reference_modes(side.model)) + choice.notes(dtype),
            )
        )


# How the budget note of a float32 comparison against a torch reference says it was measured.
FUNCTION_REFERENCE_ROUNDING = (
    "float32 judged by the reference's own rounding: the reference was run again in float64 "
    "on the same inputs; each tensor may differ from the reference by"
)


def float32_judge(pairing: FunctionPairing, rtol: float | None, atol: float | None) -> Side:
    """The side that gives each tensor pair of a float32 comparison its measured budget:
    the reference's float32 value against its float64 twin's (``FunctionReference.
    float64_run``), paired as ``pairing`` pairs the float32 run; the entries, their
    tolerances and notes go to ``captures``."""

    def judge(captures: Captures) -> None:
        if "reference" not in captures:  # ours raised before the reference ran
            return
        entries = pairing(captures)
        tols, notes = judge_by_twin(
            entries,
            lambda ref64: pairing({**captures, "reference": ref64}),
            lambda: [pairing.side.float64_run()],
            rtol,
            atol,
            judged_by=FUNCTION_REFERENCE_ROUNDING,
        )
        captures.update(entries=entries, row_tolerances=tols)
        captures.setdefault("notes", []).extend(notes)

    return judge


def _reference_loss_name(side: FunctionReference) -> str:
    """The reference's loss as the report names it ("(default)" where gradparity chose it)."""
    if side.default_loss:
        return "softmax cross-entropy, batch mean (default)"
    loss = side.reference_loss
    return getattr(loss, "__name__", type(loss).__name__)


def _judged_report(
    fn: str,
    user_run: UserRun,
    judged: dict[str, Any],
    seed: int,
    code: Any = None,
    strict: bool = False,
) -> Report:
    """The report of rows judged by a referee of the user's own loss (``numeric_rows``,
    ``autodiff_rows``): a plan whose pairing step hands the engine those rows, located by the
    function locator (``judged["by_name"]``: taps paired by name)."""
    meta = judged["meta"]
    by_name = judged.get("by_name", False)

    def side(captures: Captures) -> None:
        captures["run"], captures["depth"] = user_run, judged["depth"]

    def values(ctx: Context) -> None:
        ctx.arrays.update(judged["arrays"])

    return run(
        Plan(
            name=meta["model"],
            dtype=judged["tolerance"].dtype,
            tolerance=judged["tolerance"],
            seed=seed,
            batch_size=meta["batch_size"],
            rng=np.random.default_rng(seed),
            sides=[side],
            pair=lambda captures: list(judged["rows"]),
            evidence=[values],
            locators=[
                # Autodiff pairs every tap by name; the taps it did not reach have a note.
                FunctionLocator(
                    fn,
                    set(user_run.taps) if by_name else set(),
                    has_reference=False,
                    code=code,
                    by_name=by_name,
                ),
                separate_minor,
            ],
            fields={"strict": strict},
            meta={k: v for k, v in meta.items() if k not in COMMON_META},
            notes=judged["notes"],
        )
    )
