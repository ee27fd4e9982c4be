"""Forward advice for a layer output whose shape, or element order, differs from the reference's.

A gradient's shape follows from what it differentiates; a forward output's follows from the
layer's configuration, so the advice reads the cause off the two shapes (examples on axis 0,
channels on axis 1, then spatial axes, as torch has them):

- spatial sizes off by one: the output size's rounding mode (``ceil_mode`` in torch,
  ``cover_all`` in chainer);
- spatial sizes off by an even number 2p: padding p on each side;
- channels (or features) differ: the number of filters or units;
- the same number of elements in another shape: an axis order (NHWC against NCHW) or a
  reshape/flatten order;
- the same shape, the same values in another order within each example: a flatten order,
  labelled ``transposed`` with the axes that bring ours to the reference.

Each returns a ``Diagnosis`` or None, never guessing: an axis order is named only when ours
brought to the reference's layout matches it.
"""

from __future__ import annotations

import itertools

import numpy as np

from gradparity.comparison.diagnose.common import Diagnosis, _Context, _shape
from gradparity.core.labels import SHAPE_MISMATCH, TRANSPOSED

# Above this rank the axis orders to try are too many (5! = 120 at rank 6).
_MAX_PERMUTED_NDIM = 6
_AXIS_LETTERS = {3: "NCL", 4: "NCHW", 5: "NCDHW"}
_ROUNDING_FIX = {
    "up": "round the output size down as the reference does, out = (size + 2*pad - k) // "
    "stride + 1 (chainer: cover_all=False), or build the reference with ceil_mode=True",
    "down": "round the output size up as the reference does, out = ceil((size + 2*pad - k) "
    "/ stride) + 1 (chainer: cover_all=True), or build the reference with ceil_mode=False",
}


def forward_shape_mismatch(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    """The cause of a forward output's shape ``o.shape`` != ``r.shape`` read off the shapes;
    None where the shapes say nothing (another rank, another batch size)."""
    detail: dict = {"ours_shape": list(o.shape), "ref_shape": list(r.shape), "layout": "other"}
    head = f"{ctx.noun} has shape {_shape(o.shape)}, the reference {_shape(r.shape)}"
    if o.size == r.size:
        return _axis_order(o, r, ctx, detail, head)
    if o.ndim != r.ndim or o.ndim < 2 or o.shape[0] != r.shape[0]:
        return None
    differ = [i for i in range(1, o.ndim) if o.shape[i] != r.shape[i]]
    if differ == [1]:
        return _channels(o, r, detail, head)
    if 1 not in differ:
        return _spatial(o, r, differ, detail, head)
    return None


def _axis_order(
    o: np.ndarray, r: np.ndarray, ctx: _Context, detail: dict, head: str
) -> Diagnosis | None:
    """Same number of elements, another shape: an axis order that matches, else a reshape."""
    perm = _matching_axis_order(o, r, ctx)
    if perm is not None:
        names = _axis_names(perm, r.ndim)
        detail.update(layout="permuted", values_match=True, cause="axis_order", axes=list(perm))
        return Diagnosis(
            SHAPE_MISMATCH,
            detail,
            f"{head}, the same values with the axes in another order: ours is "
            f"{names[0]} where the reference is {names[1]}",
            f"compute in the reference's layout ({names[1]}), or convert ours' output with "
            f".transpose{tuple(perm)}",
        )
    detail["cause"] = "reshape"
    return Diagnosis(
        SHAPE_MISMATCH,
        detail,
        f"{head}: the same number of elements in another shape",
        f"give the output the reference's shape {_shape(r.shape)}: check the reshape or "
        "flatten (which axes it keeps, in which order) and the layout (NCHW in torch)",
    )


def _matching_axis_order(o: np.ndarray, r: np.ndarray, ctx: _Context) -> tuple[int, ...] | None:
    """The axes of ``o`` (batch axis kept first) whose transpose matches ``r``, if any."""
    if o.ndim != r.ndim or o.ndim > _MAX_PERMUTED_NDIM:
        return None
    for rest in itertools.permutations(range(1, o.ndim)):
        perm = (0, *rest)
        if o.transpose(perm).shape == r.shape and ctx.tol.matches(o.transpose(perm), r):
            return perm
    return None


def _axis_names(perm: tuple[int, ...], ndim: int) -> tuple[str, str]:
    """Ours' and the reference's layouts in letters: NHWC against NCHW at rank 4, N then A, B,
    C... at a rank without conventional names."""
    letters = _AXIS_LETTERS.get(ndim, "N" + "ABCDEFGHIJ"[: ndim - 1])
    ours = [""] * ndim
    for ref_axis, ours_axis in enumerate(perm):
        ours[ours_axis] = letters[ref_axis]
    return "".join(ours), letters


def _channels(o: np.ndarray, r: np.ndarray, detail: dict, head: str) -> Diagnosis:
    ours_n, ref_n = int(o.shape[1]), int(r.shape[1])
    what = "channels" if o.ndim > 2 else "features"
    detail.update(cause=what, ours_count=ours_n, ref_count=ref_n)
    fix = (
        f"give the layer {ref_n} filters (out_channels), as the reference has"
        if o.ndim > 2
        else f"give the layer {ref_n} output units, or check the size flattened into it "
        "(a pooling or convolution upstream)"
    )
    return Diagnosis(SHAPE_MISMATCH, detail, f"{head}: {ours_n} {what}, the reference {ref_n}", fix)


def _spatial(o: np.ndarray, r: np.ndarray, axes: list[int], detail: dict, head: str) -> Diagnosis:
    """Only spatial axes (2 onwards) differ."""
    deltas = [int(o.shape[i]) - int(r.shape[i]) for i in axes]
    detail.update(axes=axes, size_difference=deltas)
    if all(d == 1 for d in deltas) or all(d == -1 for d in deltas):
        rounds = "up" if deltas[0] > 0 else "down"
        detail.update(cause="rounding", ours_rounds=rounds)
        other = "down" if rounds == "up" else "up"
        return Diagnosis(
            SHAPE_MISMATCH,
            detail,
            f"{head}: spatial sizes off by one, so ours rounds the output size {rounds} where "
            f"the reference rounds it {other} (pooling or convolution rounding mode: ceil_mode, "
            "cover_all)",
            _ROUNDING_FIX[rounds],
        )
    if all(d % 2 == 0 and d * deltas[0] > 0 for d in deltas):
        pads = [abs(d) // 2 for d in deltas]
        size, more = ("larger", "more") if deltas[0] > 0 else ("smaller", "less")
        detail.update(cause="padding", padding_difference=pads)
        each = str(pads[0]) if len(set(pads)) == 1 else str(tuple(pads))
        return Diagnosis(
            SHAPE_MISMATCH,
            detail,
            f"{head}: spatial sizes {_shape(tuple(abs(d) for d in deltas))} {size}, as padding "
            f"each side by {each} {more} than the reference makes them",
            f"pad as the reference does: ours pads each side by {each} {more} than the "
            "reference (torch's padding=, chainer's pad=)",
        )
    detail["cause"] = "spatial"
    return Diagnosis(
        SHAPE_MISMATCH,
        detail,
        f"{head}: the spatial sizes differ",
        "use the reference's kernel size, stride, padding and rounding mode: out = (size + "
        "2*pad - k) // stride + 1",
    )


def reordered_output(o: np.ndarray, r: np.ndarray, ctx: _Context) -> Diagnosis | None:
    """Same shape (batch, features): each example's values are the reference's flattened in
    another axis order, e.g. (H, W, C) where torch flattens (C, H, W)."""
    if ctx.kind != "output" or o.ndim != 2 or o.shape[1] < 2:
        return None
    if not ctx.tol.matches(np.sort(o, axis=1), np.sort(r, axis=1)):
        return None
    n, features = o.shape
    for dims in _factorings(features):
        for perm in _orders(len(dims)):
            moved = r.reshape(n, *dims).transpose(0, *(p + 1 for p in perm)).reshape(n, -1)
            if ctx.tol.matches(o, moved):
                return _flatten_order(dims, perm, ctx)
    return None


def _factorings(n: int) -> list[tuple[int, ...]]:
    """Ways to write ``n`` as a product of factors above 1 in order: three (C, H, W) first,
    then two (a (C, H*W) view of the same order also matches, but names fewer axes)."""
    pairs: list[tuple[int, ...]] = [(a, n // a) for a in range(2, n) if n % a == 0]
    triples: list[tuple[int, ...]] = [
        (a, b, rest // b) for a, rest in pairs for b in range(2, rest) if rest % b == 0
    ]
    return triples + pairs


def _orders(ndim: int) -> list[tuple[int, ...]]:
    """The axis orders other than the reference's, channels last (1, 2, 0) first."""
    others = [p for p in itertools.permutations(range(ndim)) if p != tuple(range(ndim))]
    return sorted(others, key=lambda p: p != (*range(1, ndim), 0))


def _flatten_order(dims: tuple[int, ...], perm: tuple[int, ...], ctx: _Context) -> Diagnosis:
    letters = "CHW" if len(dims) == 3 else "AB"
    ref_order = ", ".join(f"{letters[i]}={dims[i]}" for i in range(len(dims)))
    ours_order = ", ".join(letters[p] for p in perm)
    detail = {"cause": "flatten_order", "ref_axes": list(dims), "axes": list(perm)}
    channels_last = len(dims) == 3 and perm == (1, 2, 0)
    why = " (channels last, NHWC)" if channels_last else ""
    return Diagnosis(
        TRANSPOSED,
        detail,
        f"{ctx.noun} has the reference's values in another order: each example is the "
        f"reference's ({ref_order}) flattened in the order ({ours_order}){why}",
        f"flatten in the reference's order ({', '.join(letters[: len(dims)])}): "
        "x.reshape(len(x), -1) on the (N, C, H, W) array, without moving the channels axis",
    )
