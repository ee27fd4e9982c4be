"""Consistency lints that need no reference: what a layer's own run shows to be wrong.

- a gradient whose shape differs from its parameter's,
- a layer that changes its input (forward) or upstream gradient (backward) in place, or its
  own parameters (an update hidden in forward or backward),
- a gradient sharing memory with a parameter or another gradient,
- non-finite values in an output or gradient although the input was finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradparity import run_numpy
from gradparity.adapt import named_layers, params_of
from gradparity.diff import broadcasts_onto
from gradparity.locate import Finding
from gradparity.records import LayerRecord


def _mutation(name: str, what: str, mode: str) -> Finding:
    if what.startswith("param "):
        key, backward = what.split()[1], what.endswith("(backward)")
        phase = "backward" if backward else "forward"
        return Finding(
            name,
            "grad_input" if backward else "output",
            "mutates_input",
            {"phase": phase, "array": f"param {key}"},
            mode=mode,
            message=(
                f"{name}: {phase} changed parameter {key}; compute gradients only and "
                "leave the update to the optimiser (a training loop would apply it twice)"
            ),
        )
    phase = "forward" if what == "input" else "backward"
    return Finding(
        name,
        "output" if phase == "forward" else "grad_input",
        "mutates_input",
        {"phase": phase, "array": what},
        mode=mode,
        message=(
            f"{name}: {phase} changed its {what.replace('_', ' ')} in place; "
            "work on a copy (the caller still needs the original values)"
        ),
    )


def _shape_lint(name: str, params: dict, rec: LayerRecord, mode: str) -> list[Finding]:
    """A gradient whose shape is not its parameter's; ``detail["broadcasts"]`` when an update
    ``p -= lr * g`` still takes it ((n,) onto (1, n)): then it is only a warning."""
    found = []
    for key, grad in rec.grads.items():
        g_shape, p_shape = np.shape(grad), np.shape(params.get(key))
        if key not in params or g_shape == p_shape:
            continue
        takes = broadcasts_onto(g_shape, p_shape, p_shape)
        consequence = (
            "p -= lr * g still broadcasts, but a gradient usually has its parameter's shape"
            if takes
            else "a gradient must have its parameter's shape"
        )
        found.append(
            Finding(
                name,
                f"grad:{key}",
                "shape_mismatch",
                {"grad_shape": list(g_shape), "param_shape": list(p_shape), "broadcasts": takes},
                mode=mode,
                message=(
                    f"{name}.{key}: gradient has shape {g_shape}, the parameter {p_shape}; "
                    f"{consequence}"
                ),
            )
        )
    return found


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
        if _finite(value):
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
        errors += [_mutation(name, what, mode) for what in rec.mutated]
        shapes = _shape_lint(name, params, rec, mode)
        errors += [f for f in shapes if not f.detail["broadcasts"]]
        warnings += [f for f in shapes if f.detail["broadcasts"]]
        errors += _nonfinite_lint(name, rec, mode)
        warnings += [
            Finding(
                name,
                "grads",
                "aliased",
                {"alias": a},
                mode=mode,
                message=f"{name}: {a}; store a copy",
            )
            for a in rec.aliases
        ]
    return errors, warnings


def lint(
    model: Any, x: np.ndarray, target: np.ndarray, ours_loss: Any = None, seed: int = 0
) -> list[Finding]:
    """Run the NumPy model alone (no reference) and return every lint finding, warnings last.

    x (N, features); target as the loss expects (default softmax cross-entropy: (N,) ints).
    """
    from gradparity.api import prepare_input, prepare_target, resolve_losses, warm_input

    layers = named_layers(model)
    x = prepare_input(x, "float64")
    target = prepare_target(target, x.shape[0], "float64")
    if ours_loss is None:
        ours_loss, _ = resolve_losses(None, None)
    rng = np.random.default_rng(seed)
    records = run_numpy.run_chain(layers, ours_loss, x, target, warm_input(x, rng))
    errors, warnings = lint_records(
        [(n, params_of(layer), records[n]) for n, layer in layers if n in records], "lint"
    )
    return errors + warnings
