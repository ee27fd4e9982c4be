"""Checks every front end runs before anything else: options and input arrays (torch-free).

Each refusal is an ``InputError`` of one line naming the option or array and what to pass
instead. ``gp.compare``, ``compare_function``, ``compare_training``, the assertions and
``gp.lint`` call these, and the command line's ``--seed``, ``--steps``, ``--batch-size``,
``--epochs`` and ``--hidden`` run ``check_seed`` and ``check_count`` as their argparse types
(``--dtype`` offers ``DTYPES``), so one value is refused the same way everywhere.
``quiet_arithmetic`` is the floating-point policy the entry points run under.

Every array or tensor the user hands over (x, targets, validation pairs, gradients returned
by the user's code) becomes NumPy through ``numpy_values``: torch tensors are read without
importing torch, and what cannot be read is a refusal, never torch's own exception.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import numpy as np

from gradparity.core.errors import InputError, describe_error

# The dtypes a comparison runs in; the torch modules derive their torch.dtype from these names.
DTYPES = ("float64", "float32")
_Entry = TypeVar("_Entry", bound=Callable[..., Any])

# Names (a class anywhere in a loss's MRO, or a function's name) of the losses whose targets
# can be checked before a run: softmax cross-entropy (class indices or probabilities) and MSE.
_CLASS_LOSSES = frozenset(
    {
        "SoftmaxCrossEntropy",
        "CrossEntropyLoss",
        "NLLLoss",
        "cross_entropy",
        "default_reference_loss",
    }
)
_SAME_SHAPE_LOSSES = frozenset({"MSE", "MSELoss", "mse_loss"})
_REFUSED_KINDS = {
    "c": "complex: gradparity compares real numbers; pass {what}.real, or the real and "
    "imaginary parts as separate features",
    "O": "made of Python objects: pass a numeric array (np.asarray({what}, dtype=float))",
    "U": "made of strings: pass numbers (np.asarray({what}, dtype=float) converts numeric text)",
    "S": "made of bytes: pass a numeric array",
    "V": "a structured array: pass a plain numeric array",
    "M": "made of datetimes: pass numbers",
    "m": "made of timedeltas: pass numbers",
}


def quiet_arithmetic(entry: _Entry) -> _Entry:
    """Run a public entry point with NumPy's overflow, invalid-value and division warnings
    off. What they would warn about is reported instead: non-finite values in ours are
    findings (``nonfinite``, a loss that is not finite), in the reference a refusal; the
    statistics of values near float64's limit (an x of 1e300) are what could be computed.
    Code that sets its own ``np.errstate`` inside keeps it."""

    @functools.wraps(entry)
    def quietly(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return entry(*args, **kwargs)

    return cast(_Entry, quietly)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def check_tolerance(name: str, value: Any) -> float | None:
    """``rtol``/``atol``: None (the dtype's default) or a finite number >= 0, as a float."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(
            f"{name} must be a number >= 0 (e.g. {name}=1e-7, or None for the dtype's "
            f"default), got {_short(value)}"
        )
    try:
        number, shown = float(value), repr(float(value))
    except OverflowError:  # an integer such as 10**400, beyond any float
        number, shown = math.inf, f"{_short(value)} (beyond any float)"
    if not math.isfinite(number) or number < 0:
        raise InputError(
            f"{name} must be a finite number >= 0 (or None for the dtype's default), got "
            f"{shown}; a NaN, infinite or negative tolerance hides real differences or "
            "invents false ones"
        )
    return number


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed as a plain int: a non-negative Python or NumPy integer (never a bool)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(
            f"{name} must be a non-negative integer (e.g. {name}=0), got {_short(seed)}"
        )
    return int(seed)


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """A whole number of things (steps, batch size, examples, ...), at least ``minimum``, as an
    int."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InputError(f"{name} must be {wanted}, got {_short(value)}")
    return int(value)


def check_mapping(value: Any, name: str, meaning: str) -> dict[str, str] | None:
    """None, or a dict of names to names (``meaning`` says which: "ours layer name: reference
    module name"), as a plain dict."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InputError(f"{name} must be a dict {{{meaning}}} of strings, got {_short(value)}")
    return dict(value)


def check_name(value: Any) -> str | None:
    """The report's model name: None (named after the model) or a string."""
    if value is not None and not isinstance(value, str):
        raise InputError(f"name must be a string (the report's title), got {_short(value)}")
    return value


def check_flag(value: Any, name: str) -> bool:
    """A yes/no option: True or False (also NumPy's), as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {_short(value)}")
    return bool(value)


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        wanted = " or ".join(repr(c) for c in choices)
        raise InputError(f"{name} must be {wanted}, got {_short(value)}")
    return value


def check_dtype(dtype: Any) -> str:
    """The dtype's name, "float64" or "float32" (also given as a NumPy or torch dtype)."""
    name = str(dtype).removeprefix("torch.")
    if dtype is not None and not isinstance(dtype, str):
        with contextlib.suppress(TypeError, ValueError):
            name = np.dtype(dtype).name
    if name not in DTYPES:
        wanted = " or ".join(repr(d) for d in DTYPES)
        raise InputError(f"dtype must be {wanted}, got {_short(dtype)}")
    return name


def check_options(
    dtype: Any, rtol: Any, atol: Any, seed: Any
) -> tuple[str, float | None, float | None, int]:
    """The options every comparison takes, checked together: (dtype, rtol, atol, seed)."""
    return (
        check_dtype(dtype),
        check_tolerance("rtol", rtol),
        check_tolerance("atol", atol),
        check_seed(seed),
    )


def check_finite(name: str, a: np.ndarray) -> None:
    """One-line refusal of an array holding NaN or infinity, naming it and the first index."""
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))
        raise InputError(
            f"{name} holds {len(bad)} non-finite value(s), first at "
            f"{tuple(int(i) for i in bad[0])}; pass finite values"
        )


def _tensor_values(what: str, tensor: Any) -> np.ndarray:
    """A torch tensor's values (detached, on the CPU) as NumPy, without importing torch. A
    floating dtype NumPy has no type for (bfloat16, float8, complex32) is widened to float64
    (complex128), which holds its values exactly."""
    if getattr(tensor, "is_meta", False):
        raise InputError(
            f"{what} is on the meta device (it has no values); pass a tensor with values"
        )
    try:
        try:
            return tensor.numpy(force=True)
        except TypeError:
            if tensor.is_complex():
                return tensor.cdouble().numpy(force=True)
            if tensor.is_floating_point():
                return tensor.double().numpy(force=True)
            raise
    except Exception as exc:
        raise InputError(
            f"{what} is a tensor NumPy cannot read ({describe_error(exc)}); pass a NumPy array "
            "or a dense tensor of a standard dtype"
        ) from exc


def numpy_values(what: str, value: Any) -> np.ndarray:
    """``value`` as a NumPy array, its dtype kept (a torch tensor is detached and read on the
    CPU); anything NumPy cannot make an array of (ragged lists, a meta tensor) is refused."""
    if callable(getattr(value, "detach", None)) and callable(getattr(value, "numpy", None)):
        return _tensor_values(what, value)
    try:
        return np.asarray(value)
    except ValueError as exc:  # NumPy's "inhomogeneous shape" text names no fix
        raise InputError(
            f"{what} is ragged (its rows have different lengths, or numbers mix with lists); "
            "pass a rectangular array: the same number of features in every row"
        ) from exc
    except Exception as exc:
        raise InputError(f"{what} must be a numeric array: {describe_error(exc)}") from exc


def raw_array(what: str, value: Any) -> np.ndarray:
    """``value`` as a NumPy array without changing its dtype (see ``numpy_values``); refused
    when None, empty, ragged or not made of real numbers. Booleans pass (as 0 and 1)."""
    if value is None:
        raise InputError(f"{what} is None; pass an array")
    arr = numpy_values(what, value)
    if arr.dtype.kind in _REFUSED_KINDS:
        raise InputError(f"{what} is {_REFUSED_KINDS[arr.dtype.kind].format(what=what)}")
    if arr.size == 0:
        raise InputError(f"{what} is empty (shape {arr.shape}); pass at least one example")
    return arr


def float_array(what: str, value: Any, dtype: str) -> np.ndarray:
    """``value`` converted to ``dtype``; refused when not finite, naming values beyond the
    dtype's range (1e300 does not fit float32) apart from values that were never finite."""
    arr = raw_array(what, value)
    check_finite(what, arr)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = arr.astype(dtype)
    if not np.isfinite(converted).all():
        raise InputError(
            f"{what} holds values up to {float(np.max(np.abs(arr))):.3g}, beyond {dtype}'s range "
            f"({float(np.finfo(dtype).max):.3g}); pass dtype='float64' or scale {what} down"
        )
    return converted


def prepare_input(x: Any, dtype: str) -> np.ndarray:
    """x as a finite float array of ``dtype``, at least (1, features)."""
    arr = float_array("x", x, dtype)
    if arr.ndim == 0:
        raise InputError(f"x must hold at least one example, got the scalar {arr.item()!r}")
    return arr[None] if arr.ndim == 1 else arr


def prepare_target(target: Any, batch: int, dtype: str) -> np.ndarray:
    """One target per example: integers (class indices) as int64, anything else as a finite
    ``dtype`` array. Whether the classes fit the model is ``class_target``'s to judge, once
    the model's output width is known."""
    if target is None:
        raise InputError(
            "target is None; pass one target per example: integer classes (N,) for the default "
            "softmax cross-entropy, or an array shaped like the output for other losses"
        )
    arr = np.atleast_1d(raw_array("target", target))
    if arr.shape[0] != batch:
        raise InputError(f"target has {arr.shape[0]} rows but x has {batch} examples")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise InputError(
            f"target holds class {int(arr.max())}, beyond any class index; pass classes 0, 1, "
            "..., one per output of the model"
        )
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    return float_array("target", arr, dtype)


def check_parameters(layers: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
    """Ours' parameters, (layer name, its params) pairs: NumPy arrays (or numbers) of finite
    values. A torch tensor is refused: the layer protocol's params are NumPy arrays, and ours'
    NumPy code either fails on a tensor or silently computes in torch instead."""
    for layer, params in layers:
        for key, value in params.items():
            if not isinstance(key, str):
                raise InputError(
                    f"layer {layer!r} has a parameter keyed {key!r} ({type(key).__name__}); "
                    "params must be a dict with string keys ({'W': ..., 'b': ...})"
                )
            what = f"parameter {layer}.{key}"
            if callable(getattr(value, "detach", None)):
                raise InputError(
                    f"{what} is a {type(value).__name__}; ours' params must be NumPy arrays "
                    "(convert with .detach().cpu().numpy())"
                )
            check_real_parameter(what, numpy_values(what, value))


def check_real_parameter(what: str, arr: np.ndarray) -> None:
    """One line for a parameter that is not an array of finite real floats: a complex
    parameter would be compared by its real part alone, an integer one cannot take a step."""
    if arr.dtype.kind == "c":
        raise InputError(
            f"{what} is complex ({arr.dtype}); gradparity compares real-valued parameters: "
            "pass real arrays"
        )
    if arr.dtype.kind != "f":
        raise InputError(
            f"{what} has dtype {arr.dtype}; parameters must be float arrays "
            f"(np.asarray({what.rsplit(' ', 1)[-1]}, dtype=float))"
        )
    check_finite(what, arr)


def _names(loss: Any) -> set[str]:
    return {c.__name__ for c in type(loss).__mro__} | {getattr(loss, "__name__", "")}


def takes_classes(loss: Any) -> bool:
    """True for a loss known to take class indices (softmax cross-entropy on either side)."""
    return bool(_names(loss) & _CLASS_LOSSES)


def takes_same_shape(loss: Any) -> bool:
    """True for a loss known to take a target shaped like the output (MSE on either side)."""
    return bool(_names(loss) & _SAME_SHAPE_LOSSES)


def is_one_hot(target: np.ndarray) -> bool:
    """(N, C) of zeros and ones with a single one per row."""
    return (
        target.ndim == 2
        and bool(np.isin(target, (0, 1)).all())
        and bool((target.sum(axis=1) == 1).all())
    )


def class_target(
    target: np.ndarray,
    width: int,
    dtype: str,
    what: str = "target",
    whole_floats: bool = False,
    source: str = "",
) -> np.ndarray:
    """A target for a softmax cross-entropy over ``width`` classes: integer classes (N,) in
    range as int64 (whole floats kept as they are when ``whole_floats``), or class
    probabilities (N, width) (one-hot included) as ``dtype``. ``source`` names what gives the
    output ("the last layer 'fc2'") when its width, not the target, may be what is wrong."""
    if (
        target.ndim == 2
        and target.shape[1] == width
        and (target.dtype.kind == "f" or is_one_hot(target))
    ):
        if target.dtype.kind == "f" and (target.min() < 0 or target.max() > 1):
            raise InputError(
                f"{what} {target.shape} has values outside [0, 1]; class probabilities lie in "
                f"[0, 1], or pass integer classes of shape ({target.shape[0]},)"
            )
        return target.astype(dtype)
    if target.ndim != 1:
        raise InputError(
            f"{what} has shape {target.shape} for a class loss over {width} classes; pass "
            f"integer classes of shape (N,) or probabilities (N, {width})"
        )
    whole = target.dtype.kind != "f" or bool(np.all(target == np.round(target)))
    if target.dtype.kind == "f" and not (whole and whole_floats):
        fix = f"pass {what}.astype(int)" if whole else "pass integer classes 0, 1, ..."
        raise InputError(
            f"{what} holds float class labels ({target.dtype}); the class loss takes integer "
            f"classes: {fix}"
        )
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= width:
        bad = low if low < 0 else high
        blame_width = source and bad > 0  # too few outputs may be the bug, never too many
        has = f"{source} gives" if blame_width else "the model has"
        also = f", or check the output width of {source}" if blame_width else ""
        raise InputError(
            f"{what} holds class {bad} but {has} {width} outputs (classes 0.."
            f"{width - 1}); pass classes from 0 to {width - 1}{also}"
        )
    return target if target.dtype.kind == "f" else target.astype(np.int64)


def same_shape_target(
    target: np.ndarray, output_shape: tuple[int, ...], what: str = "target"
) -> None:
    """One line for a target of another shape than the output, for a loss that takes a target
    shaped like the output (MSE): NumPy would broadcast the two silently."""
    if target.shape != tuple(output_shape):
        raise InputError(
            f"{what} has shape {target.shape} but the output {tuple(output_shape)}; the MSE loss "
            "takes a target shaped like the output"
        )
