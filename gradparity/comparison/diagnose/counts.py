"""The counts a quantity could be reduced over, besides the batch size: its features, channels,
elements, a pool's window, a parameter's dimensions. ``reduction_count`` names a factor that
equals one of them; ``structural_constants`` names those a batch-size factor coincides with
(``gradparity.evidence.batch_rerun`` then re-runs at another batch size)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradparity.comparison.diagnose.common import Diagnosis, _close, _Context, _fit_factor, _fmt
from gradparity.core.labels import REDUCTION_COUNT


@dataclass(frozen=True)
class Count:
    """One count of a quantity: ``count_of`` names it in ``detail``, ``phrase`` in words."""

    count_of: str
    value: int
    phrase: str


# Counts below this are not named: a factor of 2 is far more often the 2 of d(x**2)/dx, or a
# term counted twice, than a mean over two features.
_MIN_COUNT = 3
_WHOLE = ("N x C", "elements")


# The per-example axes of an activation (or its gradient) by rank: (count_of, noun).
_AXES = {
    2: [("features", "feature count")],
    3: [("channels", "channel count"), ("length", "length")],
    4: [("channels", "channel count"), ("height", "height"), ("width", "width")],
}


def quantity_counts(
    shape: tuple[int, ...],
    kind: str,
    upstream: np.ndarray | None = None,
    param_shape: tuple[int, ...] | None = None,
) -> list[Count]:
    """The counts of a quantity of ``shape`` (leading axis the batch for activations and their
    gradients) that a mean may have divided by: from its shape, its upstream gradient (a pool's
    inputs per output element) and, for "grad", its parameter's shape."""
    if kind == "grad":
        return [] if param_shape is None else _parameter_counts(tuple(param_shape))
    if kind not in ("grad_input", "output", "other") or len(shape) < 2:
        return []
    return _batched_counts(shape, upstream if kind == "grad_input" else None)


def _parameter_counts(param_shape: tuple[int, ...]) -> list[Count]:
    counts = [
        Count(f"parameter dimension {i}", d, f"the parameter's dimension {i} ({d})")
        for i, d in enumerate(param_shape)
    ]
    if len(param_shape) >= 2:
        size = math.prod(param_shape)
        counts.append(Count("elements", size, f"the parameter's number of elements ({size})"))
    return counts


def _batched_counts(shape: tuple[int, ...], upstream: np.ndarray | None) -> list[Count]:
    axes = _AXES.get(len(shape), [])
    counts = [Count(key, d, f"the {noun} ({d})") for (key, noun), d in zip(axes, shape[1:])]
    per_example, size = math.prod(shape[1:]), math.prod(shape)
    if len(shape) >= 3:
        phrase = f"the number of elements per example ({per_example})"
        counts.append(Count("elements per example", per_example, phrase))
    if upstream is not None and upstream.size and size % upstream.size == 0:
        k = size // upstream.size
        if k > 1:
            phrase = f"the number of inputs per output element ({k}, e.g. a pool area)"
            counts.append(Count("inputs per output element", k, phrase))
    if len(shape) == 2:
        return [*counts, Count("N x C", size, f"the number of elements, N x C ({size})")]
    return [*counts, Count("elements", size, f"the number of elements ({size})")]


def structural_constants(
    shape: tuple[int, ...],
    n: int,
    kind: str,
    upstream: np.ndarray | None = None,
    param_shape: tuple[int, ...] | None = None,
) -> list[str]:
    """The layer's constants besides the batch size that equal ``n``, as phrases ("the
    channel count (4)"), from the quantity's shape, its upstream gradient and its parameter's
    shape: a factor of n may come from any of them."""
    if kind not in ("grad_input", "output", "grad"):
        return []
    counts = quantity_counts(shape, kind, upstream, param_shape)
    # A whole quantity's size holds more than one of the layer's constants.
    return [c.phrase for c in counts if c.value == n and c.count_of not in _WHOLE]


def either(phrases: list[str]) -> str:
    """ "a", "a or b", "a, b or c"."""
    return (
        " or ".join([", ".join(phrases[:-1]), phrases[-1]])
        if len(phrases) > 1
        else "".join(phrases)
    )


def coincidence_phrase(constants: list[str], n: int) -> str:
    """The message's note that a factor of ``n`` may be another constant than the batch size."""
    return (
        f"; the factor also equals {either(constants)}, not only the batch size: only a run "
        "at another batch size tells which"
    )


def reduction_count(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    """Ours is c times, or 1/c of, the reference for c a count of the quantity other than the
    batch size (which ``_batch_reduction`` tests first): a mean over another count."""
    n = ctx.batch_size
    if n is None or o.size == 1 or ctx.kind in ("param", "state", "loss"):
        return None
    counts = [
        c
        for c in quantity_counts(o.shape, ctx.kind, ctx.upstream, ctx.param_shape)
        if c.value >= _MIN_COUNT and c.value != n
    ]
    f = _fit_factor(o, r, ctx.tol) if counts else None
    found = None if f is None else _matching_count(f, counts, ctx)
    if f is None or found is None:
        return None
    hit, inverse = found
    detail = {
        "factor": f,
        "count_of": hit.count_of,
        "count": hit.value,
        "batch_size": int(n),
        "also_equals": [c.phrase for c in counts if c.value == hit.value and c is not hit],
    }
    return Diagnosis(REDUCTION_COUNT, detail, *_reduction_words(hit, inverse, f, n))


def _matching_count(f: float, counts: list[Count], ctx: _Context) -> tuple[Count, bool] | None:
    """(the first count the factor equals, whether it is its inverse), or None."""
    for inverse in (False, True):
        for c in counts:
            if _close(f, 1 / c.value if inverse else c.value, ctx.tol):
                return c, inverse
    return None


def _reduction_words(hit: Count, inverse: bool, f: float, n: int) -> tuple[str, str]:
    """(message, fix) of a factor of ``hit`` (1/count when ``inverse``) at batch size ``n``."""
    k = hit.value
    message = (
        f"values are {f'1/{k} of' if inverse else f'{k} times'} the reference's (factor "
        f"{_fmt(f)}), a factor of {hit.phrase}, not the batch size ({n})"
    )
    if not inverse:
        return (
            message + ": the reference divides by it where ours does not",
            f"divide by {hit.phrase}, as the reference averages over it",
        )
    message += ": ours divides by it where the reference does not"
    fix = f"remove the extra division by {hit.phrase}"
    if hit.count_of == "features":  # the common case: a mean over every element of (N, C)
        message += f" (e.g. by N x C = {n * k} where the reference divides by N = {n})"
        fix += f": for a mean over the batch, divide by the batch size ({n}) alone, not by N x C"
    return message, fix
