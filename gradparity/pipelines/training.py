"""``compare_training``: ours and the reference through the same optimisation steps.

The harness owns the loop (zero_grad, forward, loss, backward, step) on both sides with
identical batches, numbered from 1. Each step compares the loss, every gradient, every
parameter update (as a delta: value after minus before, so a wrong step size is ``scaled`` and
an ascent ``sign_flipped``) and the optimiser state. At the first step that diverges the
findings say why: gradients that were never zeroed (``accumulated``), a gradient from an
earlier batch (``stale``), a backprop bug (localised by ``compare`` on that step's batch and
weights), or an optimiser bug (the updates diverge while the gradients agree).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradparity.core.errors import InputError
from gradparity.core.finding import Finding
from gradparity.core.options import Maps, ReferenceInputs, Tolerances, TrainingOptions, with_options
from gradparity.core.records import USER_ERRORS, error_info, failure_words, real_array
from gradparity.core.tolerance import tolerance_for
from gradparity.core.validate import (
    check_count,
    check_mapping,
    check_name,
    check_options,
    check_parameters,
    quiet_arithmetic,
)
from gradparity.pairing.align import (
    align_layers,
    layers_by_module,
    refuse_shared_parameters,
    synced_names,
)
from gradparity.pairing.params import sync_parameters
from gradparity.pairing.square import pair_parameters
from gradparity.pipelines.layers import compare
from gradparity.pipelines.training_batches import BatchCheck, batch_pairs, check_validation
from gradparity.pipelines.training_compare import Tracker, compare_step, findings_at, history_row
from gradparity.report.report import Report, TrainingReport
from gradparity.sides import run_torch
from gradparity.sides.adapt import model_name, named_layers, params_of
from gradparity.sides.preflight import check_filled
from gradparity.sides.run_torch import TORCH_DTYPES
from gradparity.sides.setup import resolve_losses
from gradparity.sides.training_setup import optimizers
from gradparity.sides.training_steps import Shadow, ours_step, reference_step


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
) -> TrainingReport:
    """Train both sides on the same ``batches`` and report the first step where they part.

    batches: iterable of (x (N, features), target (N,) or like the output); ``steps`` caps it.
    Optimisers: instances bound to the given models (copied together with them) or factories
    (``f(ours_model)``, ``f(reference_params)``); default plain SGD, lr 0.1, on both sides.
    validation: (x, y) scored every ``eval_every`` steps into ``history``. Neither model nor
    optimiser passed in is modified. ``tolerances`` (rtol, atol), ``reference_inputs`` (its
    ``loss``), ``maps`` (its ``layer_map``) and ``training`` (optimisers, steps, validation,
    eval_every, progress): option objects, merged into those keyword arguments
    (``with_options``).
    """
    dtype, rtol, atol, seed = check_options(dtype, rtol, atol, seed)
    layer_map = check_mapping(layer_map, "layer_map", "ours layer name: reference module name")
    name = check_name(name)
    steps = None if steps is None else check_count(steps, "steps")
    eval_every = check_count(eval_every, "eval_every")
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be callable(iterable) -> iterable, got {progress!r}")
    tol = tolerance_for(dtype, rtol, atol)
    tdtype = TORCH_DTYPES[dtype]
    if validation is not None:
        validation = check_validation(validation, dtype)
    ours_loss, reference_loss = resolve_losses(ours_loss, reference_loss)
    if not isinstance(reference_model, nn.Module):
        raise InputError(
            f"reference model must be a torch.nn.Module, got {type(reference_model).__name__}"
        )
    ours_model, ours_opt, ref_model, ref_opt, empty = optimizers(
        ours_model, reference_model, ours_optimizer, reference_optimizer, tdtype
    )
    ref_model.train()
    layers = named_layers(ours_model)
    check_parameters((lname, params_of(layer, lname)) for lname, layer in layers)
    pairs = align_layers(layers, ref_model, layer_map)
    refuse_shared_parameters(pairs)
    pair_parameters(pairs, np.random.default_rng(seed))
    for pair in pairs:
        sync_parameters(params_of(pair.layer), pair.torch_module, pair.params)
    check_filled(empty, synced_names(pairs))
    shadow = Shadow.make(ref_model, ref_opt, pairs, reference_loss) if dtype == "float32" else None

    tracker, history, kept, findings = Tracker(), [], [], []
    first_divergent, last_rows = None, []
    iterator = batch_pairs(batches, steps)
    batch_check = BatchCheck(ref_model, ours_loss, reference_loss, dtype, layers_by_module(pairs))
    if validation is not None:
        batch_check.validation(*validation)
    for step, (x, target) in enumerate(progress(iterator) if progress else iterator, start=1):
        x, target = batch_check(step, x, target)
        try:
            ours = ours_step(layers, ours_loss, ours_opt, x, target)
        except USER_ERRORS as exc:  # the user's code raised: that is the finding
            err = error_info("forward/backward/step", exc)
            problem, fix = failure_words(err)
            findings.append(
                Finding(
                    "model",
                    "step",
                    "raised",
                    err,
                    step=step,
                    mode="train",
                    message=f"step {step}: {problem}; {fix}",
                )
            )
            first_divergent = first_divergent or step
            break
        ref = reference_step(ref_model, reference_loss, ref_opt, pairs, x, target, tdtype)
        step_tol = tol if shadow is None else shadow.widen(tol, ref, x, target)
        rows = compare_step(step, ours, ref, step_tol, pairs, x.shape[0])
        history.append(history_row(step, ours, ref, rows))
        if validation is not None and (step % eval_every == 0 or step == 1):
            history[-1].update(_accuracy(layers, ref_model, validation, dtype, tdtype))
        if not np.isfinite(ours.loss):
            kind = "both sides" if not np.isfinite(ref.loss) else "ours"
            findings.append(
                Finding(
                    "loss",
                    "loss",
                    "nonfinite",
                    {"loss": str(ours.loss)},
                    step=step,
                    mode="train",
                    message=f"step {step}: the loss of {kind} is not finite; "
                    "lower the learning rate or look for a log of 0",
                )
            )
            first_divergent = first_divergent or step
            kept += rows
            last_rows = rows
            break
        if first_divergent is None and any(r.diverged for r in rows):
            first_divergent = step
            kept += rows

            def localised(
                x: np.ndarray = x, t: np.ndarray = target, before: dict = ours.before
            ) -> Report:
                return compare(
                    _rewound(layers, before),
                    ref_model,
                    x,
                    t,
                    ours_loss,
                    reference_loss,
                    layer_map,
                    dtype,
                    seed=seed,
                    name="localised",
                )

            findings += findings_at(step, rows, ours, ref, tracker, step_tol, localised)
            for f in findings:
                f.step = step
        elif step == 1:
            kept += rows
        tracker.add(ref)
        last_rows = rows
    if not history and not findings:
        raise InputError("the batches gave no (x, target) pair: check the data set")
    if last_rows and last_rows[0].step not in {r.step for r in kept}:
        kept += last_rows
    if validation is not None and history and "val_acc_ours" not in history[-1]:
        history[-1].update(_accuracy(layers, ref_model, validation, dtype, tdtype))
    return TrainingReport(
        dtype=dtype,
        tolerance=tol,
        rows=kept,
        root_causes=findings,
        conversions=[f"{p.name}: {pp.describe()}" for p in pairs for pp in p.params],
        history=pd.DataFrame(history),
        first_divergent_step=first_divergent,
        meta={
            "model": name or model_name(ours_model),
            "seed": seed,
            "steps": len(history),
            "ours_optimizer": _describe(ours_opt),
            "reference_optimizer": type(ref_opt).__name__,
            "numpy": np.__version__,
            "torch": torch.__version__,
        },
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
        h = x
        for _, layer in copy.deepcopy(layers):
            h = real_array(layer.forward(h), "forward's output", "output")
        ours = float(np.mean(h.argmax(axis=1) == y)) if h.shape[:1] == y.shape else np.nan
    except USER_ERRORS:
        ours = np.nan
    with torch.no_grad():
        ref_out = run_torch.to_numpy(ref_model(run_torch.as_tensor(x, tdtype)))
    return {"val_acc_ours": ours, "val_acc_ref": float(np.mean(ref_out.argmax(axis=1) == y))}
