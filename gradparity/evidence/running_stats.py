"""Why a running statistic differs (``buffer:<name>`` rows): ours updates it with another
momentum (``running_momentum``: often the Keras/chainer convention, where 0.9 weighs the old
average, read as torch's momentum, which weighs the new batch), or with the batch variance
divided by N where torch's running_var divides by N - 1 (``biased_running_var``)."""

from __future__ import annotations

import numpy as np
from torch import nn

from gradparity.core.labels import BIASED_RUNNING_VAR, RUNNING_MOMENTUM
from gradparity.core.plan import Context
from gradparity.core.records import LayerRecord
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance

# How far a fitted momentum may be from the reference's and still count as the same.
_SAME_MOMENTUM = 1e-6


def batch_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of ``x`` (N, C, ...) as batch norm takes them: "mean", "var"
    (divided by the count less one, what torch's running_var uses) and "biased_var"."""
    axes = (0, *range(2, x.ndim))
    x = np.asarray(x, dtype=np.float64)
    count = x.size // x.shape[1]
    biased = x.var(axis=axes)
    return {
        "mean": x.mean(axis=axes),
        "var": biased * count / max(count - 1, 1),
        "biased_var": biased,
    }


def fitted_momentum(
    ours: np.ndarray, before: np.ndarray, stat: np.ndarray, tol: Tolerance
) -> float | None:
    """The m with ``ours`` matching (1 - m) * before + m * stat under ``tol`` (least
    squares), else None. All three arrays: one shape."""
    step = stat - before
    norm = float(np.vdot(step, step))
    if norm == 0.0:
        return None
    m = float(np.vdot(ours - before, step)) / norm
    return m if tol.matches(ours, before + m * step) else None


def _explain(
    row: Row, ours: np.ndarray, ref_input: np.ndarray, module: nn.Module, tol: Tolerance
) -> None:
    """Relabel ``row`` when a wrong momentum or a biased variance reproduces ours."""
    torch_name = row.reference_parameter or ""
    momentum = getattr(module, "momentum", None)
    buffer = getattr(module, torch_name, None)
    if not isinstance(momentum, float) or buffer is None or ref_input.ndim < 2:
        return
    before = buffer.detach().cpu().numpy().astype(np.float64).reshape(ours.shape)
    stats = batch_statistics(ref_input)
    kinds = ["var", "biased_var"] if torch_name == "running_var" else ["mean"]
    for kind in kinds:
        if stats[kind].size != ours.size:
            return
        m = fitted_momentum(ours.astype(np.float64), before, stats[kind].reshape(ours.shape), tol)
        if m is None or (kind != "biased_var" and abs(m - momentum) <= _SAME_MOMENTUM):
            continue
        _label(row, kind == "biased_var", m, momentum)
        return


def _label(row: Row, biased: bool, m: float, momentum: float) -> None:
    name = row.address.name
    row.detail.update(momentum=m, reference_momentum=momentum)
    rule = f"running = (1 - {momentum:.3g}) * running + {momentum:.3g} * batch statistic"
    if biased:
        row.diagnosis = BIASED_RUNNING_VAR
        row.message = (
            f"ours updates {name} with the batch variance divided by N (biased); torch's "
            "running_var takes it divided by N - 1 (unbiased), while normalising uses the "
            "biased one"
        )
        row.fix = f"update {name} with x.var(axis=..., ddof=1): {rule}"
        if abs(m - momentum) > _SAME_MOMENTUM:
            row.message += f", and with momentum {m:.3g} instead of {momentum:.3g}"
        return
    row.diagnosis = RUNNING_MOMENTUM
    inverted = abs(m - (1 - momentum)) <= _SAME_MOMENTUM
    row.message = (
        f"ours updates {name} with momentum {m:.3g} (the new batch's weight); the reference's "
        f"is {momentum:.3g}"
        + (
            ": the convention is inverted (Keras and chainer's decay weighs the old average, "
            "torch's momentum the new batch)"
            if inverted
            else ""
        )
    )
    row.fix = f"update as {rule}"


def _records(ctx: Context, mode: str, layer: str) -> tuple[LayerRecord, LayerRecord] | None:
    if mode == "isolate":
        probe = ctx.captures["probes"][layer]
        return probe.ours, probe.ref
    ours, ref = ctx.captures["ours_chain"].get(layer), ctx.captures["reference_chain"][layer]
    return (ours, ref) if ours is not None else None


def running_stats_probe(ctx: Context) -> None:
    """``compare``'s evidence step: each diverging ``buffer:<name>`` row (both modes) that a
    wrong momentum or a biased batch variance reproduces is relabelled; isolate rows keep
    their values for the report's plots."""
    probes = ctx.captures["probes"]
    for row in ctx.rows:
        if not row.diverged or not row.quantity.startswith("buffer:") or row.shape_ours is None:
            continue
        records = _records(ctx, row.mode, row.layer)
        name = row.address.name
        if records is None or name is None:
            continue
        ours, ref = records
        mine, theirs = ours.buffers.get(name), ref.buffers.get(row.reference_parameter or "")
        if mine is None or theirs is None or ref.input is None:
            continue
        if row.mode == "isolate":
            values = {"ours": mine, "reference": theirs.reshape(mine.shape)}
            ctx.arrays[(row.layer, row.quantity)] = values
        _explain(row, mine, ref.input, probes[row.layer].pair.torch_module, ctx.tolerance)
