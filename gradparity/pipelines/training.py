"""``compare_training``: ours and the reference through the same optimisation steps.

The harness owns the loop (zero_grad, forward, loss, backward, step) on both sides with
identical batches, numbered from 1; each step is one engine plan, and the report is built
through the engine from the kept rows and findings. Each step compares the loss, every
gradient, every parameter update (as a delta: value after minus before, so a wrong step size
is ``scaled`` and an ascent ``sign_flipped``) and the optimiser state. At the first step that
diverges the findings say why: gradients that were never zeroed (``accumulated``), a gradient
from an earlier batch (``stale``), a backprop bug (localised by ``compare`` on that step's
batch and weights), or an optimiser bug (the updates diverge while the gradients agree).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradparity.core.errors import InputError
from gradparity.core.finding import Finding
from gradparity.core.losses import loss_meta
from gradparity.core.options import (
    MAP_MEANINGS,
    Maps,
    ReferenceInputs,
    Tolerances,
    TrainingOptions,
    with_options,
)
from gradparity.core.plan import Captures
from gradparity.core.records import USER_ERRORS, real_array
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance, tolerance_for
from gradparity.core.validate import (
    check_count,
    check_flag,
    check_mapping,
    check_name,
    check_options,
    check_parameters,
    quiet_arithmetic,
)
from gradparity.engine import Entry, Plan, execute, numpy_side, run
from gradparity.evidence.training_repeats import StepRepeats, Tracker
from gradparity.locate.training import StepLocator, training_sources
from gradparity.pairing.align import (
    LayerPair,
    align_layers,
    layers_by_module,
    refuse_shared_parameters,
    synced_names,
)
from gradparity.pairing.layer_params import pair_layer_parameters
from gradparity.pairing.params import sync_parameters
from gradparity.pairing.training_entries import step_entries
from gradparity.pipelines.layers import compare
from gradparity.pipelines.layers_autodiff import show_budgets
from gradparity.pipelines.training_batches import BatchCheck, batch_pairs, check_validation
from gradparity.pipelines.training_history import history_row
from gradparity.report.report import TrainingReport
from gradparity.sides import device as devices
from gradparity.sides import run_torch
from gradparity.sides.adapt import layer_code, model_name, named_layers, params_of
from gradparity.sides.device import DeviceChoice, choose_device, reference_device
from gradparity.sides.dropout_masks import shared_dropout_masks, unpin_unfit
from gradparity.sides.modes import modes_note, reference_modes
from gradparity.sides.preflight import check_filled
from gradparity.sides.reference_twin import judge_by_twin
from gradparity.sides.run_torch import TORCH_DTYPES
from gradparity.sides.running_stats import kept_buffers, sync_running
from gradparity.sides.setup import resolve_losses
from gradparity.sides.training_received import DriftHistory, ReceivedProbe, earlier_steps
from gradparity.sides.training_setup import optimizers
from gradparity.sides.training_steps import (
    Shadow,
    StepResult,
    TrainingStepRunner,
    reference_step,
)


@quiet_arithmetic
@with_options
def compare_training(
    ours_model: Any,
    reference_model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    ours_loss: Any = None,
    reference_loss: Any = None,
    ours_optimizer: Any = None,
    reference_optimizer: Any = None,
    steps: int | None = None,
    layer_map: dict[str, str] | None = None,
    dtype: str = "float64",
    *,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    eval_every: int = 10,
    progress: Callable[[Iterable], Iterable] | None = None,
    name: str | None = None,
    tolerances: Tolerances | None = None,
    reference_inputs: ReferenceInputs | None = None,
    maps: Maps | None = None,
    training: TrainingOptions | None = None,
    strict: bool = False,
    param_map: dict[str, str] | None = None,
    device: str = "cpu",
    keep_tf32: bool = False,
) -> TrainingReport:
    """Train both sides on the same ``batches`` and report the first step where they part.

    batches: iterable of (x (N, features), target (N,) or like the output); ``steps`` caps it.
    Optimisers: instances bound to the given models (copied together with them) or factories
    (``f(ours_model)``, ``f(reference_params)``); default plain SGD, lr 0.1, on both sides.
    validation: (x, y) scored every ``eval_every`` steps into ``history``. Neither model nor
    optimiser passed in is modified. ``tolerances`` (rtol, atol), ``reference_inputs`` (its
    ``loss``), ``maps`` (its ``layer_map``) and ``training`` (optimisers, steps, validation,
    eval_every, progress): option objects, merged into those keyword arguments
    (``with_options``). ``strict``: minor differences make ``ok`` False too. ``param_map``
    {ours "<layer>.<param>": reference parameter}: as in ``compare``. With ``dtype="float32"``
    each tensor of each step is judged by the reference's own float32 rounding, measured by a
    float64 copy of the reference and its optimiser stepped alongside (``float32_budget``).
    ``device`` ("cpu", "cuda" or "cuda:N") and ``keep_tf32``: where the reference trains and
    whether TF32 stays on there, as in ``compare``.
    """
    dtype, rtol, atol, seed = check_options(dtype, rtol, atol, seed)
    strict = check_flag(strict, "strict")
    layer_map = check_mapping(layer_map, "layer_map", "ours layer name: reference module name")
    param_map = check_mapping(param_map, "param_map", MAP_MEANINGS["param_map"])
    name = check_name(name)
    steps = None if steps is None else check_count(steps, "steps")
    eval_every = check_count(eval_every, "eval_every")
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be callable(iterable) -> iterable, got {progress!r}")
    choice = choose_device(device, check_flag(keep_tf32, "keep_tf32"))
    with reference_device(choice):
        return _train(
            ours_model, reference_model, batches, ours_loss, reference_loss, ours_optimizer,
            reference_optimizer, steps, layer_map, dtype, seed=seed, rtol=rtol, atol=atol,
            validation=validation, eval_every=eval_every, progress=progress, name=name,
            strict=strict, param_map=param_map, choice=choice,
        )  # fmt: skip


def _train(
    ours_model: Any,
    reference_model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    ours_loss: Any,
    reference_loss: Any,
    ours_optimizer: Any,
    reference_optimizer: Any,
    steps: int | None,
    layer_map: dict[str, str] | None,
    dtype: str,
    *,
    seed: int,
    rtol: float | None,
    atol: float | None,
    validation: tuple[np.ndarray, np.ndarray] | None,
    eval_every: int,
    progress: Callable[[Iterable], Iterable] | None,
    name: str | None,
    strict: bool,
    param_map: dict[str, str] | None,
    choice: DeviceChoice,
) -> TrainingReport:
    """``compare_training`` once its options are checked, inside ``reference_device``."""
    tol = choice.tolerance(tolerance_for(dtype, rtol, atol), rtol is not None)
    tdtype = TORCH_DTYPES[dtype]
    if validation is not None:
        validation = check_validation(validation, dtype)
    given = (ours_loss is not None, reference_loss is not None)
    ours_loss, reference_loss = resolve_losses(ours_loss, reference_loss)
    if not isinstance(reference_model, nn.Module):
        raise InputError(
            f"reference model must be a torch.nn.Module, got {type(reference_model).__name__}"
        )
    ours_model, ours_opt, ref_model, ref_opt, empty = optimizers(
        ours_model, reference_model, ours_optimizer, reference_optimizer, tdtype
    )
    modes = reference_modes(ref_model)  # each module runs in the mode it was given
    layers = named_layers(ours_model)
    check_parameters((lname, params_of(layer, lname)) for lname, layer in layers)
    pairs = align_layers(layers, ref_model, layer_map)
    refuse_shared_parameters(pairs)
    pairing_notes = pair_layer_parameters(pairs, np.random.default_rng(seed), param_map)
    for pair in pairs:
        sync_parameters(params_of(pair.layer), pair.torch_module, pair.params)
        sync_running(pair.layer, pair.torch_module)
    check_filled(empty, synced_names(pairs))
    if choice.on_gpu:  # in place, so an optimiser given as an instance stays bound to it
        ref_model.to(devices.torch_device(choice.device))
    with shared_dropout_masks(pairs, ref_model) as dropout:
        shadow = (
            Shadow.make(ref_model, ref_opt, pairs, reference_loss) if dtype == "float32" else None
        )

        loop = _Training(
            layers=layers, runner=TrainingStepRunner(layers, ours_loss, ours_opt),
            ref_model=ref_model, ref_opt=ref_opt, pairs=pairs, tol=tol, shadow=shadow,
            rtol=rtol, atol=atol,
            localise=lambda x, target: lambda ours: compare(
                _rewound(layers, ours.before), ref_model, x, target, ours_loss, reference_loss,
                layer_map, dtype, seed=seed, name="localised", param_map=param_map,
                device=choice.device, keep_tf32=choice.keep_tf32,
            ).root_causes,
            plan=lambda **step: Plan(
                name=name or model_name(ours_model), dtype=dtype, tolerance=tol, seed=seed,
                rng=np.random.default_rng(seed), **step,
            ),
            reference_loss=reference_loss,
        )  # fmt: skip
        history: list[dict] = []
        kept: list[Row] = []
        findings: list[Finding] = []
        first_divergent, last_rows, batch = None, [], None
        step_notes: dict[int, list[str]] = {}  # each step's own notes (float32 budgets)
        iterator = batch_pairs(batches, steps)
        batch_check = BatchCheck(
            ref_model, ours_loss, reference_loss, dtype, layers_by_module(pairs)
        )
        if validation is not None:
            batch_check.validation(*validation)
        for step, (x, target) in enumerate(progress(iterator) if progress else iterator, start=1):
            x, target = batch_check(step, x, target)
            # Fresh masks each step, shared by both sides (and the float32 shadow) in it.
            dropout.draw(ref_model, run_torch.as_tensor(x, tdtype), seed + step)
            batch = batch or x.shape[0]
            ctx = execute(loop.step_plan(step, x, target, first=first_divergent is None))
            ours, rows = ctx.captures["ours"], ctx.rows
            findings += ctx.root_causes
            step_notes[step] = ctx.notes
            if ours.error is not None:
                first_divergent = first_divergent or step
                break
            history.append(history_row(step, ours, ctx.captures["reference"], rows))
            if validation is not None and (step % eval_every == 0 or step == 1):
                history[-1].update(_accuracy(layers, ref_model, validation, dtype, tdtype))
            if not np.isfinite(ours.loss):
                first_divergent = first_divergent or step
                kept += rows
                last_rows = rows
                break
            if first_divergent is None and any(r.diverged for r in rows):
                first_divergent = step
                kept += rows
            elif step == 1:
                kept += rows
            loop.tracker.add(ctx.captures["reference"])
            last_rows = rows
        if not history and not findings:
            raise InputError("the batches gave no (x, target) pair: check the data set")
        if last_rows and last_rows[0].step not in {r.step for r in kept}:
            kept += last_rows
        if validation is not None and history and "val_acc_ours" not in history[-1]:
            history[-1].update(_accuracy(layers, ref_model, validation, dtype, tdtype))
        report = run(
            loop.plan(
                batch_size=batch, sides=[], pair=lambda captures: list(kept),
                evidence=[lambda ctx: ctx.warnings.extend(dropout.warnings())],
                locators=[
                    lambda ctx: ctx.root_causes.extend(findings),
                    training_sources({**dict(layers), "loss": ours_loss}, ours_opt, layer_code),
                ],
                meta={
                    **loss_meta(ours_loss, reference_loss, *given), "steps": len(history),
                    "ours_optimizer": _describe(ours_opt),
                    "reference_optimizer": type(ref_opt).__name__, "reference_modes": modes,
                    **choice.meta(),
                },
                notes=pairing_notes + modes_note(modes) + dropout.notes() + choice.notes(dtype)
                + [f"step {k}: {note}" for k in sorted({r.step for r in kept if r.step})
                   for note in step_notes.get(k, [])],
                fields={
                    "conversions": [f"{p.name}: {q.describe()}" for p in pairs for q in p.params],
                    "history": pd.DataFrame(history), "first_divergent_step": first_divergent,
                    "strict": strict,
                },
                report_type=TrainingReport,
            )
        )  # fmt: skip
        assert isinstance(report, TrainingReport)  # the plan's report_type
        return report


@dataclass
class _Training:
    """What every step's plan shares: both sides' models and optimisers, the pairing, the
    tolerance (in float32 each tensor's own, measured per step by the float64 shadow), the
    earlier steps' gradients, and how a divergent step is localised."""

    layers: list[tuple[str, Any]]
    runner: TrainingStepRunner
    ref_model: nn.Module
    ref_opt: Any
    pairs: list[LayerPair]
    tol: Tolerance
    shadow: Shadow | None
    rtol: float | None
    atol: float | None
    localise: Callable[[np.ndarray, np.ndarray], Callable[[StepResult], list[Finding]]]
    plan: Callable[..., Plan]
    reference_loss: Any
    tracker: Tracker = field(default_factory=Tracker)
    received: ReceivedProbe | None = None  # made from the shadow at its first step
    drifts: DriftHistory = field(default_factory=DriftHistory)

    def probe(self, shadow: Shadow) -> ReceivedProbe:
        """The float64 copy that measures what each step received from earlier ones."""
        self.received = self.received or ReceivedProbe.make(shadow)
        return self.received

    def step_plan(self, step: int, x: np.ndarray, target: np.ndarray, first: bool) -> Plan:
        """The plan of one step on (x, target); ``first``: no earlier step diverged."""
        tdtype = TORCH_DTYPES[self.tol.dtype]

        def reference(captures: Captures) -> None:
            if captures["ours"].error is not None:  # the step stops where ours raised
                return
            ref = reference_step(
                self.ref_model, self.reference_loss, self.ref_opt, self.pairs, x, target, tdtype
            )
            captures["reference"] = ref

        def pair(captures: Captures) -> list[Entry]:
            if "entries" in captures:  # paired already, judged by the float64 shadow
                return captures["entries"]
            if "reference" not in captures:  # ours raised: nothing to compare
                return []
            return step_entries(
                step, captures["ours"], captures["reference"], self.pairs, x.shape[0]
            )

        def judge_float32(captures: Captures) -> None:
            """Each tensor pair judged by the reference's own float32 rounding: its value
            against the float64 shadow's, stepped on the same batch."""
            shadow = self.shadow
            if shadow is None or "reference" not in captures:
                return
            entries = pair(captures)
            tols, notes = judge_by_twin(
                entries,
                lambda ref64: step_entries(step, captures["ours"], ref64, self.pairs, x.shape[0]),
                lambda: [shadow.step(x, target)],
                self.rtol,
                self.atol,
                judged_by=TRAINING_ROUNDING,
                operands=captures["reference"].floor_operands(),
            )
            received = self.probe(shadow).received(
                captures["ours"], captures["reference"], x, target
            )
            tols = earlier_steps(
                entries,
                self.drifts.widen(tols, self.rtol, self.atol),
                received,
                self.rtol,
                self.atol,
            )
            captures.update(entries=entries, row_tolerances=tols)
            captures.setdefault("notes", []).extend(notes)

        return self.plan(
            batch_size=x.shape[0],
            sides=[numpy_side(self.runner, x, target, "ours"), reference, judge_float32],
            pair=pair,
            evidence=[StepRepeats(self.tracker, step, active=first), show_budgets],
            locators=[StepLocator(step, first, self.localise(x, target))],
        )


# How the budget note of a float32 training comparison says the drift was measured.
TRAINING_ROUNDING = (
    "float32 judged by the reference's own rounding: a float64 copy of the reference and its "
    "optimiser was stepped alongside it on the same batches from the same start, so its drift "
    "includes what earlier steps' rounding carried into each step; each tensor may differ "
    "from the reference by"
)


def _describe(optimizer: Any) -> str:
    """The optimiser's own repr when it has one, else its class name (no memory address, so
    report.json stays deterministic)."""
    if type(optimizer).__repr__ is object.__repr__:
        return type(optimizer).__name__
    return repr(optimizer)


def _rewound(layers: list[tuple[str, Any]], before: dict) -> list[tuple[str, Any]]:
    """Copies of the layers with the parameters they had before this step's update. Until the
    first divergent step both sides held equal parameters, so ``compare`` (which copies ours'
    parameters into the reference) sees exactly the step that diverged."""
    rewound = copy.deepcopy(layers)
    for name, layer in rewound:
        for key, value in params_of(layer).items():
            value[...] = before[(name, key)]
    return rewound


def _accuracy(layers, ref_model: nn.Module, validation, dtype: str, tdtype: torch.dtype) -> dict:
    """Validation accuracy of both sides; NaN for ours when its forward cannot score x (it
    raises, or gives no (N, classes) array): the training rows say what is wrong with it."""
    x, y = validation
    try:
        h, scoring = x, copy.deepcopy(layers)
        unpin_unfit(scoring, len(x))  # a mask pinned for the training batch fits no other
        for _, layer in scoring:
            h = real_array(layer.forward(h), "forward's output", "output")
        ours = float(np.mean(h.argmax(axis=1) == y)) if h.shape[:1] == y.shape else np.nan
    except USER_ERRORS:
        ours = np.nan
    with torch.no_grad(), kept_buffers(ref_model):  # scoring must not move running statistics
        ref_out = run_torch.to_numpy(ref_model(run_torch.as_tensor(x, tdtype)))
    return {"val_acc_ours": ours, "val_acc_ref": float(np.mean(ref_out.argmax(axis=1) == y))}
