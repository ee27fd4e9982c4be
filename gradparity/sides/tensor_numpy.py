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
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy
import torch
import torch._numpy as tnp

from gradparity.core.source import shown_path
from gradparity.sides.rebinding import NotOnTensors
from gradparity.sides.tensor_kinks import REDUCTION_KINKS, Kink, kink_names, kinked, method_kink
from gradparity.sides.tensor_speed import fast_functions
from gradparity.sides.tensor_versions import TENSOR_VERSIONS


@dataclass
class Cut:
    """A value computed by NumPy (outside the graph) from values that depend on a parameter;
    ``leaf`` stands for it in the graph, so whether the loss depends on it is known."""

    call: str
    where: str
    leaf: torch.Tensor
    reason: str | None  # what follows "call at file:line"; None: "has no tensor version"


@dataclass
class TensorSession:
    """What the run on tensors saw: the user's files (to name call sites), the places where a
    value left the graph, the kinks met."""

    user_files: set[str]
    cuts: list[tuple[str, str]] = field(default_factory=list)  # (call, where)
    numpy_cuts: list[Cut] = field(default_factory=list)
    kinks: list[Kink] = field(default_factory=list)
    # Each float()/.item() of a one-element value on the graph: (the number, its tensor,
    # the index of its entry in ``cuts``), so a loss returned as float(loss) keeps its graph.
    scalars: list[tuple[float, Any, int]] = field(default_factory=list)

    def where(self) -> str:
        """The innermost call site in the user's files, as "path:line" ("" if none)."""
        frame: types.FrameType | None = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename in self.user_files:
                return f"{shown_path(frame.f_code.co_filename)}:{frame.f_lineno}"
            frame = frame.f_back
        return ""


def requires_grad(value: Any) -> bool:
    """Whether ``value`` is a tensor array that depends on a parameter."""
    return isinstance(value, tnp.ndarray) and value.tensor.requires_grad


class _Ufunc:
    """A ``torch._numpy`` ufunc under its NumPy name: calls go through; ``np.add.at`` is done
    with torch's accumulating index add; ``.reduce`` and the other ufunc methods, which the
    tensor module lacks, raise ``NotOnTensors``."""

    def __init__(self, name: str, function: Callable, session: TensorSession) -> None:
        self._name, self._function, self._session = name, function, session

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        if (self._name, attribute) == ("add", "at"):
            return add_at
        raise NotOnTensors(f"np.{self._name}.{attribute}", self._session.where())


def add_at(a: Any, indices: Any, b: Any = None) -> None:
    """``np.add.at(a, indices, b)`` on a tensor array: ``b`` added at ``indices`` in place,
    repeated indices adding up (as NumPy does, unlike ``a[indices] += b``)."""
    target = a.tensor
    positions = torch.arange(target.numel()).reshape(target.shape)[_torch_index(indices)]
    values = torch.as_tensor(_torch_value(b), dtype=target.dtype).broadcast_to(positions.shape)
    target.view(-1).index_add_(0, positions.reshape(-1), values.reshape(-1))


def _torch_index(index: Any) -> Any:
    if isinstance(index, tuple):
        return tuple(_torch_index(i) for i in index)
    if isinstance(index, tnp.ndarray):
        return index.tensor
    if isinstance(index, numpy.ndarray | list):
        return torch.as_tensor(numpy.asarray(index))
    return index


def _torch_value(value: Any) -> Any:
    if isinstance(value, tnp.ndarray):
        return value.tensor
    return 1 if value is None else value


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
        fast = fast_functions()
        self._kinked = {n: kinked(n, fast.get(n, getattr(tnp, n)), session) for n in kink_names()}
        self._fast = fast

    def __getattr__(self, name: str) -> Any:
        value = self._resolve(name)
        vars(self)[name] = value  # the same for the whole run: resolved once
        return value

    def _resolve(self, name: str) -> Any:
        if name == "random" and self._prefix == "np":
            return _NoRandom(self._session)
        if self._prefix == "np" and name in self._kinked:
            return self._kinked[name]
        value = getattr(self._source, name, None)
        if value is None:
            return self._missing(name)
        if isinstance(value, types.ModuleType):
            return TensorNumpy(self._session, value, f"{self._prefix}.{name}")
        if self._prefix == "np":
            value = self._fast.get(name, value)
            if isinstance(getattr(numpy, name, None), numpy.ufunc):
                return _Ufunc(name, value, self._session)
        return value

    def _missing(self, name: str) -> Any:
        """NumPy's ``name`` where the tensor module lacks it: a function is run by NumPy on
        plain values (fine for index arithmetic such as ``np.unravel_index``), its result a
        ``Cut`` when it came from parameters (an error only if the loss depends on it); a
        module or constant (``np.typing``, ``np.pi``-like) is NumPy's own."""
        numpy_source: Any = numpy
        for part in self._prefix.split(".")[1:]:
            numpy_source = getattr(numpy_source, part, None)
        if not hasattr(numpy_source, name):
            raise NotOnTensors(f"{self._prefix}.{name}", self._session.where())
        value = getattr(numpy_source, name)
        if isinstance(value, types.ModuleType) or not callable(value):
            return value
        return through_numpy(f"{self._prefix}.{name}", value, self._session, None)


def through_numpy(
    call: str, function: Callable, session: TensorSession, reason: str | None
) -> Callable:
    """``function`` run by NumPy on plain copies of its arguments; a floating result computed
    from values that depend on a parameter comes back as a ``Cut`` leaf."""

    def run(*args: Any, **kwargs: Any) -> Any:
        from_parameters = any(requires_grad(a) for a in _flat((*args, *kwargs.values())))
        out = function(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()})
        return _cut(out, call, session, reason) if from_parameters else out

    return run


def _flat(values: Any) -> list[Any]:
    if isinstance(values, tuple | list):
        return [v for item in values for v in _flat(item)]
    return [values]


def _plain(value: Any) -> Any:
    """``value`` with every tensor array replaced by a NumPy copy of its values."""
    if isinstance(value, tnp.ndarray):
        return value.tensor.detach().numpy().copy()
    if isinstance(value, tuple | list):
        return type(value)(_plain(v) for v in value)
    return value


def _cut(out: Any, call: str, session: TensorSession, reason: str | None) -> Any:
    if isinstance(out, tuple | list):
        return type(out)(_cut(v, call, session, reason) for v in out)
    if isinstance(out, numpy.ndarray | numpy.floating) and numpy.asarray(out).dtype.kind == "f":
        leaf = torch.tensor(numpy.asarray(out, dtype=numpy.float64), requires_grad=True)
        session.numpy_cuts.append(Cut(call, session.where(), leaf, reason))
        return tnp.asarray(leaf)
    if isinstance(out, float):
        session.cuts.append((call, session.where()))
    return out


def numpy_function_guard(name: str, function: Callable, session: TensorSession) -> Callable:
    """Stands for a global bound by ``from numpy import exp``: the binding bypasses ``np``, so
    it runs by NumPy, and the loss depending on its result is an error naming the binding."""
    numpy_name = getattr(function, "__name__", name)
    message = (
        f"is bound by `from numpy import {numpy_name}`, which cannot run on tensors: "
        f"write np.{numpy_name} instead"
    )
    return through_numpy(name, function, session, message)


class ArrayClassPatch:
    """The tensor array class as the run needs it, patched for the run and restored after."""

    def __init__(self, session: TensorSession) -> None:
        self.session = session
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> ArrayClassPatch:
        session = self.session
        original: dict[str, Any] = {n: tnp.ndarray.__dict__.get(n) for n in _PATCHED}
        self.saved = original

        def leaving(call: str, method: Callable) -> Callable:
            def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
                if not self.tensor.requires_grad:
                    return method(self, *args, **kwargs)
                session.cuts.append((call, session.where()))
                with warnings.catch_warnings():  # torch's warning says what the cut's note says
                    warnings.simplefilter("ignore")
                    out = method(self, *args, **kwargs)
                if self.tensor.numel() == 1 and isinstance(out, float):
                    session.scalars.append((out, self.tensor, len(session.cuts) - 1))
                return out

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

        patched: dict[str, Any] = {
            "__array_ufunc__": None,  # NumPy operators defer to the tensor array
            "__array__": array,
            "__float__": leaving("float()", original["__float__"]),
            "item": leaving(".item()", original["item"]),
            "tolist": leaving(".tolist()", original["tolist"]),
            "astype": _astype(original["astype"]),
        }
        for name in REDUCTION_KINKS[:2]:
            patched[name] = method_kink(name, original[name], session)
        for name, value in patched.items():
            setattr(tnp.ndarray, name, value)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, value in self.saved.items():
            if value is None:
                if name in tnp.ndarray.__dict__:
                    delattr(tnp.ndarray, name)
            else:
                setattr(tnp.ndarray, name, value)


_PATCHED = (
    "__array_ufunc__",
    "__array__",
    "__float__",
    "item",
    "tolist",
    "max",
    "min",
    "astype",
)


def _astype(general: Callable) -> Callable:
    """``a.astype(dtype, copy=False)``, which the tensor module refuses: a copy has the same
    values (``copy=False`` only allows skipping it)."""

    def astype(self: Any, dtype: Any, *args: Any, copy: bool = True, **kwargs: Any) -> Any:
        return general(self, dtype, *args, **kwargs)

    return astype


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
            proxy = getattr(proxy, part) if part != "random" else _NoRandom(session)
            if proxy is value:  # a submodule the tensor module lacks (numpy.typing) stays
                return value
        return proxy
    if value in TENSOR_VERSIONS:
        return TENSOR_VERSIONS[value]
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
