"""``compare_function``: backprop written as one function, checked parameter by parameter.

The user's ``grads(x, target)`` returns gradients structured like ``params``; the reference is
a torch model holding the same numbers (or, with ``reference=None``, central differences of
the user's own ``loss_fn``). Taps (``gp.tap``) mapped to reference modules turn "some gradient
is wrong" into "the bug is between these two lines".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from gradparity import __version__
from gradparity.comparison.diff import compare_tensor, failed_row
from gradparity.comparison.function_taps import aligned_tap, tap_rows
from gradparity.core.errors import InputError
from gradparity.core.metrics import tensor_diff
from gradparity.core.options import Maps, ReferenceInputs, Tolerances, with_options
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance, tolerance_for
from gradparity.core.validate import check_options, quiet_arithmetic
from gradparity.evidence.function_numeric import NumericLoss, numeric_report_fields, referee_rows
from gradparity.locate.function import explain_penalty, function_report_fields, mark_repeat
from gradparity.pairing.function_align import depth_of, resolve_tap_map
from gradparity.pairing.params import ParamPair, sync_parameters, to_ours
from gradparity.pairing.square import pair_function_params
from gradparity.pairing.structure import flatten, rebuild
from gradparity.pipelines.function_inputs import (
    as_array,
    check_batch_size,
    check_callables,
    check_grad_shapes,
    check_numeric_options,
    checked_reference_target,
    default_reference_loss,
    function_name,
    function_options,
    is_columns,
    mode_hints,
    warm_input_for,
    warm_reference_input,
)
from gradparity.reference.layout import IDENTITY
from gradparity.report.report import Report
from gradparity.sides.function_run import (
    ReferenceRun,
    UserRun,
    call_loss_fn,
    run_reference,
    run_user,
)
from gradparity.sides.preflight import check_filled
from gradparity.sides.run_torch import TORCH_DTYPES
from gradparity.sides.setup import reference_copy
from gradparity.sides.taps import follow_map


@quiet_arithmetic
@with_options
def compare_function(
    grads: Callable,
    params: Any,
    reference: nn.Module | None,
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
    loss_fn(params, x, target) -> float: ours' loss; with a reference it is compared as the
    ``loss`` row, and with ``reference=None`` it is the referee: every gradient is checked by
    float64 central differences of it. batch_size: for the batch-reduction diagnosis
    (default: the reference's batch, or what x and target show).
    ``grads`` is called twice (a warm-up on a perturbed x first, so cached values show up as
    ``stale``); the live parameters are never left changed.
    ``tolerances`` (rtol, atol), ``reference_inputs`` (reference_x, reference_target,
    reference_loss) and ``maps`` (param_map, tap_map): option objects, merged into those
    keyword arguments (``with_options``).
    """
    dtype, rtol, atol, seed = check_options(dtype, rtol, atol, seed)
    param_map, tap_map, name, batch_size = function_options(param_map, tap_map, name, batch_size)
    check_callables(grads, loss_fn)
    if reference is None:
        check_numeric_options(
            loss_fn=loss_fn, dtype=dtype, tap_map=tap_map, param_map=param_map,
            reference_loss=reference_loss, reference_x=reference_x,
            reference_target=reference_target,
        )  # fmt: skip
    flat = flatten(params)  # finite real arrays, else refused
    fn = function_name(grads)
    x_arr, t_arr = as_array("x", x, dtype), as_array("target", target, dtype)
    check_batch_size(batch_size, x_arr)
    setup = None
    if reference is not None:  # its checks (a dry run on x among them) come before any call
        setup = _Setup(
            fn=fn, params=params, flat=flat, reference=reference, x=x_arr, target=t_arr,
            reference_x=reference_x, reference_target=reference_target,
            reference_loss=reference_loss, param_map=param_map, tap_map=tap_map, dtype=dtype,
            loss_fn=loss_fn, tol=tolerance_for(dtype, rtol, atol),
        )  # fmt: skip
    rng = np.random.default_rng(seed)
    x_warm = warm_input_for(x_arr, rng)
    warm_run = run_user(grads, params, flat, x_warm, t_arr)
    run = run_user(grads, params, flat, x_arr, t_arr)
    if run.grads is not None:
        check_grad_shapes(run.grads, flat)
    if setup is None:
        assert loss_fn is not None  # check_numeric_options refuses reference=None without it
        return Report(**numeric_report_fields(
            fn, params, flat, run, warm_run, loss_fn, x_arr, t_arr, x_warm=x_warm, rng=rng,
            meta={"model": name or fn, "seed": seed, **_versions()}, batch_size=batch_size,
            rtol=rtol, atol=atol,
        ))  # fmt: skip
    return setup.report(run, warm_run, x_warm, batch_size, seed, name or fn)


def _versions() -> dict:
    return {"gradparity": __version__, "numpy": np.__version__, "torch": torch.__version__}


class _Setup:
    """Everything fixed before the comparison: the reference copy, its inputs and pairings."""

    def __init__(
        self,
        *,
        fn: str,
        params: Any,
        flat: dict[str, np.ndarray],
        reference: nn.Module,
        x: np.ndarray,
        target: np.ndarray,
        reference_x: Any,
        reference_target: Any,
        reference_loss: Callable | None,
        param_map: dict[str, str] | None,
        tap_map: dict[str, str] | None,
        dtype: str,
        loss_fn: Callable | None,
        tol: Tolerance,
    ) -> None:
        self.fn, self.params, self.flat, self.dtype, self.tol = fn, params, flat, dtype, tol
        self.x, self.target, self.loss_fn = x, target, loss_fn
        self.tdtype = TORCH_DTYPES[dtype]
        self.model, self.empty = reference_copy(reference, dtype)
        # The mode the user left each module in (a new module trains: batch-norm uses the
        # batch's statistics, as hand-written training code does).
        for copied, given in zip(self.model.modules(), reference.modules()):
            copied.training = given.training
        self.rx = x if reference_x is None else as_array("reference_x", reference_x, dtype)
        self.rt = (
            target if reference_target is None
            else as_array("reference_target", reference_target, dtype)
        )  # fmt: skip
        self.columns = is_columns(x, self.rx)
        self.default_loss = reference_loss is None
        self.reference_loss = reference_loss or default_reference_loss
        if not callable(self.reference_loss):
            raise InputError("reference_loss must be callable(output, target) -> scalar tensor")
        self.rt = checked_reference_target(
            self.model, self.rx, self.rt, dtype, self.reference_loss,
            given=(reference_x, reference_target), default_loss=self.default_loss,
        )  # fmt: skip
        self.tap_specs = resolve_tap_map(tap_map, self.model)
        self.param_map = param_map
        self.arrays: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self.ours_loss = None if loss_fn is None else self._ours_loss()

    def _ours_loss(self) -> float:
        assert self.loss_fn is not None  # called only when a loss_fn was given
        copies = {n: a.copy() for n, a in self.flat.items()}
        value, precision = call_loss_fn(
            self.loss_fn, rebuild(self.params, copies), self.x.copy(), self.target.copy()
        )
        if self.dtype == "float64" and precision != "float64":
            raise InputError(
                f"loss_fn returned a {precision} value but the comparison runs in float64; "
                "compute and return the loss in float64, or pass dtype='float32'"
            )
        return value

    def sync(self, pairs: list[ParamPair]) -> None:
        """Copy ours' parameters into the reference copy, in each pair's layout."""
        sync_parameters(self.flat, self.model, pairs)

    def run_reference(self, x: np.ndarray, specs: dict | None = None) -> ReferenceRun:
        specs = self.tap_specs if specs is None else specs
        return run_reference(self.model, x, self.rt, self.reference_loss, specs, self.tdtype)

    def agree(self, pairs: list[ParamPair], run: UserRun) -> bool | None:
        """Do the forward taps (or, without any, the loss) agree under ``pairs``? The taps
        come first: a loss_fn may hold a term the reference's loss lacks (a penalty)."""
        forward = {t: s for t, s in self.tap_specs.items() if s[0] == "output" and t in run.taps}
        if self.ours_loss is None and not forward:
            return None
        self.sync(pairs)
        ref = self.run_reference(self.rx, forward)
        if not forward:
            assert self.ours_loss is not None  # checked above: no forward tap means a loss_fn
            return bool(np.isclose(self.ours_loss, ref.loss, rtol=1e-6, atol=1e-12))
        aligned = {t: aligned_tap(run.taps[t], ref.taps[t], self.columns) for t in forward}
        return all(
            a is not None and tensor_diff(run.taps[t], a, self.tol).ok for t, a in aligned.items()
        )

    def report(
        self,
        run: UserRun,
        warm_run: UserRun,
        x_warm: np.ndarray,
        batch_size: int | None,
        seed: int,
        model_name: str,
    ) -> Report:
        run.taps = follow_map(run.taps, list(self.tap_specs))
        run.bad_taps = follow_map(run.bad_taps, list(self.tap_specs))
        warm_run.taps = follow_map(warm_run.taps, list(self.tap_specs))
        missing = [t for t in self.tap_specs if t not in run.taps and t not in run.bad_taps]
        notes: list[str] = []
        if missing and all(t in warm_run.taps for t in missing):
            notes.append(
                f"taps {missing} were recorded on the first (warm-up) call of {self.fn} but not "
                "on the compared one: it returned without running that code (results cached "
                "from an earlier call?)"
            )
        elif missing and run.error is None:
            raise InputError(
                f"tap_map names taps {missing} that grads never recorded; it recorded "
                f"{list(run.taps) or 'none (call gp.tap(name, array) inside it)'}"
            )
        pairs = pair_function_params(
            self.flat, self.model, self.param_map, self.columns, lambda p: self.agree(p, run)
        )
        self.sync(pairs)
        check_filled(self.empty, {p.torch_name for p in pairs})
        ref = self.run_reference(self.rx)
        notes += [
            f"module {m!r} ran {ref.calls[m]} times in the reference's forward; tap {t} is "
            f"compared with its first call (name another as '{m}@k', k from 0)"
            for t, (_, m, c) in self.tap_specs.items()
            if c is None and ref.calls.get(m, 0) > 1
        ]
        batch = batch_size or (int(self.rx.shape[0]) if self.rx.ndim > 1 else 1)
        depth = depth_of(self.model, pairs)
        order = {m: i for i, (m, _) in enumerate(self.model.named_modules())}
        fwd, bwd = tap_rows(
            self.tap_specs, run, ref, self.tol, columns=self.columns, batch=batch, order=order,
            arrays=self.arrays,
        )  # fmt: skip
        loss_rows = [] if self.ours_loss is None else [self._loss_row(ref)]
        param_rows = self._param_rows(run, ref, pairs, depth, batch)
        notes += self._mark_repeats(fwd + bwd + param_rows, run, warm_run, x_warm, pairs, ref)
        if (loss_fn := self.loss_fn) is not None:
            referee_rows(
                param_rows,
                run.grads or {},
                lambda: NumericLoss(loss_fn, self.params, self.flat, self.x, self.target),
                np.random.default_rng(seed + 1),
            )
        if any(r.diverged for r in fwd + bwd + loss_rows + param_rows):
            notes += mode_hints(self.model)
            if self.default_loss:
                notes.append(
                    "reference_loss was not given, so the reference's loss is softmax "
                    "cross-entropy averaged over the batch; pass reference_loss=callable(output,"
                    " target) if your cost is another"
                )
        notes += [
            f"layout of {p.key} {p.how}; "
            + (
                "check reference_x and reference_target (x.T when your examples are columns) "
                "and that the reference is the same network"
                if "neither" in p.how
                else "pass loss_fn or map a forward tap to decide it"
            )
            for p in pairs
            if p.how.startswith("assumed")
        ]
        return Report(
            **function_report_fields(
                self.fn,
                fwd + loss_rows,
                bwd,
                param_rows,
                depth,
                run,
                set(self.tap_specs),
                self.arrays,
                notes,
                dtype=self.dtype,
                tolerance=self.tol.as_dict(),
                conversions=[p.describe() for p in pairs]
                + [f"tap {r.layer}: {r.conversion}" for r in fwd + bwd],
                meta={
                    "model": model_name,
                    "seed": seed,
                    "batch_size": batch,
                    "examples_as": "columns" if self.columns else "rows",
                    "reference": type(self.model).__name__,
                    "reference_mode": "train" if self.model.training else "eval",
                    "reference_loss": "softmax cross-entropy, batch mean (default)"
                    if self.default_loss
                    else getattr(
                        self.reference_loss, "__name__", type(self.reference_loss).__name__
                    ),
                    **_versions(),
                },
            )
        )

    def _loss_row(self, ref: ReferenceRun) -> Row:
        row = compare_tensor(
            "chain", "loss", "loss", "output", np.array(self.ours_loss), np.array(ref.loss),
            self.tol,
        )  # fmt: skip
        if row.diverged:
            row.fix = (
                "make loss_fn compute the reference's loss (same cost, same batch reduction), "
                "or pass reference_loss"
            )
        return row

    def _param_rows(
        self, run: UserRun, ref: ReferenceRun, pairs: list[ParamPair], depth: dict, batch: int
    ) -> list[Row]:
        """One row per parameter, deepest (closest to the output) first."""
        if run.grads is None:
            return []
        rows = []
        for p in sorted(pairs, key=lambda p: -depth[p.key]):
            if p.key in run.bad_grads:  # complex: a finding, never compared as real
                rows.append(failed_row("chain", self.fn, "parameter", run.bad_grads[p.key]))
                continue
            expected = to_ours(ref.grads[p.torch_name], p)
            layout = "columns" if self.columns and p.conversion == IDENTITY else p.conversion
            row = compare_tensor(
                "chain", self.fn, "parameter", f"grad:{p.key}", run.grads[p.key], expected,
                self.tol, batch_size=batch, param_shape=p.ours_shape, conversion=layout,
            )  # fmt: skip
            explain_penalty(row, run.grads[p.key], expected, self.flat[p.key], self.tol)
            row.conversion = p.conversion
            row.reference_parameter = p.torch_name
            self.arrays[(self.fn, row.quantity)] = {"ours": run.grads[p.key], "reference": expected}
            rows.append(row)
        return rows

    def _mark_repeats(
        self,
        rows: list[Row],
        run: UserRun,
        warm_run: UserRun,
        x_warm: np.ndarray,
        pairs: list[ParamPair],
        ref: ReferenceRun,
    ) -> list[str]:
        """``stale`` (equals the right value at the warm-up input) and ``accumulated`` (equals
        the sum of both calls' gradients) for diverging parameter and tap rows; notes."""
        diverging = [
            r for r in rows
            if r.diverged and r.diagnosis != "raised" and r.shape_ours == r.shape_ref
        ]  # fmt: skip
        rx_warm = warm_reference_input(self.x, self.rx, x_warm)
        if not diverging or rx_warm is None or warm_run.grads is None:
            return []
        try:
            at_warm = self.run_reference(rx_warm)
        except InputError as exc:
            return [f"no check for cached values: the reference fails on the warm-up input ({exc})"]
        by_key = {p.key: p for p in pairs}
        for row in diverging:
            if row.type == "tap":
                ours = run.taps[row.layer]
                now = self.arrays[(row.layer, row.quantity)]["reference"]
                old = aligned_tap(ours, at_warm.taps[row.layer], self.columns)
                if old is not None:
                    mark_repeat(row, ours, now, old, self.tol)
                continue
            assert row.address.name is not None  # a row that is not a tap is a parameter's
            p = by_key[row.address.name]
            assert run.grads is not None  # a parameter row comes from a run that gave gradients
            old = to_ours(at_warm.grads[p.torch_name], p)
            now = to_ours(ref.grads[p.torch_name], p)
            mark_repeat(row, run.grads[p.key], now, old, self.tol)
        return []
