"""Kinks met in the autodiff run: exact ties of max/min, abs at 0, ReLU (``np.maximum(0, x)``)
at 0, where the derivative is not defined and autograd's choice may differ from the user's
backward's. Recorded as the run meets them, judged after it (``sides.autodiff``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch._numpy as tnp

# Functions whose derivative is undefined where operands tie (or at 0): autograd splits or
# picks there, the user's backward picks its own convention.
ELEMENTWISE_KINKS = ("maximum", "minimum", "fmax", "fmin")
REDUCTION_KINKS = ("max", "min", "amax", "amin")
ZERO_KINKS = ("abs", "absolute")


@dataclass
class Kink:
    """Elements of one call's output where the derivative is not defined."""

    call: str
    where: str
    output: torch.Tensor
    at: torch.Tensor  # bool, the output's shape
    touched: list[tuple[torch.Tensor, torch.Tensor]]  # (operand, bool: its elements there)


def kink_names() -> tuple[str, ...]:
    return ELEMENTWISE_KINKS + REDUCTION_KINKS + ZERO_KINKS


def kinked(name: str, function: Callable, session: Any) -> Callable:
    """``function`` that also records its exact ties on values that depend on a parameter."""

    def call(*args: Any, **kwargs: Any) -> Any:
        out = function(*args, **kwargs)
        if isinstance(out, tnp.ndarray) and out.tensor.requires_grad:
            found = _ties(name, args, kwargs, out.tensor)
            if found is not None and bool(found[0].any()):
                at, touched = found
                kink = Kink(f"np.{name}", session.where(), out.tensor, at, touched)
                session.kinks.append(kink)
        return out

    return call


Ties = tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]


def _ties(name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> Ties | None:
    """Where the output of ``name(*args)`` sits on a kink (a bool tensor, the output's shape),
    and the operands there: (operand, bool tensor of the elements at the kink)."""
    with torch.no_grad():
        if name in ZERO_KINKS:
            x = tnp.asarray(args[0]).tensor
            return (x == 0).expand(out.shape), [(x, x == 0)]
        if name in ELEMENTWISE_KINKS and len(args) >= 2:
            a, b = tnp.asarray(args[0]).tensor, tnp.asarray(args[1]).tensor
            at = (a == b).expand(out.shape)
            return at, [(t, at) for t in (a, b) if t.requires_grad]
        if name in REDUCTION_KINKS and args:
            x = tnp.asarray(args[0]).tensor
            axis = kwargs.get("axis", args[1] if len(args) > 1 else None)
            return _reduction_ties(x, axis, out)
    return None


def _reduction_ties(x: torch.Tensor, axis: Any, out: torch.Tensor) -> Ties | None:
    """Outputs of a max/min reduction of ``x`` over ``axis`` reached by more than one element,
    and those elements of ``x``."""
    axes = tuple(range(x.dim())) if axis is None else (axis,) if isinstance(axis, int) else axis
    axes = tuple(sorted(a % x.dim() for a in axes))
    kept = out
    if out.dim() < x.dim():
        kept = out.reshape([1 if d in axes else x.shape[d] for d in range(x.dim())])
    hits = x == kept
    tied = hits.sum(dim=axes, keepdim=True) > 1
    if tied.numel() != out.numel():
        return None
    return tied.reshape(out.shape), [(x, hits & tied)]


def method_kink(name: str, method: Callable, session: Any) -> Callable:
    """``a.max()``/``a.min()`` recording their ties as ``np.max``/``np.min`` do."""
    recording = kinked(name, lambda a, *args, **kwargs: method(a, *args, **kwargs), session)

    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        return recording(self, *args, **kwargs)

    return patched
