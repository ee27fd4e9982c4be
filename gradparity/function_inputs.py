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

from gradparity.api import check_finite, warm_input
from gradparity.errors import InputError
from gradparity.reference.layout import candidate_conversions, squeezed


def as_array(what: str, value: Any, dtype: str) -> np.ndarray:
    """A float array (integer class labels stay integers), refused when not finite."""
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "iub":
            arr = arr.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a numeric array: {exc}") from exc
    if arr.size == 0:
        raise InputError(f"{what} is empty (shape {arr.shape})")
    check_finite(what, arr)
    return arr


def default_reference_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy averaged over the batch: class indices (also as whole floats,
    0., 1., 2.) or class probabilities shaped like the output."""
    whole = target.is_floating_point() and torch.equal(target, target.round())
    if not target.is_floating_point() or (whole and target.ndim == output.ndim - 1):
        target = target.long()
    return F.cross_entropy(output, target)


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
        raise InputError(
            f"{what} is called as {what}{wanted}, but {function_name(fn)}{signature} cannot "
            f"take that; wrap it: {example}"
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
