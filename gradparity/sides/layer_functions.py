"""Course-style layer functions seen as a layer: ``out, cache = f_forward(x, w, b, ...)`` and
``dx, dw, db = f_backward(dout, cache)`` wrapped by :func:`layer` into an object that follows
the layer protocol, so ``compare`` (against ``"autodiff"`` or a torch module) and
``check_layer`` take it like any layer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradparity.core.errors import InputError


class LayerFunctions:
    """A forward/backward function pair as a layer. ``arguments``: the forward's arguments
    after x, in order; its float arrays are the parameters (``params``), the rest (a
    ``conv_param`` dict, a flag) are passed unchanged and not differentiated."""

    def __init__(
        self, forward: Callable[..., Any], backward: Callable[..., Any], arguments: dict[str, Any]
    ) -> None:
        self.forward_function = forward
        self.backward_function = backward
        self.arguments = arguments
        self.params = {k: v for k, v in arguments.items() if _is_parameter(v)}
        self.grads: dict[str, np.ndarray] = {}
        self.cache: Any = None

    def forward(self, x: Any) -> Any:
        """``f_forward(x, *arguments)``'s output; its cache is kept for backward."""
        returned = self.forward_function(x, *self.arguments.values())
        if not (isinstance(returned, tuple) and len(returned) == 2):
            raise TypeError(
                f"{self.forward_function.__name__} must return (out, cache), got "
                f"{type(returned).__name__}{_length(returned)}"
            )
        out, self.cache = returned
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """dx from ``f_backward(grad_out, cache)``, which returns dx then one gradient per
        parameter in the order they were given (or dx alone for a layer without any)."""
        returned = self.backward_function(grad_out, self.cache)
        parts = list(returned) if isinstance(returned, (tuple, list)) else [returned]
        if len(parts) != 1 + len(self.params):
            raise TypeError(
                f"{self.backward_function.__name__} returned {len(parts)} values; expected dx "
                f"then one gradient for each of {list(self.params)} ({1 + len(self.params)})"
            )
        self.grads = dict(zip(self.params, parts[1:]))
        return parts[0]

    def code_of(self, role: str) -> Callable[..., Any]:
        """The user's function behind ``role`` ("forward" or "backward"), for source lines."""
        return self.forward_function if role == "forward" else self.backward_function

    def __repr__(self) -> str:
        return f"layer({self.forward_function.__name__}, {self.backward_function.__name__})"


def _is_parameter(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


def _length(value: Any) -> str:
    return f" of {len(value)}" if isinstance(value, (tuple, list)) else ""


def layer(
    forward: Callable[..., Any],
    backward: Callable[..., Any],
    params: Mapping[str, Any] | None = None,
    **arguments: Any,
) -> LayerFunctions:
    """A course-style function pair as a layer object.

    ``forward(x, *args) -> (out, cache)`` and ``backward(dout, cache) -> (dx, *dparams)``;
    the forward's arguments after x are ``params`` (a dict, in order) then the keyword
    arguments, passed by position in that order: ``gp.layer(affine_forward,
    affine_backward, w=w, b=b)`` runs ``affine_forward(x, w, b)`` and maps
    ``affine_backward``'s ``(dx, dw, db)`` to dL/dx, grads["w"], grads["b"]. Float arrays are
    the parameters; other arguments (``conv_param={"stride": 1, "pad": 1}``) are passed
    unchanged. The layer's type in reports is named after ``forward``.
    """
    for role, fn in (("forward", forward), ("backward", backward)):
        if not callable(fn):
            raise InputError(f"gp.layer: {role} must be a function, got {type(fn).__name__}")
    given = dict(params or {})
    clash = sorted(set(given) & set(arguments))
    if clash:
        raise InputError(f"gp.layer: {clash} given both in params and as keyword arguments")
    # A class named after the forward ("affine_forward"), so rows and findings say which pair.
    named = type(getattr(forward, "__name__", "layer"), (LayerFunctions,), {})
    return named(forward, backward, {**given, **arguments})


def layer_name(layer_object: LayerFunctions) -> str:
    """A short name for the single layer of ``check_layer``: the forward's name without
    ``_forward`` ("affine" for ``affine_forward``, "conv_naive" for ``conv_forward_naive``)."""
    name = getattr(layer_object.forward_function, "__name__", "layer")
    return name.replace("_forward", "") or name
