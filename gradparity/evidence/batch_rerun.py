"""Evidence plug-in of ``compare``: a ``batch_reduction`` re-probed at another batch size.

A factor of N (or 1/N) at batch size N may be another constant that happens to equal N: a
max-pool backward that divides by its pool area 4 at batch size 4, a loss averaged over 4
classes at 4 examples. The isolate probe of each such row is run again, on both sides, with
one more example (the batch's first rows repeated, the same upstream rows): a factor that
follows the batch size (1/(N+1) now) confirms ``batch_reduction``; one that stays at 1/N is
relabelled ``scaled``, naming the constants of the layer that equal it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradparity.comparison.diagnose.values import (
    close_factor,
    coincidence_phrase,
    either,
    fit_factor,
    structural_constants,
)
from gradparity.comparison.diff import reference_grad
from gradparity.core.labels import BATCH_REDUCTION, SCALED
from gradparity.core.plan import Context
from gradparity.core.records import LayerRecord
from gradparity.core.row import Row
from gradparity.evidence.explain import _diverging, _ours_value
from gradparity.sides import run_numpy, run_torch
from gradparity.sides.isolation import Probe

# What a user's layer or loss may raise on a batch of another size; the re-run is then skipped.
_RERUN_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, AssertionError)


@dataclass
class BatchRerun:
    """Re-probe each isolate ``batch_reduction`` at batch size N + 1 (see the module)."""

    tdtype: torch.dtype
    target: np.ndarray
    reference_loss: Any

    def __call__(self, ctx: Context) -> None:
        for row, probe in _diverging(ctx, gradients_only=False):
            if row.diagnosis != BATCH_REDUCTION or row.batch_size is None:
                continue
            if row.quantity == "output" or row.ours_reduction is None:
                continue
            pair = self._rerun(row, probe)
            if pair is not None:
                _judge(row, probe, *pair, ctx)

    def _rerun(self, row: Row, probe: Probe) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(ours, reference) of the row's quantity at batch size N + 1, and N + 1; None when
        the batch cannot be grown or a side fails on it."""
        x = probe.ref.input
        n = row.batch_size
        if x is None or n is None or x.ndim == 0 or x.shape[0] != n:
            return None
        m = n + 1
        idx = np.arange(m) % n
        try:
            if row.layer == "loss":
                target = np.asarray(self.target)
                if target.ndim == 0 or target.shape[0] != n:
                    return None
                ours = run_numpy.probe_loss(probe.pair.layer, x[idx], target[idx], probe.warm[idx])
                ref = run_torch.probe_loss(self.reference_loss, x[idx], target[idx], self.tdtype)
            else:
                if probe.upstream is None or probe.upstream.shape[:1] != (n,):
                    return None
                up = probe.upstream[idx]
                ours = run_numpy.probe_layer(probe.pair.layer, x[idx], up, probe.warm[idx])
                ref = run_torch.probe_module(probe.pair, x[idx], up, self.tdtype)
        except _RERUN_ERRORS:
            return None
        o, r = _value(row.quantity, ours), _reference(row.quantity, probe, ref)
        if o is None or r is None or ours.error or np.shape(o) != np.shape(r):
            return None
        return np.asarray(o, dtype=np.float64), np.asarray(r, dtype=np.float64), m


def _value(quantity: str, rec: LayerRecord) -> np.ndarray | None:
    return rec.output if quantity == "loss" else _ours_value(rec, quantity)


def _reference(quantity: str, probe: Probe, rec: LayerRecord) -> np.ndarray | None:
    return rec.output if quantity == "loss" else reference_grad(probe.pair, rec, quantity)


def _judge(row: Row, probe: Probe, o: np.ndarray, r: np.ndarray, m: int, ctx: Context) -> None:
    """Confirm the row's ``batch_reduction`` or relabel it from the re-run's factor."""
    n = row.batch_size
    assert n is not None
    tol = ctx.tolerance
    factor = float(n) if row.ours_reduction == "sum" else 1.0 / n
    follows = float(m) if row.ours_reduction == "sum" else 1.0 / m
    f = fit_factor(o, r, tol)
    before = _ours_value(probe.ours, row.quantity) if row.quantity != "loss" else None
    shape = np.shape(before) if before is not None else ()
    up = probe.upstream if row.quantity == "grad_input" else None
    kind = "grad" if row.quantity.startswith("grad:") else row.quantity
    constants = structural_constants(shape, n, kind, up, shape if kind == "grad" else None)
    base = row.message.replace(coincidence_phrase(constants, n), "") if constants else row.message
    rerun: dict[str, Any] = {"batch_size": m, "factor": f}
    if f is not None and close_factor(f, follows, tol):
        rerun["verdict"] = "follows the batch size"
        row.detail["batch_rerun"] = rerun
        if constants:
            row.message = (
                f"{base}; re-run at batch size {m} the factor is {_ratio(row, m)}: it is the "
                f"batch size, not {either(constants)}"
            )
    elif f is not None and close_factor(f, factor, tol):
        rerun["verdict"] = "stays: not the batch size"
        row.detail["batch_rerun"] = rerun
        row.detail.pop("ours_reduction", None)
        row.detail.pop("ref_reduction", None)
        row.detail["also_equals"] = constants
        row.diagnosis, row.ours_reduction = SCALED, None
        what = f"{n} times" if factor > 1 else f"1/{n} of"
        other = either(constants) if constants else "a constant of the layer"
        row.message = (
            f"values are {what} the reference's at batch size {n} and still at batch size {m}: "
            f"the factor is not the batch size; it equals {other}"
        )
        row.fix = (
            f"find the extra {'factor' if factor > 1 else 'division'} by {n} ({other}): e.g. a "
            "pool backward that divides by the window area, or a mean over channels or "
            "features where the reference sums"
        )
    else:
        rerun["verdict"] = "inconclusive: the factor at the other batch size is neither"
        row.detail["batch_rerun"] = rerun


def _ratio(row: Row, m: int) -> str:
    return str(m) if row.ours_reduction == "sum" else f"1/{m}"
