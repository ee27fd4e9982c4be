"""Option objects: the keyword arguments of ``compare``, ``compare_function`` and
``compare_training`` grouped by what they are about, to build once and pass to any of them.

Each group is a frozen dataclass whose fields default to None ("not given"), passed as one
keyword named after it: ``tolerances=``, ``reference_inputs=``, ``maps=``, ``training=``.
Numbers, maps and callables are checked when the object is built, by the rules and in the
words of their keyword arguments (``core.validate``); arrays and optimisers, whose checks need
the comparison's dtype and models, when the comparison runs, as the keyword arguments are. The
plain keyword arguments keep working (None counts as not given); a value given both ways is
refused in one line, and so is a field the entry point does not take (``Maps(tap_map=...)``
in ``compare``). Torch-free.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

from gradparity.core.errors import InputError
from gradparity.core.validate import check_count, check_mapping, check_tolerance

_Entry = TypeVar("_Entry", bound=Callable[..., Any])

# What each map pairs, as the keyword arguments' refusals word it.
MAP_MEANINGS = {
    "layer_map": "ours layer name: reference module name",
    "param_map": "ours name: reference parameter name",
    "tap_map": "tap name: 'MODULE' or 'grad:MODULE'",
}


def _set(group: object, field: str, value: Any) -> None:
    object.__setattr__(group, field, value)  # a frozen dataclass normalising its own field


class OptionGroup:
    """A group of keyword arguments; ``KEYWORDS``: each field -> the keyword it stands for."""

    KEYWORDS: ClassVar[dict[str, str]]

    def given(self) -> dict[str, Any]:
        """keyword -> value for every field that is set (not None)."""
        values = {keyword: getattr(self, field) for field, keyword in self.KEYWORDS.items()}
        return {keyword: value for keyword, value in values.items() if value is not None}


@dataclass(frozen=True)
class Tolerances(OptionGroup):
    """How close is close enough: ``rtol`` and ``atol`` of the mismatch rule (see
    ``gp.Tolerance``), finite numbers >= 0; None keeps the dtype's default."""

    KEYWORDS: ClassVar[dict[str, str]] = {"rtol": "rtol", "atol": "atol"}

    rtol: float | None = None
    atol: float | None = None

    def __post_init__(self) -> None:
        _set(self, "rtol", check_tolerance("rtol", self.rtol))
        _set(self, "atol", check_tolerance("atol", self.atol))


@dataclass(frozen=True, eq=False)  # equality by identity: == on arrays has no single answer
class ReferenceInputs(OptionGroup):
    """What the reference side gets where it differs from ours: ``loss(output, target)`` ->
    scalar tensor (``reference_loss``), and, in ``compare_function`` only, its input ``x`` and
    ``target`` (``reference_x``, ``reference_target``: e.g. x.T when ours holds examples as
    columns)."""

    KEYWORDS: ClassVar[dict[str, str]] = {
        "x": "reference_x",
        "target": "reference_target",
        "loss": "reference_loss",
    }

    x: Any = None
    target: Any = None
    loss: Callable | None = None

    def __post_init__(self) -> None:
        if self.loss is not None and not callable(self.loss):
            raise InputError("reference_loss must be callable(output, target) -> scalar tensor")


@dataclass(frozen=True)
class Maps(OptionGroup):
    """Pairings that names and order cannot tell: ``layer_map`` {ours layer: reference module}
    (``compare``, ``compare_training``); ``param_map`` {ours parameter: reference parameter}
    and ``tap_map`` {tap: "MODULE" | "grad:MODULE" | "MODULE@k"} (``compare_function``)."""

    KEYWORDS: ClassVar[dict[str, str]] = {n: n for n in MAP_MEANINGS}

    layer_map: dict[str, str] | None = None
    param_map: dict[str, str] | None = None
    tap_map: dict[str, str] | None = None

    def __post_init__(self) -> None:
        for name, meaning in MAP_MEANINGS.items():
            _set(self, name, check_mapping(getattr(self, name), name, meaning))


@dataclass(frozen=True, eq=False)  # equality by identity: == on arrays has no single answer
class TrainingOptions(OptionGroup):
    """The loop of ``compare_training``: both optimisers (instances or factories; neither
    given: plain SGD, lr 0.1, on both sides), ``steps`` (a cap on the batches),
    ``validation`` (x, y) scored every ``eval_every`` steps (None: 10), and ``progress``
    (callable(iterable) -> iterable, e.g. tqdm)."""

    KEYWORDS: ClassVar[dict[str, str]] = {
        n: n
        for n in (
            "ours_optimizer",
            "reference_optimizer",
            "steps",
            "validation",
            "eval_every",
            "progress",
        )
    }

    ours_optimizer: Any = None
    reference_optimizer: Any = None
    steps: int | None = None
    validation: tuple[Any, Any] | None = None
    eval_every: int | None = None
    progress: Callable | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every"):
            if getattr(self, name) is not None:
                _set(self, name, check_count(getattr(self, name), name))
        if self.progress is not None and not callable(self.progress):
            raise InputError(
                f"progress must be callable(iterable) -> iterable, got {self.progress!r}"
            )


GROUPS: dict[str, type[OptionGroup]] = {
    "tolerances": Tolerances,
    "reference_inputs": ReferenceInputs,
    "maps": Maps,
    "training": TrainingOptions,
}


def with_options(entry: _Entry) -> _Entry:
    """Let ``entry`` take option objects: each keyword of ``entry`` named in ``GROUPS``
    (``tolerances=Tolerances(...)``, ...) is spread into the keyword arguments its fields
    stand for before ``entry`` runs, which then sees those keywords None.

    One line refuses an object of the wrong type, a field ``entry`` does not take, and a
    value given both as an argument (other than None) and in an object. A call that does not
    fit ``entry``'s signature is left to ``entry`` itself, for Python's own error.
    """
    signature = inspect.signature(entry)
    keywords = [name for name in signature.parameters if name in GROUPS]

    @functools.wraps(entry)
    def spread(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return entry(*args, **kwargs)
        for keyword in keywords:
            group = bound.arguments.pop(keyword, None)
            if group is not None:
                _spread(entry.__name__, keyword, group, bound.arguments, signature)
        return entry(*bound.args, **bound.kwargs)

    return cast(_Entry, spread)


def _spread(
    entry: str,
    keyword: str,
    group: Any,
    arguments: dict[str, Any],
    signature: inspect.Signature,
) -> None:
    """Put ``group``'s set fields into ``arguments`` (those given to ``entry``)."""
    kind = GROUPS[keyword]
    if not isinstance(group, kind):
        raise InputError(
            f"{keyword} must be a gradparity.{kind.__name__}(...), got {type(group).__name__}"
        )
    for name, value in group.given().items():
        if name not in signature.parameters:
            field = next(f for f, k in kind.KEYWORDS.items() if k == name)
            raise InputError(f"{entry} takes no {name}; leave {kind.__name__}.{field} unset")
        if arguments.get(name) is not None:
            raise InputError(
                f"{name} is given twice, as {name}= and in {keyword}={kind.__name__}(...); "
                "give it once"
            )
        arguments[name] = value
