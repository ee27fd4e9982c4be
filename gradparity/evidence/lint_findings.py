"""The lint findings that need no reference, one builder per kind, for both paths that report
them: the layer path (``lint`` and ``compare``'s lint locator, from a ``LayerRecord``) and the
function path (``compare_function``'s locator, from a ``UserRun``).

- ``mutation``: a forward, backward or function that changed an input or a parameter in place,
- ``aliased``: a gradient sharing memory with a parameter or another gradient,
- ``raised``: a forward, backward or function that threw (``raised_row``: its table row),
- ``gradient_shape``: a gradient whose shape is not its parameter's, a warning when an update
  ``p -= lr * g`` still broadcasts it onto the parameter.

The wording follows the owner (``of``): a layer is told about its forward and backward, a
function about its arguments and its return value.
"""

from __future__ import annotations

from typing import Literal

from gradparity.comparison.diff import broadcasts_onto
from gradparity.core.address import place
from gradparity.core.finding import Finding
from gradparity.core.records import failure_words
from gradparity.core.row import Row
from gradparity.core.status import Status

Owner = Literal["layer", "function"]


def mutation(
    owner: str, what: str, mode: str, *, of: Owner = "layer", params: frozenset[str] = frozenset()
) -> Finding:
    """``what`` was changed in place. A layer's record names it "input", "grad_output" or
    "param W (forward)"/"param W (backward)"; a function's run names an argument, or one of
    ``params`` (its parameters, which gradparity put back)."""
    if of == "function":
        if what in params:
            return Finding(
                owner, f"grad:{what}", "mutates_input", {"array": f"param {what}"}, mode=mode,
                problem=f"{owner} changed parameter {what} (gradparity put it back)",
                fix="compute gradients only and leave the update to the caller",
                message=f"{owner}: changed parameter {what} (gradparity put it back); compute "
                "gradients only and leave the update to the caller",
            )  # fmt: skip
        return Finding(
            owner, "call", "mutates_input", {"array": what}, mode=mode,
            problem=f"{owner} changed its {what} argument in place",
            fix="work on a copy: the caller still needs the original values",
            message=f"{owner}: changed its {what} argument in place; work on a copy",
        )  # fmt: skip
    if what.startswith("param "):
        key, backward = what.split()[1], what.endswith("(backward)")
        phase = "backward" if backward else "forward"
        return Finding(
            owner,
            "grad_input" if backward else "output",
            "mutates_input",
            {"phase": phase, "array": f"param {key}"},
            mode=mode,
            message=(
                f"{owner}: {phase} changed parameter {key}; compute gradients only and "
                "leave the update to the optimiser (a training loop would apply it twice)"
            ),
        )
    phase = "forward" if what == "input" else "backward"
    return Finding(
        owner,
        "output" if phase == "forward" else "grad_input",
        "mutates_input",
        {"phase": phase, "array": what},
        mode=mode,
        message=(
            f"{owner}: {phase} changed its {what.replace('_', ' ')} in place; "
            "work on a copy (the caller still needs the original values)"
        ),
    )


def aliased(owner: str, alias: str, mode: str, *, of: Owner = "layer") -> Finding:
    """A gradient sharing memory with a parameter or another gradient (``alias`` says which):
    a warning, since the values are right until an optimiser writes through the alias."""
    advice = "return a copy" if of == "function" else "store a copy"
    return Finding(
        owner,
        "grads",
        "aliased",
        {"alias": alias},
        mode=mode,
        message=f"{owner}: {alias}; {advice}",
    )


def raised(owner: str, error: dict, mode: str, *, of: Owner = "layer") -> Finding:
    """A layer (or the loss) or a function that threw, or, for a layer, gave a value that cannot
    be checked (``error`` as ``error_info`` gives it): the run stopped there."""
    if of == "function":
        where = f" at {error['where']}" if error.get("where") else ""
        problem = f"{owner} raised {error['type']}: {error['message']}{where}"
        fix = "fix the exception; the taps recorded before it are still compared"
        return Finding(
            owner, "call", "raised", dict(error), f"{place(owner, 'call')}: {problem}; {fix}",
            mode, problem=problem, fix=fix,
        )  # fmt: skip
    problem, fix = failure_words(error, first_line_only=True)
    quantity = error.get("quantity") or ("output" if error["phase"] == "forward" else "grad_input")
    return Finding(
        owner,
        quantity,
        "raised",
        dict(error),
        mode=mode,
        message=(
            f"{owner}: {problem}; {fix} (the rest of the pass did not run, so it was not checked)"
        ),
    )


def raised_row(found: Finding) -> Row:
    """The table row of a function's ``raised`` finding: a root cause, first in the table."""
    return Row(
        "chain", found.layer, "function", found.quantity, None, None,
        status=Status.ROOT_CAUSE, diagnosis="raised", detail=dict(found.detail),
        message=found.problem, fix=found.fix,
    )  # fmt: skip


def gradient_shape(
    owner: str,
    quantity: str,
    mode: str,
    *,
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    compared: Row | None = None,
) -> Finding:
    """``shape_mismatch`` of a gradient; ``detail["broadcasts"]`` when an update
    ``p -= lr * g`` still takes it ((n,) onto (1, n)): then it is only a warning.

    A layer's gradient gives ``shapes`` (gradient, parameter); a function's gives the
    ``compared`` parameter row that found its values right in a broadcasting shape, whose
    message says so."""
    if compared is not None:
        return Finding(
            owner, quantity, "shape_mismatch", {"broadcasts": True}, mode=mode,
            message=f"{place(compared.layer, compared.quantity)}: {compared.message}",
        )  # fmt: skip
    assert shapes is not None  # a layer's gradient gives its shapes
    g_shape, p_shape = shapes
    takes = broadcasts_onto(g_shape, p_shape, p_shape)
    consequence = (
        "p -= lr * g still broadcasts, but a gradient usually has its parameter's shape"
        if takes
        else "a gradient must have its parameter's shape"
    )
    key = quantity.removeprefix("grad:")
    return Finding(
        owner,
        quantity,
        "shape_mismatch",
        {"grad_shape": list(g_shape), "param_shape": list(p_shape), "broadcasts": takes},
        mode=mode,
        message=(
            f"{owner}.{key}: gradient has shape {g_shape}, the parameter {p_shape}; {consequence}"
        ),
    )
