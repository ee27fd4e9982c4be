"""The tensor side of the autodiff reference: ``np`` bound to ``torch._numpy`` for one run.

Imported only by ``sides.autodiff`` while an exact gradient is being taken (it imports torch).
``TensorSession`` binds the user's modules to a proxy of ``torch._numpy`` that names what the
tensor module lacks (as ``NotOnTensors``), guards ``from numpy import exp`` bindings, and patches
the tensor array class for the run: NumPy operators defer to it instead of converting it to a
plain array (which would cut the graph silently), ``float()``/``.item()`` on a value that
depends on a parameter is remembered by call site, and exact ties of max/min/abs (ReLU at 0)
are remembered so that they can be reported where they matter.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy
import torch
import torch._numpy as tnp

from gradparity.core.source import shown_path
from gradparity.sides.rebinding import NotOnTensors

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


@dataclass
class TensorSession:
    """What the run on tensors saw: the user's files (to name call sites), the places where a
    value left the graph, the kinks met."""

    user_files: set[str]
    cuts: list[tuple[str, str]] = field(default_factory=list)  # (call, where)
    kinks: list[Kink] = field(default_factory=list)

    def where(self) -> str:
        """The innermost call site in the user's files, as "path:line" ("" if none)."""
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename in self.user_files:
                return f"{shown_path(frame.f_code.co_filename)}:{frame.f_lineno}"
            frame = frame.f_back
        return ""


def requires_grad(value: Any) -> bool:
    """Whether ``value`` is a tensor array that depends on a parameter."""
    return isinstance(value, tnp.ndarray) and value.tensor.requires_grad


class _Ufunc:
    """A ``torch._numpy`` ufunc under its NumPy name: calls go through; ``.at``, ``.reduce``
    and the other ufunc methods, which the tensor module lacks, raise ``NotOnTensors``."""

    def __init__(self, name: str, function: Callable, session: TensorSession) -> None:
        self._name, self._function, self._session = name, function, session

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        raise NotOnTensors(f"np.{self._name}.{attribute}", self._session.where())


class _NoRandom(types.ModuleType):
    """``np.random`` during the run: random numbers inside the forward differ from the NumPy
    run's, so every use is refused by name."""

    def __init__(self, session: TensorSession) -> None:
        super().__init__("numpy.random")
        self._session = session

    def __getattr__(self, name: str) -> Any:
        where = self._session.where()
        raise NotOnTensors(
            f"np.random.{name}",
            where,
            f"np.random.{name} at {where or 'the forward'} draws random numbers inside the "
            "forward: draw them outside (pass the mask or noise in) to check it with autodiff",
        )


class TensorNumpy(types.ModuleType):
    """The module bound to ``np``: ``torch._numpy``'s names, and ``NotOnTensors`` for the rest."""

    def __init__(self, session: TensorSession, source: Any = tnp, prefix: str = "np") -> None:
        super().__init__(prefix)
        self._session, self._source, self._prefix = session, source, prefix
        self._kinked = {n: _kinked(n, getattr(tnp, n), session) for n in _kink_names()}

    def __getattr__(self, name: str) -> Any:
        if name == "random" and self._prefix == "np":
            return _NoRandom(self._session)
        if self._prefix == "np" and name in self._kinked:
            return self._kinked[name]
        value = getattr(self._source, name, None)
        if value is None:
            raise NotOnTensors(f"{self._prefix}.{name}", self._session.where())
        if isinstance(value, types.ModuleType):
            return TensorNumpy(self._session, value, f"{self._prefix}.{name}")
        if isinstance(getattr(numpy, name, None), numpy.ufunc) and self._prefix == "np":
            return _Ufunc(name, value, self._session)
        return value


def _kink_names() -> tuple[str, ...]:
    return ELEMENTWISE_KINKS + REDUCTION_KINKS + ZERO_KINKS


def _kinked(name: str, function: Callable, session: TensorSession) -> Callable:
    """``function`` that also records its exact ties on values that depend on a parameter."""

    def call(*args: Any, **kwargs: Any) -> Any:
        out = function(*args, **kwargs)
        if isinstance(out, tnp.ndarray) and out.tensor.requires_grad:
            at = _ties(name, args, kwargs, out)
            if at is not None and bool(at.any()):
                session.kinks.append(Kink(f"np.{name}", session.where(), out.tensor, at))
        return out

    return call


def _ties(name: str, args: tuple, kwargs: dict, out: Any) -> torch.Tensor | None:
    """Where the output of ``name(*args)`` sits on a kink (a bool tensor, the output's shape)."""
    with torch.no_grad():
        if name in ZERO_KINKS:
            return (tnp.asarray(args[0]).tensor == 0).expand(out.tensor.shape)
        if name in ELEMENTWISE_KINKS and len(args) >= 2:
            a, b = tnp.asarray(args[0]).tensor, tnp.asarray(args[1]).tensor
            return (a == b).expand(out.tensor.shape)
        if name in REDUCTION_KINKS and args:
            x = tnp.asarray(args[0]).tensor
            axis = kwargs.get("axis", args[1] if len(args) > 1 else None)
            return _reduction_ties(x, axis, out.tensor)
    return None


def _reduction_ties(x: torch.Tensor, axis: Any, out: torch.Tensor) -> torch.Tensor | None:
    """Outputs of a max/min reduction of ``x`` over ``axis`` reached by more than one element."""
    if axis is None:
        return ((x == out.reshape(())).sum() > 1).expand(out.shape)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    kept = out
    for a in sorted(a % x.dim() for a in axes):
        if kept.dim() < x.dim():
            kept = kept.unsqueeze(a)
    counts = (x == kept).sum(dim=tuple(a % x.dim() for a in axes))
    return (counts > 1).reshape(out.shape) if counts.numel() == out.numel() else None


def numpy_function_guard(name: str, function: Callable, session: TensorSession) -> Callable:
    """Stands for a global bound by ``from numpy import exp``: plain values go to NumPy; a
    tensor argument raises ``NotOnTensors`` (the binding bypasses ``np``)."""

    def guard(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, tnp.ndarray) for a in (*args, *kwargs.values())):
            where = session.where()
            raise NotOnTensors(
                name,
                where,
                f"{name} at {where or 'the forward'} is bound by `from numpy import "
                f"{getattr(function, '__name__', name)}`, which cannot run on tensors: "
                f"write np.{getattr(function, '__name__', name)} instead",
            )
        return function(*args, **kwargs)

    return guard


class ArrayClassPatch:
    """The tensor array class as the run needs it, patched for the run and restored after."""

    def __init__(self, session: TensorSession) -> None:
        self.session = session
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> ArrayClassPatch:
        session = self.session
        original = {n: tnp.ndarray.__dict__.get(n) for n in _PATCHED}
        self.saved = original

        def leaving(call: str, method: Callable) -> Callable:
            def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
                if self.tensor.requires_grad:
                    session.cuts.append((call, session.where()))
                return method(self, *args, **kwargs)

            return patched

        def array(self: Any, dtype: Any = None, copy: Any = None) -> Any:
            if self.tensor.requires_grad:
                where = session.where()
                raise NotOnTensors(
                    "a NumPy function",
                    where,
                    f"a NumPy function outside `np` (e.g. `from numpy import ...` or another "
                    f"library) at {where or 'the forward'} converts a tensor back to NumPy, "
                    "which cuts the gradient",
                )
            return numpy.asarray(self.tensor.detach().numpy(), dtype=dtype)

        tnp.ndarray.__array_ufunc__ = None  # NumPy operators defer to the tensor array
        tnp.ndarray.__array__ = array
        tnp.ndarray.__float__ = leaving("float()", original["__float__"])
        tnp.ndarray.item = leaving(".item()", original["item"])
        tnp.ndarray.tolist = leaving(".tolist()", original["tolist"])
        for name in REDUCTION_KINKS[:2]:
            setattr(tnp.ndarray, name, _method_kink(name, original[name], session))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, value in self.saved.items():
            if value is None:
                if name in tnp.ndarray.__dict__:
                    delattr(tnp.ndarray, name)
            else:
                setattr(tnp.ndarray, name, value)


_PATCHED = ("__array_ufunc__", "__array__", "__float__", "item", "tolist", "max", "min")


def _method_kink(name: str, method: Callable, session: TensorSession) -> Callable:
    """``a.max()``/``a.min()`` recording their ties as ``np.max``/``np.min`` do."""
    kinked = _kinked(name, lambda a, *args, **kwargs: method(a, *args, **kwargs), session)

    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        return kinked(self, *args, **kwargs)

    return patched


def numpy_bindings(module: types.ModuleType) -> Iterable[tuple[str, Any]]:
    """The globals of ``module`` bound to NumPy: the module or a submodule (``np``, ``numpy``,
    ``la = numpy.linalg``) and functions imported by name (``from numpy import exp``)."""
    for name, value in list(vars(module).items()):
        if isinstance(value, types.ModuleType):
            if value.__name__ == "numpy" or value.__name__.startswith("numpy."):
                yield name, value
        elif callable(value) and not isinstance(value, type) and _from_numpy(value):
            yield name, value


def _from_numpy(value: Any) -> bool:
    owner = getattr(value, "__module__", None) or ""
    if isinstance(value, numpy.ufunc):
        return True
    return owner == "numpy" or owner.startswith("numpy.")


def tensor_binding(value: Any, name: str, session: TensorSession, np_proxy: TensorNumpy) -> Any:
    """What the global ``name`` (bound to NumPy ``value``) is bound to during the run."""
    if isinstance(value, types.ModuleType):
        proxy: Any = np_proxy
        for part in value.__name__.split(".")[1:]:
            if part == "random":
                proxy = _NoRandom(session)
            elif part in dir(proxy._source):
                proxy = getattr(proxy, part)
            else:  # a submodule the tensor module lacks (numpy.typing for annotations)
                return value
        return proxy
    return numpy_function_guard(name, value, session)


def as_tensor_array(array: Any, grad: bool) -> Any:
    """A tensor array holding a float64 (or integer) copy of ``array``; a leaf that requires
    grad when ``grad``."""
    values = numpy.array(array, copy=True)
    if values.dtype.kind == "f" or grad:
        values = values.astype(numpy.float64)
    tensor = torch.tensor(values)
    if grad:
        tensor.requires_grad_(True)
    return tnp.asarray(tensor)
