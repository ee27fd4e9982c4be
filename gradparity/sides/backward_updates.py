"""Layers that update their own parameters inside backward, through an optimiser
(ML-From-Scratch's Dense does ``self.W = self.W_opt.update(self.W, grad_w)``): the gradient
read as the update implies, and the parameters put back.

A plain SGD step is ``W_after = W_before - lr * grad``, so where the optimiser a layer uses for
a parameter exposes its learning rate and keeps nothing else that shapes the step (no momentum,
no moment estimates), the gradient is ``(W_before - W_after) / lr``. Any other step (momentum,
Adam) cannot be undone from outside: the record then says the gradient is unknown, and the
finding built from it says how to expose it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradparity.sides.adapt import Wrapped, params_of

# Where a layer keeps the optimiser of parameter "W", in the order looked at ("{}" is the key).
_OPTIMISER_PLACES = (
    "{}_opt", "{}_optimizer", "{}_optimiser", "{}_optim", "optimizer", "optimiser", "opt",
)  # fmt: skip
_RATE_NAMES = ("learning_rate", "lr", "eta")
# Settings that, when non-zero, make an optimiser's step more than learning rate x gradient.
_STEP_SHAPERS = (
    "momentum", "nesterov", "b1", "b2", "beta1", "beta2", "betas", "rho", "eps", "epsilon",
    "weight_decay", "decay",
)  # fmt: skip
# On the layer itself only the optimiser-like settings count: a layer's own eps (batch norm)
# says nothing about how it steps.
_LAYER_STEP_SHAPERS = ("momentum", "nesterov", "beta1", "beta2", "betas", "weight_decay")


@dataclass(frozen=True)
class Optimiser:
    """What updates one parameter inside backward: ``place`` is the attribute holding it
    ("W_opt"), or "the layer" for a layer stepping with its own learning rate."""

    place: str
    kind: str
    learning_rate: float | None  # a plain SGD's rate; None when the step is more than that


def _rate(obj: Any) -> float | None:
    for name in _RATE_NAMES:
        value = getattr(obj, name, None)
        if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
            return float(value) if np.isfinite(value) and value > 0 else None
    return None


def _shapes_step(obj: Any, names: tuple[str, ...]) -> bool:
    """Whether one of ``names`` is set on ``obj`` to something other than 0, None or False."""
    for name in names:
        value = getattr(obj, name, None)
        if value is None or value is False:
            continue
        if not isinstance(value, (int, float, np.floating)) or value != 0:
            return True
    return False


def find_optimiser(obj: Any, key: str) -> Optimiser | None:
    """The optimiser ``obj`` updates parameter ``key`` with, if it keeps one where frameworks
    do (``W_opt``, ``optimizer``...), else the layer itself when it has a learning rate."""
    for place in _OPTIMISER_PLACES:
        name = place.format(key)
        opt = getattr(obj, name, None)
        if opt is None or isinstance(opt, (int, float, str, np.ndarray)):
            continue
        rate = _rate(opt)
        plain = rate is not None and not _shapes_step(opt, _STEP_SHAPERS)
        return Optimiser(name, type(opt).__name__, rate if plain else None)
    rate = _rate(obj)
    if rate is None:
        return None
    plain = not _shapes_step(obj, _LAYER_STEP_SHAPERS)
    return Optimiser("the layer", type(obj).__name__, rate if plain else None)


def _owner(layer: Any) -> Any:
    return layer.obj if isinstance(layer, Wrapped) else layer


def read_backward_updates(
    layer: Any, before: dict[str, np.ndarray], keys: list[str], grads: dict[str, np.ndarray]
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """For the parameters ``keys`` that backward changed: (how each gradient was read, the
    gradients read from a plain SGD step). ``before`` holds the values before backward,
    ``grads`` what the layer itself kept (that one is used as it is).

    Each description: ``optimiser`` (where it lives, or None), ``kind``, ``learning_rate``
    and ``read``: "grads" (kept by the layer), "update" ((before - after) / learning rate) or
    None (unknown: the step is not a plain SGD's, or no optimiser was found).
    """
    owner, now = _owner(layer), params_of(layer)
    described: dict[str, dict] = {}
    recovered: dict[str, np.ndarray] = {}
    for key in keys:
        opt = find_optimiser(owner, key)
        info: dict[str, Any] = {
            "optimiser": opt.place if opt else None,
            "kind": opt.kind if opt else None,
            "learning_rate": opt.learning_rate if opt else None,
            "read": None,
        }
        after = np.asarray(now.get(key))
        if key in grads:
            info["read"] = "grads"
        elif opt and opt.learning_rate and after.shape == before[key].shape:
            step = before[key].astype(np.float64) - after.astype(np.float64)
            recovered[key] = (step / opt.learning_rate).astype(before[key].dtype)
            info["read"] = "update"
        described[key] = info
    return described, recovered


def restore_params(layer: Any, before: dict[str, np.ndarray]) -> None:
    """Put back the values ``before`` of the parameters the layer changed: the attribute
    rebound for a parameter ``wrap`` reads by name, else written into the array it holds."""
    owner, now = _owner(layer), params_of(layer)
    by_name = isinstance(layer, Wrapped) and isinstance(layer._params, (list, tuple))
    for key, old in before.items():
        current = now.get(key)
        if by_name and key in layer._params:
            setattr(owner, key, old.copy())
        elif (
            isinstance(current, np.ndarray)
            and current.shape == old.shape
            and current.flags.writeable
        ):
            current[...] = old
