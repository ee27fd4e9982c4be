"""Fast paths through ``torch._numpy`` for the autodiff run, where naive-loop NumPy code makes
many calls on small arrays and the tensor module's per-call argument handling dominates.

Each fast path does exactly what the general path does for the cases it takes (float64 arrays,
plain indices, Python scalars) and hands every other case to the general path. ``fast_paths``
installs them for one run and puts the originals back.
"""

from __future__ import annotations

import functools
import inspect
import operator
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch._numpy as tnp
from torch._numpy import _dtypes_impl, _normalizations


class _CachedInspect(types.SimpleNamespace):
    """``inspect`` as ``torch._numpy``'s argument normaliser uses it: it asks for the signature
    of the wrapped function on every call and binds the arguments again to find ``out`` and
    ``keepdims``, which is most of the time a naive-loop network spends in the tensor module.
    Here the signature is cached and binding is a zip of names and values (the function has
    already been called with the same arguments, so they are known to fit)."""


class _Bound:
    def __init__(self, arguments: dict[str, Any]) -> None:
        self.arguments = arguments


class _FastSignature:
    def __init__(self, signature: inspect.Signature) -> None:
        self.parameters = signature.parameters
        self._signature = signature
        kinds = [p.kind for p in signature.parameters.values()]
        self._positional = None
        if inspect.Parameter.VAR_POSITIONAL not in kinds:
            self._positional = [
                n for n, p in signature.parameters.items() if p.kind != p.KEYWORD_ONLY
            ]

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        if self._positional is None or len(args) > len(self._positional):
            return self._signature.bind(*args, **kwargs)
        return _Bound({**dict(zip(self._positional, args, strict=False)), **kwargs})


@functools.cache
def _signature(function: Callable) -> _FastSignature:
    return _FastSignature(inspect.signature(function))


def _cached_inspect() -> _CachedInspect:
    names = {n: getattr(inspect, n) for n in dir(inspect) if not n.startswith("__")}
    return _CachedInspect(**{**names, "signature": _signature})


def _basic(index: Any) -> bool:
    """Whether ``index`` is plain ints, forward slices and ``None``: indexing that torch does
    exactly as NumPy does, without the tensor module's general (and slow) conversion."""
    parts = index if type(index) is tuple else (index,)
    for part in parts:
        if type(part) is slice:
            if not all(type(b) is int or b is None for b in (part.start, part.stop)):
                return False
            if part.step is not None and not (type(part.step) is int and part.step > 0):
                return False
        elif type(part) is not int and part is not None:
            return False
    return True


def _fast_getitem(general: Callable) -> Callable:
    def getitem(self: Any, index: Any) -> Any:
        if _basic(index):
            return tnp.ndarray(self.tensor[index])
        return general(self, index)

    return getitem


def _fast_setitem(general: Callable) -> Callable:
    def setitem(self: Any, index: Any, value: Any) -> None:
        if _basic(index):
            if isinstance(value, tnp.ndarray) and value.tensor.dtype == self.tensor.dtype:
                self.tensor[index] = value.tensor
                return
            if type(value) in (float, int) and self.tensor.dtype.is_floating_point:
                self.tensor[index] = value
                return
        general(self, index, value)

    return setitem


def _fast_binary(function: Callable, general: Callable, reflected: bool) -> Callable:
    """A float64 array with a float64 array or a Python number: torch's operator (NumPy's
    result, same dtype, same broadcasting); anything else goes to ``general``."""

    def op(self: Any, other: Any) -> Any:
        a = self.tensor
        if a.dtype is torch.float64:
            if type(other) is tnp.ndarray and other.tensor.dtype is torch.float64:
                b = other.tensor
            elif type(other) in (float, int):
                b = other
            else:
                return general(self, other)
            return tnp.ndarray(function(b, a) if reflected else function(a, b))
        return general(self, other)

    return op


_BINARY = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
}
_COMPARISONS = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def _fast_methods() -> dict[str, Callable]:
    """The fast methods of the tensor array class by name, each around the original."""
    cls = tnp.ndarray
    methods: dict[str, Callable] = {
        "__getitem__": _fast_getitem(cls.__getitem__),
        "__setitem__": _fast_setitem(cls.__setitem__),
    }
    for name, function in {**_BINARY, **_COMPARISONS}.items():
        plain = f"__{name}__"
        methods[plain] = _fast_binary(function, getattr(cls, plain), reflected=False)
    for name, function in _BINARY.items():
        reflected = f"__r{name}__"
        methods[reflected] = _fast_binary(function, getattr(cls, reflected), reflected=True)
    return methods


def _default_dtypes() -> None:
    """NumPy's default dtypes set in the tensor module's cache when it is empty: it fills the
    cache by importing ``torch._dynamo`` for its config (seconds, once per process), whose
    defaults are these."""
    if _dtypes_impl._default_dtypes is None:
        vars(_dtypes_impl)["_default_dtypes"] = _dtypes_impl.DefaultDTypes(
            float_dtype=torch.float64, complex_dtype=torch.complex128, int_dtype=torch.int64
        )


@contextmanager
def fast_paths() -> Iterator[None]:
    """The fast paths installed on ``torch._numpy`` for the block, the originals put back."""
    _default_dtypes()
    saved_inspect = _normalizations.inspect
    saved: dict[str, Any] = {name: tnp.ndarray.__dict__.get(name) for name in _FAST_NAMES}
    vars(_normalizations)["inspect"] = _CACHED_INSPECT
    for name, method in _fast_methods().items():
        setattr(tnp.ndarray, name, method)
    try:
        yield
    finally:
        vars(_normalizations)["inspect"] = saved_inspect
        for name, original in saved.items():
            if original is None:
                delattr(tnp.ndarray, name)
            else:
                setattr(tnp.ndarray, name, original)


_CACHED_INSPECT = _cached_inspect()
_FAST_NAMES = tuple(_fast_methods())
