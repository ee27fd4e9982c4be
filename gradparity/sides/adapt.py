"""Adapting user code to the layer protocol, and listing a model's layers.

The harness only ever calls ``forward``, ``backward``, ``params`` and ``grads``. Code that uses
other names is adapted with :func:`wrap`, without editing it; a layer that keeps per-call state
until flushed also names the flush (``reset=``), which the harness runs before each pass.
"""

from __future__ import annotations

from collections.abc import Callable, ItemsView, Mapping
from typing import Any

import numpy as np

from gradparity.core.errors import InputError, describe_error

Method = str | Callable[..., Any]  # a method name, or f(obj, *args)
Accessor = str | list[str] | tuple[str, ...] | Callable[[Any], Any] | None  # what wrap() accepts
Reset = str | Callable[[Any], Any] | None  # a method name, or f(obj)


class Wrapped:
    """A user object seen through the layer (or loss) protocol. Made by :func:`wrap`."""

    def __init__(
        self,
        obj: Any,
        forward: Method,
        backward: Method,
        params: Accessor,
        grads: Accessor,
        reset: Reset = None,
    ) -> None:
        self.obj = obj
        self._forward = forward
        self._backward = backward
        self._params = params
        self._grads = grads
        self._reset = reset

    def before_pass(self) -> None:
        """Run ``reset=`` (if given) on the wrapped object; one line when it raises."""
        if self._reset is None:
            return
        try:
            _call(self.obj, self._reset, ())
        except Exception as exc:
            raise InputError(
                f"{self!r}: reset={_accessor_name(self._reset)} raised {describe_error(exc)}; "
                "it must empty the layer's per-call state (cached inputs, gradients)"
            ) from exc

    def forward(self, *args: Any) -> Any:
        return _call(self.obj, self._forward, args)

    def backward(self, *args: Any) -> Any:
        return _call(self.obj, self._backward, args)

    @property
    def params(self) -> dict[str, np.ndarray]:
        return _read_arrays(self, "params", self._params, keys=None)

    @property
    def grads(self) -> dict[str, np.ndarray]:
        names = list(self._params) if isinstance(self._params, (list, tuple)) else None
        return _read_arrays(self, "grads", self._grads, keys=names)

    def __repr__(self) -> str:
        return f"wrap({type(self.obj).__name__})"


def wrap(
    obj: Any,
    forward: Method = "forward",
    backward: Method = "backward",
    params: Accessor = "params",
    grads: Accessor = "grads",
    reset: Reset = None,
) -> Wrapped:
    """Adapt ``obj`` to the layer protocol.

    Each accessor is a name on ``obj`` or a callable taking ``obj`` first:

    - ``forward``/``backward``: a method name (``"fprop"``) or ``f(obj, x)`` / ``f(obj, g)``.
    - ``params``/``grads``: an attribute or method holding a dict (``"weights"``), a list of
      attribute names (``["W", "b"]`` / ``["dW", "db"]``, grads paired with params by order),
      or ``f(obj) -> dict``. A layer without parameters may pass ``params=None``.
    - ``reset``: a method name (``"flush_gradients"``) or ``f(obj)``, run before each forward/
      backward pass the harness makes (the chain run, its warm-up, each isolation probe), for
      layers that keep per-call state until flushed (numpy-ml appends each forward's input to a
      list that the next backward reads).

    Example: ``gp.wrap(layer, forward="fprop", backward="bprop", params=["W", "b"],
    grads=["dW", "db"])``.
    """
    for role, acc in (("forward", forward), ("backward", backward)):
        if isinstance(acc, str) and not callable(getattr(obj, acc, None)):
            raise InputError(f"wrap: {type(obj).__name__} has no method {acc!r} for {role}=")
        if not (isinstance(acc, str) or callable(acc)):
            raise InputError(
                f"wrap: {role}= must be a method name or a callable f(obj, ...), got "
                f"{acc!r}; pass e.g. {role}={'fprop' if role == 'forward' else 'bprop'!r}"
            )
    for role, spec in (("params", params), ("grads", grads)):
        names = isinstance(spec, (list, tuple)) and all(isinstance(n, str) for n in spec)
        if not (spec is None or isinstance(spec, str) or callable(spec) or names):
            raise InputError(
                f"wrap: {role}= must be an attribute name, a list of attribute names, a callable "
                f"f(obj) -> dict, or None, got {spec!r}"
            )
    if (
        isinstance(params, (list, tuple))
        and isinstance(grads, (list, tuple))
        and (len(params) != len(grads))
    ):
        raise InputError(
            f"wrap: params= names {list(params)} and grads= names {list(grads)} "
            "differ in length; give one gradient attribute per parameter"
        )
    _check_reset(obj, reset)
    return Wrapped(obj, forward, backward, params, grads, reset)


def _check_reset(obj: Any, reset: Reset) -> None:
    """One line when ``reset=`` names no method of ``obj`` or is neither a name nor a callable."""
    if reset is None or callable(reset):
        return
    if not isinstance(reset, str):
        raise InputError(
            f"wrap: reset= must be a method name or a callable f(obj), got {reset!r}; "
            "pass e.g. reset='flush_gradients'"
        )
    if not callable(getattr(obj, reset, None)):
        found = [name for name in LIKELY_RESETS if callable(getattr(obj, name, None))]
        hint = f"; it has {found[0]!r}" if found else "; pass reset=lambda obj: ... instead"
        raise InputError(f"wrap: {type(obj).__name__} has no method {reset!r} for reset={hint}")


# Method names frameworks give the call that empties a layer's per-call caches (numpy-ml:
# flush_gradients), most specific first.
LIKELY_RESETS = (
    "flush_gradients", "reset_state", "reset", "clear_cache", "clear", "flush", "zero_grad",
    "zero_grads",
)  # fmt: skip


def before_pass(layer: Any) -> None:
    """Run the ``reset=`` a :func:`wrap`-adapted layer (or loss) was given; other objects have
    none (the harness works on fresh copies of them)."""
    if isinstance(layer, Wrapped):
        layer.before_pass()


def _call(obj: Any, accessor: Method, args: tuple) -> Any:
    if callable(accessor):
        return accessor(obj, *args)
    return getattr(obj, accessor)(*args)


def _read_arrays(
    wrapped: Wrapped, role: str, accessor: Accessor, keys: list[str] | None
) -> dict[str, np.ndarray]:
    """The dict ``wrap``'s ``params=`` or ``grads=`` (``role``) reads from the wrapped object;
    one line when the accessor raises or gives something other than a dict."""
    obj = wrapped.obj
    if accessor is None:
        return {}
    if isinstance(accessor, (list, tuple)):
        names = keys if keys is not None else list(accessor)
        return {
            name: getattr(obj, attr)
            for name, attr in zip(names, accessor)
            if getattr(obj, attr, None) is not None
        }
    try:
        value = accessor(obj) if callable(accessor) else getattr(obj, accessor, None)
        if callable(value):
            value = value()
    except Exception as exc:
        raise InputError(
            f"{wrapped!r}: reading {role}={_accessor_name(accessor)} raised "
            f"{describe_error(exc)}; it must give a dict {{name: array}}"
        ) from exc
    return _as_dict(value, f"{wrapped!r}: {role}={_accessor_name(accessor)}", role)


def _accessor_name(accessor: Accessor) -> str:
    return repr(accessor) if isinstance(accessor, str) else getattr(accessor, "__name__", "f")


def _as_dict(value: Any, what: str, role: str) -> dict[str, np.ndarray]:
    """``value`` (a layer's params or grads) as a plain dict: None is empty, anything but a
    mapping is refused in one line naming ``what``."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return {}
    if not isinstance(value, Mapping):
        raise InputError(
            f"{what} gives a {type(value).__name__}, not a dict {{name: array}}; "
            f"return a dict, or with gradparity.wrap name the attributes in a list "
            f"({role}=['W', 'b'])"
        )
    return dict(value)


def _layer_dict(layer: Any, role: str, name: str | None) -> dict[str, np.ndarray]:
    """``layer.params`` or ``layer.grads`` (``role``; an attribute, property or method) as a
    dict; one line naming the layer when reading it raises or gives no dict."""
    what = f"the {role} of layer {name!r}" if name else f"the {role} of {type(layer).__name__}"
    try:
        value = getattr(layer, role, None)
        if callable(value):
            value = value()
    except InputError:  # a wrap accessor's own refusal already names what to fix
        raise
    except Exception as exc:  # a property or method of the user's layer that raised
        raise InputError(
            f"reading {what} raised {describe_error(exc)}; it must give a dict {{name: array}}"
        ) from exc
    return _as_dict(value, what, role)


def params_of(layer: Any, name: str | None = None) -> dict[str, np.ndarray]:
    """The layer's parameters as a dict (empty when it has none); one line, naming the layer
    (``name``, else its type), when they cannot be read as a dict."""
    return _layer_dict(layer, "params", name)


def grads_of(layer: Any, name: str | None = None) -> dict[str, np.ndarray]:
    """The layer's gradients as a dict (empty when backward filled none); read as
    ``params_of`` reads parameters."""
    return _layer_dict(layer, "grads", name)


def check_protocol(name: str, layer: Any) -> None:
    """One-line error when ``layer`` lacks forward/backward."""
    missing = [m for m in ("forward", "backward") if not callable(getattr(layer, m, None))]
    if missing:
        raise InputError(
            f"layer {name!r} ({type(layer).__name__}) has no {' or '.join(missing)} method; "
            "adapt it with gradparity.wrap(obj, forward=..., backward=..., params=..., grads=...)"
        )


def named_layers(model: Any) -> list[tuple[str, Any]]:
    """``[(name, layer), ...]`` in forward order from an ours container, any object with
    ``named_layers()``, a list of ``(name, layer)`` pairs or a dict's ``items()``, or a list
    of layers (named "0", ...).
    """
    if hasattr(model, "named_layers"):
        pairs = list(model.named_layers())
    elif isinstance(model, (list, tuple, ItemsView)):  # ItemsView: a book's layers.items()
        pairs = [
            item
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
            else (str(i), item)
            for i, item in enumerate(model)
        ]
    else:
        # A dict of layers (a book-style OrderedDict) has its pairs one call away.
        hint = "list(layers.items()): " if isinstance(model, Mapping) else ""
        raise InputError(
            f"cannot list the layers of a {type(model).__name__}: pass {hint}a list of "
            "(name, layer) pairs, or an object with named_layers()"
        )
    if not pairs:
        raise InputError("the NumPy model has no layers")
    names = [n for n, _ in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"NumPy layer names must be unique; repeated: {duplicates}")
    if "loss" in names:
        raise InputError("the layer name 'loss' is reserved for the loss; rename that layer")
    for name, layer in pairs:
        check_protocol(name, layer)
    return pairs


def model_name(model: Any) -> str:
    """A name for reports: the class name, or "model" for a plain list of layers."""
    return "model" if isinstance(model, (list, tuple)) else type(model).__name__


def layer_code(layer: Any, quantity: str) -> Any:
    """The code behind one of a layer's quantities: ``forward`` for its output, ``backward``
    for a gradient; for a :func:`wrap`-adapted object, the wrapped object's method or the
    callable given; for ``gp.layer``, the user's function. None when there is none."""
    role = "forward" if quantity == "output" else "backward"
    named = getattr(layer, "code_of", None)  # an adapter naming the user's own functions
    if callable(named):
        return named(role)
    if isinstance(layer, Wrapped):
        accessor = layer._forward if role == "forward" else layer._backward
        return accessor if callable(accessor) else getattr(layer.obj, accessor, None)
    return getattr(layer, role, None)
