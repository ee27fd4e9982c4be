"""Consistency lints that need no reference: what a layer's own run shows to be wrong.

- a gradient whose shape differs from its parameter's,
- a layer that changes its input (forward) or upstream gradient (backward) in place, or its
  own parameters (an update hidden in forward or backward),
- a gradient sharing memory with a parameter or another gradient,
- non-finite values in an output or gradient although the input was finite,
- a parameter whose gradient backward never set.

The findings the function path reports too (mutation, aliasing, raised, a gradient shape) are
built by ``lint_findings``; the checks here read a layer's record and call those builders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gradparity.core.finding import Finding
from gradparity.core.records import LayerRecord
from gradparity.core.validate import (
    check_parameters,
    check_seed,
    class_target,
    prepare_input,
    prepare_target,
    quiet_arithmetic,
    same_shape_target,
    takes_classes,
    takes_same_shape,
)
from gradparity.evidence.lint_findings import aliased, gradient_shape, mutation, raised
from gradparity.evidence.update_findings import backward_update_findings, updated_without_gradient
from gradparity.sides import run_numpy
from gradparity.sides.adapt import check_protocol, named_layers, params_of
from gradparity.sides.setup import resolve_losses

if TYPE_CHECKING:  # type hints only
    from gradparity.core.plan import Context
    from gradparity.sides.isolation import Probe


def _shape_lint(name: str, params: dict, rec: LayerRecord, mode: str) -> list[Finding]:
    """A gradient whose shape is not its parameter's; ``detail["broadcasts"]`` when an update
    ``p -= lr * g`` still takes it ((n,) onto (1, n)): then it is only a warning."""
    found = []
    for key, grad in rec.grads.items():
        if key not in params:
            continue
        g_shape, p_shape = np.shape(grad), np.shape(params[key])
        if g_shape != p_shape:
            found.append(gradient_shape(name, f"grad:{key}", mode, shapes=(g_shape, p_shape)))
    return found


def _missing_lint(name: str, params: dict, rec: LayerRecord, mode: str) -> list[Finding]:
    """A parameter whose gradient backward never set (checked once backward has run)."""
    if rec.grad_input is None:
        return []
    present = sorted(rec.grads)
    return [
        Finding(
            name,
            f"grad:{key}",
            "unexplained",
            {"grads_present": present},
            mode=mode,
            message=(
                f"{name}.{key}: backward recorded no gradient for {key!r} (grads holds "
                f"{present or 'nothing'}); fill grads[{key!r}] in backward"
            ),
        )
        for key in params
        if key not in rec.grads and key not in updated_without_gradient(rec)
    ]


def _is_update(mutated: str, keys: set[str]) -> bool:
    """Whether ``mutated`` ("param W (backward)") is one of the updates ``keys`` that
    ``update_findings`` reports instead."""
    return mutated.endswith("(backward)") and mutated.split()[1] in keys


def _finite(a: np.ndarray | None) -> bool:
    return a is None or np.asarray(a).dtype.kind not in "fc" or bool(np.isfinite(a).all())


def _nonfinite_lint(name: str, rec: LayerRecord, mode: str) -> list[Finding]:
    """Only a layer that turns finite values into inf/nan is flagged, not one passing them on."""
    if not _finite(rec.input):
        return []
    arrays = {"output": rec.output}
    if _finite(rec.output) and _finite(rec.grad_output):
        arrays |= {"grad_input": rec.grad_input, **{f"grad:{k}": v for k, v in rec.grads.items()}}
    found = []
    for quantity, value in arrays.items():
        if value is None or _finite(value):
            continue
        bad = ~np.isfinite(value)
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        found.append(
            Finding(
                name,
                quantity,
                "nonfinite",
                {"count": int(bad.sum()), "first_index": list(first)},
                mode=mode,
                message=(
                    f"{name} {quantity}: {int(bad.sum())} non-finite value(s), first at "
                    f"{first}, from finite inputs; look for a log of 0, a division by 0 "
                    "or an exp that overflows"
                ),
            )
        )
    return found


def lint_records(
    records: list[tuple[str, dict, LayerRecord]], mode: str
) -> tuple[list[Finding], list[Finding]]:
    """(errors, warnings) for (layer name, its params, its record) triples.

    Mutation, a gradient of the wrong shape and non-finite values are errors; aliasing is a
    warning, since the values are right until an optimiser writes through the alias.
    """
    errors, warnings = [], []
    for name, params, rec in records:
        by_update = updated_without_gradient(rec)
        errors += [
            mutation(name, what, mode) for what in rec.mutated if not _is_update(what, by_update)
        ]
        update_errors, update_warnings = backward_update_findings(name, rec, mode)
        errors += update_errors
        warnings += update_warnings
        shapes = _shape_lint(name, params, rec, mode)
        errors += [f for f in shapes if not f.detail["broadcasts"]]
        warnings += [f for f in shapes if f.detail["broadcasts"]]
        errors += _nonfinite_lint(name, rec, mode)
        errors += _missing_lint(name, params, rec, mode)
        warnings += [aliased(name, a, mode) for a in rec.aliases]
    return errors, warnings


_SHAPE_LABELS = ("not_reduced", "transposed", "shape_mismatch")  # already say the shape is off


def merge_lints(roots: list[Finding], lints: list[Finding]) -> list[Finding]:
    """Root causes plus lint errors; a lint on an already blamed (layer, quantity) joins that
    finding (``detail["also"]`` and its message) instead of repeating it."""
    merged = list(roots)
    by_place = {(f.layer, f.quantity): f for f in roots}
    for lint in lints:
        same = by_place.get((lint.layer, lint.quantity))
        if same is None:
            merged.append(lint)
            by_place[(lint.layer, lint.quantity)] = lint
        elif lint.diagnosis != same.diagnosis and not (
            lint.diagnosis == "shape_mismatch" and same.diagnosis in _SHAPE_LABELS
        ):
            same.detail.setdefault("also", []).append(lint.diagnosis)
            same.message += f"; also: {lint.message.split(': ', 1)[-1]}"
    return merged


def lint_isolated(ctx: Context) -> None:
    """The lint locator of ``compare``: lints of ours' isolate records join the root causes
    (merged into a finding at the same place), aliasing goes to the warnings."""
    probes: dict[str, Probe] = ctx.captures["probes"]
    errors, warnings = lint_records(
        [(name, params_of(p.pair.layer), p.ours) for name, p in probes.items()], "isolate"
    )
    ctx.root_causes[:] = merge_lints(ctx.root_causes, errors)
    ctx.warnings += warnings


@quiet_arithmetic
def lint(
    model: Any, x: np.ndarray, target: np.ndarray, ours_loss: Any = None, seed: int = 0
) -> list[Finding]:
    """Run the NumPy model alone (no reference) and return every lint finding, warnings last.

    x (N, features); target as the loss expects (default softmax cross-entropy: (N,) ints).
    A forward or backward that raises is a ``raised`` finding (first), and the pass stops
    there. Once the forward reaches the loss, the target is judged by the model's output as
    ``compare`` judges it: a class the loss cannot take (beyond the model's outputs, negative,
    a float label) or an MSE target of another shape is refused with InputError.
    """
    seed = check_seed(seed)
    layers = named_layers(model)
    x = prepare_input(x, "float64")
    target = prepare_target(target, x.shape[0], "float64")
    check_parameters((name, params_of(layer, name)) for name, layer in layers)
    if ours_loss is None:
        ours_loss, _ = resolve_losses(None, None)
    check_protocol("loss", ours_loss)
    rng = np.random.default_rng(seed)
    warm = run_numpy.warm_input(x, rng)
    records = run_numpy.run_chain(layers, ours_loss, x, target, warm)
    output = records["loss"].input if "loss" in records else None
    if output is not None:  # NumPy would index with a negative class or broadcast a shape
        if takes_classes(ours_loss) and output.ndim == 2:
            last = f"the last layer {layers[-1][0]!r}"  # lint has no reference to judge by
            checked = class_target(target, output.shape[1], "float64", source=last)
            if checked.dtype != target.dtype:  # integer one-hot rows, as compare passes them
                records = run_numpy.run_chain(layers, ours_loss, x, checked, warm)
        elif takes_same_shape(ours_loss):
            same_shape_target(target, output.shape)
    errors, warnings = lint_records(
        [(n, params_of(layer), records[n]) for n, layer in layers if n in records], "lint"
    )
    threw = [raised(n, rec.error, "lint") for n, rec in records.items() if rec.error is not None]
    return threw + errors + warnings
