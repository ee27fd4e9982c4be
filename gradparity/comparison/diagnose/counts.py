"""The counts a quantity could be reduced over, besides the batch size: its features, channels,
elements, a pool's window, a parameter's dimensions. ``reduction_count`` names a factor that
equals one of them; ``structural_constants`` names those a batch-size factor coincides with
(``gradparity.evidence.batch_rerun`` then re-runs at another batch size)."""

from __future__ import annotations

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


def quantity_counts(
    shape: tuple[int, ...],
    kind: str,
    upstream: np.ndarray | None = None,
    param_shape: tuple[int, ...] | None = None,
) -> list[Count]:
    """The counts of a quantity of ``shape`` (leading axis the batch for activations and their
    gradients) that a mean may have divided by: from its shape, its upstream gradient (a pool's
    inputs per output element) and, for "grad", its parameter's shape."""
    counts: list[Count] = []
    if kind == "grad" and param_shape is not None:
        counts += [Count(f"parameter dimension {i}", d, f"the parameter's dimension {i} ({d})")
                   for i, d in enumerate(param_shape)]  # fmt: skip
        if len(param_shape) >= 2:
            size = int(np.prod(param_shape))
            counts.append(Count("elements", size, f"the parameter's number of elements ({size})"))
        return counts
    if kind not in ("grad_input", "output", "other") or len(shape) < 2:
        return counts
    per = {2: [("features", "feature count")], 3: [("channels", "channel count"),
           ("length", "length")], 4: [("channels", "channel count"), ("height", "height"),
           ("width", "width")]}.get(len(shape), [])  # fmt: skip
    counts += [Count(key, d, f"the {name} ({d})") for (key, name), d in zip(per, shape[1:])]
    per_example = int(np.prod(shape[1:]))
    if len(shape) >= 3:
        counts.append(Count("elements per example", per_example,
                            f"the number of elements per example ({per_example})"))  # fmt: skip
    if kind == "grad_input" and upstream is not None and upstream.size:
        total, out = int(np.prod(shape)), int(upstream.size)
        if total % out == 0 and total // out > 1:
            k = total // out
            counts.append(Count("inputs per output element", k,
                                f"the number of inputs per output element ({k}, e.g. a pool "
                                "area)"))  # fmt: skip
    size = int(np.prod(shape))
    counts.append(Count("N x C" if len(shape) == 2 else "elements", size,
                        f"the number of elements, N x C ({size})" if len(shape) == 2
                        else f"the number of elements ({size})"))  # fmt: skip
    return counts


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
    counts = [c for c in quantity_counts(o.shape, ctx.kind, ctx.upstream, ctx.param_shape)
              if c.value >= _MIN_COUNT and c.value != n]  # fmt: skip
    f = _fit_factor(o, r, ctx.tol) if counts else None
    if f is None:
        return None
    hit = next((c for c in counts if _close(f, c.value, ctx.tol)), None)
    inverse = hit is None
    if inverse:
        hit = next((c for c in counts if _close(f, 1 / c.value, ctx.tol)), None)
    if hit is None:
        return None
    k = hit.value
    also = [c.phrase for c in counts if c.value == k and c is not hit]
    detail = {"factor": f, "count_of": hit.count_of, "count": k, "batch_size": int(n),
              "also_equals": also}  # fmt: skip
    what = f"1/{k} of" if inverse else f"{k} times"
    message = (
        f"values are {what} the reference's (factor {_fmt(f)}): a factor of {hit.phrase}, not "
        f"of the batch size ({n})"
    )
    if inverse:
        message += ": ours divides by it where the reference does not"
        fix = f"remove the extra division by {hit.phrase}"
        if hit.count_of == "features":
            message += f" (ours divides by N x C = {n * k} where the reference divides by N = {n})"
            fix += (
                f": a mean over all N x C elements where the reference averages over the batch "
                f"only: divide by the batch size ({n}) alone"
            )
    else:
        message += ": the reference divides by it where ours does not"
        fix = f"divide by {hit.phrase}, as the reference averages over it"
    return Diagnosis(REDUCTION_COUNT, detail, message, fix)
