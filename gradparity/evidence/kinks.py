"""Evidence plug-in of ``compare(model, "autodiff", ...)``: a gradient that differs only because
the layer's input sits exactly on a kink of its forward.

Where ``np.maximum(0, x)`` meets x == 0, or a max meets tied values, the derivative is not
defined: autograd picks one choice (torch splits a tie between its operands), a hand-written
backward another (the mask ``x > 0`` gives 0), and both are defensible. When the engine met
such a kink in a layer's forward (``ReferenceNotes.kinks``) and the layer's diverging gradient
agrees with the reference once the input is moved off it by a tiny perturbation, the row is a
minor ``tied_maxima`` difference (a ReLU's kink is the tie max(0, 0)), not a root cause.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gradparity.comparison.diff import reference_grad
from gradparity.core.labels import TIED_MAXIMA
from gradparity.core.plan import Context
from gradparity.core.row import Row
from gradparity.evidence.explain import _diverging, _ours_value
from gradparity.sides import run_numpy, run_torch
from gradparity.sides.isolation import Probe
from gradparity.sides.layer_autodiff import ReferenceNotes

_JITTER_SEED = 13  # its own stream, so the run's other random draws stay as they were
_JITTER_RELATIVE = 1e-9  # the step off the kink, relative to the input's largest magnitude


def off_kinks(x: np.ndarray) -> np.ndarray:
    """x moved off exact kinks: plus tiny uniform noise, never 0 (zeros become ±step)."""
    size = _JITTER_RELATIVE * (float(np.abs(x).max()) or 1.0)
    noise = np.random.default_rng(_JITTER_SEED).uniform(0.5, 1.0, size=x.shape)
    sign = np.where(np.random.default_rng(_JITTER_SEED + 1).random(x.shape) < 0.5, -1.0, 1.0)
    return x + (size * noise * sign).astype(x.dtype)


@dataclass
class KinkRerun:
    """Re-probe each diverging gradient of a layer whose forward met a kink, off the kink."""

    notes: ReferenceNotes
    tdtype: torch.dtype

    def __call__(self, ctx: Context) -> None:
        for row, probe in _diverging(ctx):
            if row.layer == "loss" or probe.upstream is None or not self.notes.kinks(row.layer):
                continue
            if self._agrees_off_kink(row, probe, ctx):
                _mark(row)

    def _agrees_off_kink(self, row: Row, probe: Probe, ctx: Context) -> bool:
        x = probe.ref.input
        assert x is not None and probe.upstream is not None  # a layer probe that ran both ways
        moved = off_kinks(x)
        ours = run_numpy.probe_layer(probe.pair.layer, moved, probe.upstream, probe.warm)
        ref = run_torch.probe_module(probe.pair, moved, probe.upstream, self.tdtype)
        mine = _ours_value(ours, row.quantity)
        if mine is None or ours.error is not None:
            return False
        theirs = reference_grad(probe.pair, ref, row.quantity)
        return np.shape(mine) == np.shape(theirs) and ctx.tolerance.matches(mine, theirs)


def _mark(row: Row) -> None:
    row.diagnosis = TIED_MAXIMA
    row.detail["minor"] = {"kink": True}
    row.message = (
        "differs only where the input sits exactly on a kink of the forward (ReLU at 0, tied "
        "maxima), where the derivative is not defined, and agrees once the input moves off "
        "it: autograd's choice there (torch splits a tie) differs from yours"
    )
    row.fix = "nothing to fix unless your data sits on kinks on purpose"
