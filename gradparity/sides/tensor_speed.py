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

import numpy
import torch
import torch._numpy as tnp
from torch._numpy import _binary_ufuncs_impl, _dtypes_impl, _normalizations, _unary_ufuncs_impl


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
    for part in parts:  # plain checks, no generator: this runs on every index of the loops
        if type(part) is slice:
            start, stop, step = part.start, part.stop, part.step
            if not (start is None or type(start) is int):
                return False
            if not (stop is None or type(stop) is int):
                return False
            if not (step is None or (type(step) is int and step > 0)):
                return False
        elif type(part) is not int and part is not None:
            return False
    return True


def _integer_arrays(index: Any) -> Any:
    """``index`` as torch takes it when it is only integer or boolean arrays with at least
    one dim (``a[np.arange(n), y]``): each tensor array as its tensor, a NumPy array as
    itself (the general path hands both over so); None for any other index."""
    parts = index if type(index) is tuple else (index,)
    converted = []
    for part in parts:
        if type(part) is tnp.ndarray:
            part = part.tensor
            if part.dtype not in (torch.int64, torch.bool) or part.dim() == 0:
                return None
        elif not (type(part) is numpy.ndarray and part.dtype in _INDEX_DTYPES and part.ndim):
            return None
        converted.append(part)
    return tuple(converted)


_INDEX_DTYPES = (numpy.dtype(numpy.int64), numpy.dtype(numpy.bool_))


def _fast_getitem(general: Callable) -> Callable:
    def getitem(self: Any, index: Any) -> Any:
        if _basic(index):
            return tnp.ndarray(self.tensor[index])
        arrays = _integer_arrays(index)
        if arrays is not None:
            return tnp.ndarray(self.tensor[arrays])
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


def _fast_inplace(function: Callable, general: Callable) -> Callable:
    """``a += b`` on a float64 array with a float64 array or a Python number: as the general
    path does it (the result computed, then copied into ``a``), without its argument
    handling; a result of another shape goes to ``general`` (which refuses it)."""

    def op(self: Any, other: Any) -> Any:
        a = self.tensor
        if a.dtype is torch.float64:
            if type(other) is tnp.ndarray and other.tensor.dtype is torch.float64:
                result = function(a, other.tensor)
            elif type(other) in (float, int):
                result = function(a, other)
            else:
                return general(self, other)
            if result.shape == a.shape:
                a.copy_(result)
                return self
        return general(self, other)

    return op


_NOT_FAST = object()


def _dims(axis: Any, ndim: int) -> Any:
    """``axis`` of a reduction as torch's non-negative dims (None: every dim), or
    ``_NOT_FAST`` for what the general path should judge (an empty tuple, a repeated or
    out-of-range axis, an axis that is not a plain int)."""
    if axis is None:
        return None
    axes = (axis,) if type(axis) is int else axis
    if type(axes) is not tuple or not axes or not all(type(a) is int for a in axes):
        return _NOT_FAST
    if not all(-ndim <= a < ndim for a in axes):
        return _NOT_FAST
    dims = tuple(a % ndim for a in axes)
    return dims if len(set(dims)) == len(dims) else _NOT_FAST


def _reduce(name: str, tensor: torch.Tensor, dims: Any, keepdims: bool) -> torch.Tensor:
    """The tensor module's reduction ``name`` of a float64 tensor (same torch call)."""
    if name in ("sum", "mean"):
        if dims is None:
            whole = getattr(tensor, name)()
            return whole.expand((1,) * tensor.dim()).contiguous() if keepdims else whole
        return getattr(tensor, name)(dim=dims, keepdim=keepdims)
    every = tuple(range(tensor.dim())) if dims is None else dims
    return getattr(tensor, _TORCH_EXTREMA[name])(every, keepdim=keepdims)


_TORCH_EXTREMA = {"max": "amax", "amax": "amax", "min": "amin", "amin": "amin"}
REDUCTIONS = ("sum", "mean", *_TORCH_EXTREMA)


def fast_reduction(name: str, general: Callable) -> Callable:
    """``np.<name>(a, axis, keepdims=...)`` (or the method ``a.<name>(axis, ...)``) on a
    float64 array, with at most ``axis`` and ``keepdims``: the torch reduction the general
    path ends in; any other call goes to ``general``."""

    def reduction(*args: Any, **kwargs: Any) -> Any:
        if 1 <= len(args) <= 2 and type(args[0]) is tnp.ndarray and kwargs.keys() <= _KEYS:
            tensor, keepdims = args[0].tensor, kwargs.get("keepdims", False)
            if tensor.dtype is torch.float64 and type(keepdims) is bool:
                if len(args) == 2 and "axis" in kwargs:
                    return general(*args, **kwargs)  # NumPy's error: axis given twice
                axis = args[1] if len(args) == 2 else kwargs.get("axis")
                dims = _dims(axis, tensor.dim())
                if dims is not _NOT_FAST:
                    return tnp.ndarray(_reduce(name, tensor, dims, keepdims))
        return general(*args, **kwargs)

    return reduction


_KEYS = {"axis", "keepdims"}


def _float64_arrays(args: tuple, kwargs: dict, count: int) -> bool:
    """Whether the call is ``count`` float64 arrays, positionally, and nothing else."""
    if kwargs or len(args) != count:
        return False
    return all(type(a) is tnp.ndarray and a.tensor.dtype is torch.float64 for a in args)


def fast_ufunc(function: Callable, general: Callable, arity: int) -> Callable:
    """A ufunc (or ``matmul``) called on float64 arrays alone: the torch function the
    general path calls once its casting finds nothing to cast; any other call (a number, a
    dtype, ``out=``) goes to ``general``."""

    def ufunc(*args: Any, **kwargs: Any) -> Any:
        if _float64_arrays(args, kwargs, arity):
            return tnp.ndarray(function(*(a.tensor for a in args)))
        return general(*args, **kwargs)

    return ufunc


UNARY_UFUNCS = ("exp", "log", "tanh", "sqrt", "abs", "absolute", "negative", "square", "log1p")
BINARY_UFUNCS = ("add", "subtract", "multiply", "divide", "true_divide", "maximum", "minimum")


def _build_fast_functions() -> dict[str, Callable]:
    functions = {name: fast_reduction(name, getattr(tnp, name)) for name in REDUCTIONS}
    for names, impl, arity in (
        (UNARY_UFUNCS, _unary_ufuncs_impl, 1),
        (BINARY_UFUNCS, _binary_ufuncs_impl, 2),
    ):
        for name in names:
            functions[name] = fast_ufunc(getattr(impl, name), getattr(tnp, name), arity)
    functions["matmul"] = fast_ufunc(torch.matmul, tnp.matmul, 2)  # type: ignore[attr-defined]
    return functions


def fast_functions() -> dict[str, Callable]:
    """The fast versions of ``torch._numpy``'s functions by NumPy name (``np.sum``)."""
    return _FAST_FUNCTIONS


_BINARY = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
}
_COMPARISONS = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def _fast_methods() -> dict[str, Callable]:
    """The fast methods of the tensor array class by name, each around the original."""
    cls: Any = tnp.ndarray  # the tensor module ships no types for its dunder methods
    methods: dict[str, Any] = {
        "__getitem__": _fast_getitem(cls.__getitem__),
        "__setitem__": _fast_setitem(cls.__setitem__),
    }
    for name, function in {**_BINARY, **_COMPARISONS}.items():
        plain = f"__{name}__"
        methods[plain] = _fast_binary(function, getattr(cls, plain), reflected=False)
    for name, function in _BINARY.items():
        reflected = f"__r{name}__"
        methods[reflected] = _fast_binary(function, getattr(cls, reflected), reflected=True)
        inplace = f"__i{name}__"
        methods[inplace] = _fast_inplace(function, getattr(cls, inplace))
    for name in ("sum", "mean", "max", "min"):
        methods[name] = fast_reduction(name, getattr(cls, name))
    methods["__matmul__"] = fast_ufunc(torch.matmul, cls.__matmul__, 2)
    methods["T"] = property(_transposed)
    methods["__neg__"] = fast_ufunc(torch.neg, cls.__neg__, 1)
    return methods


def _transposed(self: Any) -> Any:
    """``a.T``: the tensor's dims reversed, as ``a.transpose()`` permutes them."""
    return tnp.ndarray(self.tensor.permute(tuple(range(self.tensor.dim() - 1, -1, -1))))


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
    saved: dict[str, Any] = {name: tnp.ndarray.__dict__.get(name) for name in _FAST_METHODS}
    vars(_normalizations)["inspect"] = _CACHED_INSPECT
    for name, method in _FAST_METHODS.items():
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
_FAST_FUNCTIONS = _build_fast_functions()
_FAST_METHODS = _fast_methods()  # built once, around the class's own methods
