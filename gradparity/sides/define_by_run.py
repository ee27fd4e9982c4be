"""Layers of define-by-run NumPy frameworks (chainer, dezero) through the layer protocol.

In such a framework a layer's forward takes and returns the framework's variables, and the
returned variable is a graph node: setting its gradient and calling its ``backward()`` fills
the gradients of the input and of every parameter. :func:`define_by_run` does that dance, so
checking a framework's layer is one line instead of a hand-written ``gp.wrap``.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gradparity.core.errors import InputError

MAX_DEPTH = 4  # how deep parameters are looked for in nested layers (a block of layers)
# Attributes that are never a layer holding parameters.
_NOT_LAYERS = (np.ndarray, type, types.ModuleType, types.FunctionType, types.MethodType)


def array_of(value: Any) -> np.ndarray | None:
    """The array a framework's variable holds (chainer ``.array``, dezero ``.data``); an
    array stays as it is; None stays None."""
    if value is None or isinstance(value, np.ndarray):
        return value
    held = getattr(value, "array", None)
    return held if isinstance(held, np.ndarray) else getattr(value, "data", None)


def _class_named(obj: Any, name: str) -> type | None:
    return next((c for c in type(obj).__mro__ if c.__name__ == name), None)


def _find_parameters(obj: Any, prefix: str, depth: int, seen: set[int]) -> list[str]:
    """Dotted attribute paths of the framework ``Parameter`` objects under ``obj``, in
    attribute order, looking into nested layers (objects with attributes of their own)."""
    found: list[str] = []
    for attr, value in getattr(obj, "__dict__", {}).items():
        if id(value) in seen or isinstance(value, _NOT_LAYERS):
            continue
        seen.add(id(value))
        if _class_named(value, "Parameter") is not None:
            found.append(prefix + attr)
        elif depth < MAX_DEPTH and hasattr(value, "__dict__"):
            found += _find_parameters(value, f"{prefix}{attr}.", depth + 1, seen)
    return found


def _parameter_paths(layer: Any) -> list[str]:
    """The layer's parameters as dotted attribute paths: chainer's ``namedparams()`` names
    ("/l1/W" -> "l1.W"), else every framework ``Parameter`` among its attributes."""
    named = getattr(layer, "namedparams", None)
    if callable(named):
        return [name.strip("/").replace("/", ".") for name, _ in named()]
    return _find_parameters(layer, "", 0, set())


def _resolve(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class DefineByRun:
    """A define-by-run framework's layer seen through the layer protocol. Made by
    :func:`define_by_run`; ``layer`` is the framework's object, untouched."""

    def __init__(self, layer: Callable[[Any], Any], variable: type, paths: list[str]) -> None:
        self.layer, self.variable, self.paths = layer, variable, paths
        self._input: Any = None
        self._output: Any = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x as the framework's variable through the layer; keeps the output's graph node
        for backward and returns its array."""
        self._input = self.variable(x)
        self._output = self.layer(self._input)
        out = array_of(self._output)
        if out is None:
            raise TypeError(
                f"the layer returned a {type(self._output).__name__}, not a variable holding an "
                "array (.array or .data)"
            )
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """dL/dx for upstream ``grad_out`` (the output's shape): clears the parameters'
        gradients, sets the output node's gradient and runs the framework's backward."""
        if self._output is None:
            raise RuntimeError("backward was called before forward")
        for param in self._parameters().values():
            clear = getattr(param, "cleargrad", None)
            if callable(clear):
                clear()
            else:
                param.grad = None
        # chainer takes an array as .grad (its variable is .grad_var); dezero takes a variable.
        as_array = hasattr(self._output, "grad_var")
        self._output.grad = grad_out if as_array else self.variable(grad_out)
        self._output.backward()
        grad_in = array_of(self._input.grad)
        return np.zeros_like(array_of(self._input)) if grad_in is None else grad_in

    def _parameters(self) -> dict[str, Any]:
        return {path: _resolve(self.layer, path) for path in self.paths}

    @property
    def params(self) -> dict[str, np.ndarray]:
        """{name: the parameter's array itself}, so writing into it sets the parameter."""
        return {k: array_of(p) for k, p in self._parameters().items()}  # type: ignore[misc]

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """{name: the gradient backward left on the parameter}; a parameter without one
        is left out."""
        found = {k: array_of(p.grad) for k, p in self._parameters().items()}
        return {k: g for k, g in found.items() if g is not None}

    def code_of(self, role: str) -> Any:
        """The framework's code behind ``role``: the layer's forward, or the backward of the
        function that made the last output (None before any forward)."""
        if role == "forward":
            return getattr(self.layer, "forward", self.layer)
        creator = getattr(self._output, "creator", None)
        return getattr(type(creator), "backward", None) if creator is not None else None

    def __repr__(self) -> str:
        return f"define_by_run({type(self.layer).__name__})"


def define_by_run(
    layer: Callable[[Any], Any],
    variable: type | None = None,
    params: Sequence[str] | None = None,
) -> DefineByRun:
    """Adapt a define-by-run framework's layer (chainer, dezero style: called on a variable, it
    returns a graph node with ``backward()``) to the layer protocol.

    - ``layer``: the framework's layer object (a chainer ``Link``, a dezero ``Layer``) or any
      callable on its variables, e.g. ``lambda x: F.pooling(x, 2, 2, pad=1)``.
    - ``variable``: the framework's variable class, used to wrap the input; by default the
      ``Variable`` base class of the layer's parameters.
    - ``params``: attribute names (dotted for nested layers: ``["l1.W"]``) of the parameters
      to compare; by default chainer's ``namedparams()``, else every ``Parameter`` found
      among the layer's attributes.

    Example: ``gp.define_by_run(L.Linear(3, 4))``; ``gp.define_by_run(lambda x:
    F.max_pooling_2d(x, 2), variable=chainer.Variable)``.
    """
    if not callable(layer):
        raise InputError(
            f"define_by_run: {type(layer).__name__} is not callable; pass the framework's layer "
            "object or a function of its variables (lambda x: F.relu(x))"
        )
    if params is not None and (
        isinstance(params, str) or not all(isinstance(p, str) for p in params)
    ):
        raise InputError(
            f"define_by_run: params= must be a list of attribute names, got {params!r}"
        )
    paths = list(params) if params is not None else _parameter_paths(layer)
    for path in paths:
        try:
            _resolve(layer, path)
        except AttributeError:
            raise InputError(
                f"define_by_run: {type(layer).__name__} has no parameter {path!r}; "
                f"it has {_parameter_paths(layer)}"
            ) from None
    if variable is None:
        found = [_class_named(_resolve(layer, p), "Variable") for p in paths]
        variable = next((v for v in found if v is not None), None)
    if variable is None:
        raise InputError(
            f"define_by_run: cannot tell the framework's Variable class from {layer!r}; "
            "pass variable=, e.g. variable=chainer.Variable"
        )
    return DefineByRun(layer, variable, paths)
