"""What compare_function is given: inputs made arrays, the layout they show, the signatures
of the user's callables, and the reference's train/eval settings that matter."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradparity.core.errors import InputError
from gradparity.core.validate import check_count, check_mapping, check_name, float_array, raw_array
from gradparity.reference.layout import candidate_conversions, squeezed
from gradparity.sides.function_run import reference_hint
from gradparity.sides.preflight import check_target, dry_run
from gradparity.sides.run_numpy import warm_input
from gradparity.sides.run_torch import TORCH_DTYPES


def as_array(what: str, value: Any, dtype: str) -> np.ndarray:
    """A finite float array of ``dtype``; integers (class labels, token indices) stay as
    they are."""
    arr = raw_array(what, value)
    return arr if arr.dtype.kind in "iub" else float_array(what, arr, dtype)


def default_reference_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy averaged over the batch: class indices (also as whole floats,
    0., 1., 2.) or class probabilities shaped like the output."""
    whole = target.is_floating_point() and torch.equal(target, target.round())
    if not target.is_floating_point() or (whole and target.ndim == output.ndim - 1):
        target = target.long()
    return F.cross_entropy(output, target)


def checked_reference_target(
    model: nn.Module,
    rx: np.ndarray,
    rt: np.ndarray,
    dtype: str,
    reference_loss: Callable,
    *,
    given: tuple[Any, Any],
    default_loss: bool,
) -> np.ndarray:
    """The reference's target, checked against the reference's output on its input ``rx``
    (a dry run: x's width, a forward returning None, classes beyond the output).
    ``given``: the user's (reference_x, reference_target), for naming them in messages."""
    x_name, target_name = (
        what if value is None else f"reference_{what}"
        for what, value in zip(("x", "target"), given)
    )
    output = dry_run(model, rx, TORCH_DTYPES[dtype], x_name, reference_hint(rx), False)
    return check_target(
        rt, output, dtype, reference_loss=reference_loss, what=target_name,
        whole_floats=default_loss, loss_option="reference_loss",
    )  # fmt: skip


def is_columns(x: np.ndarray, reference_x: np.ndarray) -> bool:
    """True when the user holds examples as columns: x is the reference's batch transposed
    (told by the values when x is square)."""
    if x.ndim != 2 or reference_x.shape != x.T.shape:
        return False
    if reference_x.shape == x.shape and np.array_equal(reference_x, x):
        return False
    return reference_x.shape != x.shape or np.array_equal(reference_x, x.T)


def warm_input_for(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another input of x's shape for the warm-up call; integer x (indices, tokens) gets its
    own values shuffled, so every index stays valid."""
    if x.dtype.kind in "iub":
        return rng.permutation(x.ravel()).reshape(x.shape)
    return warm_input(x, rng)


def warm_reference_input(x: np.ndarray, rx: np.ndarray, warm: np.ndarray) -> np.ndarray | None:
    """The warm-up input in the reference's layout, where rx is x in a known layout."""
    if rx.shape == x.shape and np.array_equal(rx, x):
        return warm
    if x.ndim == 2 and rx.shape == x.T.shape and np.array_equal(rx, x.T):
        return warm.T
    if rx.size == x.size and np.array_equal(rx.ravel(), x.ravel()):
        return warm.reshape(rx.shape)
    return None


def _explainable(grad_shape: tuple[int, ...], param_shape: tuple[int, ...]) -> bool:
    """A gradient shape a diagnosis can speak about: a layout of the parameter's shape, or that
    shape with one extra (batch) axis."""
    if candidate_conversions(grad_shape, param_shape):
        return True
    return any(
        squeezed(grad_shape[:i] + grad_shape[i + 1 :]) == squeezed(param_shape)
        for i in range(len(grad_shape))
    )


def check_grad_shapes(grads: dict[str, np.ndarray], flat: dict[str, np.ndarray]) -> None:
    """One line for a gradient whose shape no layout or batch sum relates to its parameter's
    (name -> array on both sides)."""
    for name, g in grads.items():
        if not _explainable(g.shape, flat[name].shape):
            raise InputError(
                f"the gradient of {name} has shape {g.shape}, the parameter {flat[name].shape}; "
                "no layout or batch sum explains it: return an array of the parameter's shape"
            )


def function_options(
    param_map: Any, tap_map: Any, name: Any, batch_size: Any
) -> tuple[dict | None, dict | None, str | None, int | None]:
    """compare_function's own options, checked: (param_map, tap_map, name, batch_size)."""
    return (
        check_mapping(param_map, "param_map", "ours name: reference parameter name"),
        check_mapping(tap_map, "tap_map", "tap name: 'MODULE' or 'grad:MODULE'"),
        check_name(name),
        None if batch_size is None else check_count(batch_size, "batch_size"),
    )


def check_batch_size(batch_size: int | None, x: np.ndarray) -> None:
    """One line for a batch_size larger than any axis of x could hold examples along (the
    first two: examples as rows or as columns)."""
    most = max(x.shape[:2], default=1)
    if batch_size is not None and batch_size > most:
        raise InputError(
            f"batch_size={batch_size} but x {x.shape} holds at most {most} examples; pass the "
            "number of examples in x, or leave batch_size out to have it read from the shapes"
        )


def check_callables(grads: Any, loss_fn: Any) -> None:
    """One line when ``grads`` (or ``loss_fn``, when given) cannot be called as compare_function
    calls it: grads(x, target) and loss_fn(params, x, target)."""
    if not callable(grads):
        raise InputError(f"grads must be callable(x, target), got {type(grads).__name__}")
    check_signature(grads, "grads", 2, f"grads=lambda x, y: {function_name(grads)}(params, x, y)")
    if loss_fn is None:
        return
    if not callable(loss_fn):
        raise InputError(
            f"loss_fn must be callable(params, x, target) -> float, got {type(loss_fn).__name__}"
        )
    check_signature(loss_fn, "loss_fn", 3, "loss_fn=lambda params, x, y: ...")


def check_signature(fn: Callable, what: str, n_args: int, example: str) -> None:
    """One line when ``fn`` cannot take ``n_args`` positional arguments."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (a builtin): calling will tell
        return
    try:
        signature.bind(*[None] * n_args)
    except TypeError:
        wanted = "(x, target)" if n_args == 2 else "(params, x, target)"
        given = getattr(fn, "__name__", what)
        raise InputError(
            f"{what} is called as {what}{wanted}, but {what if given == '<lambda>' else given}"
            f"{signature} cannot take that; wrap it: {example}"
        ) from None


def function_name(grads: Callable) -> str:
    """The name rows and findings give the function: its __name__ ("grads" for a lambda)."""
    given = getattr(grads, "__name__", "grads")
    return "grads" if given == "<lambda>" else given


def mode_hints(model: nn.Module) -> list[str]:
    """Modules whose train/eval mode makes the reference differ from hand-written training
    code: batch norm in eval (running statistics), dropout in train (random masks)."""
    norms = [
        n for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training
    ]  # fmt: skip
    drops = [
        n for n, m in model.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
    ]  # fmt: skip
    hints = []
    if norms:
        hints.append(
            f"the reference's batch norm {norms} is in eval mode and uses its running "
            "statistics, where training code uses the batch's: call .train() on the reference"
        )
    if drops:
        hints.append(
            f"the reference's dropout {drops} is in train mode: its random masks differ from "
            "yours; pass the reference in eval() mode (and switch your dropout off) to compare"
        )
    return hints


def check_numeric_options(*, loss_fn: Callable | None, dtype: str, **reference_only: Any) -> None:
    """One line for what ``reference=None`` cannot take: options that need a reference model
    (``reference_only``: tap_map, param_map, ...), float32, or no loss_fn."""
    for option, given in reference_only.items():
        if given is not None:
            raise InputError(f"{option} needs a reference model; reference=None uses loss_fn")
    if dtype != "float64":
        raise InputError("reference=None compares in float64 (central differences need it)")
    if loss_fn is None:
        raise InputError(
            "reference=None needs loss_fn=callable(params, x, target) -> float: the loss whose "
            "gradient grads returns"
        )
