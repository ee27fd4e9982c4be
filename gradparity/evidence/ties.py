"""``tied_maxima``: a pooling layer's input gradient that differs only where maxima are tied.

Max pooling has no derivative where a window's maximum is tied (all-zero windows after a
ReLU): torch routes the window's gradient to one maximum, a hand-written backward that masks
with ``x == max`` routes it to every tied one (or splits it). Both are defensible, yet they
differ. The test, on the input the reference saw, fits only such a difference:

1. the layer reduces its input (fewer output than input elements), as pooling does;
2. every differing input-gradient element sits at a value tied with another value of the same
   sample and channel (a window lies within one);
3. once the ties are broken by a tiny perturbation of the input, both sides agree.

A ReLU whose mask differs only at exact zeros passes 2 and 3 but not 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gradparity.core.labels import MASK_MISSING, TIED_MAXIMA, UNEXPLAINED
from gradparity.core.plan import Context
from gradparity.core.tolerance import Tolerance
from gradparity.evidence.explain import _diverging
from gradparity.sides import run_numpy, run_torch
from gradparity.sides.isolation import Probe

# Labels a tie explanation may replace: what the value tests say when they see the
# gradient land on positions the reference left at zero, or nothing specific.
_REPLACEABLE = (UNEXPLAINED, MASK_MISSING)
_JITTER_EPS = 1e3  # the tie-breaking perturbation, in machine epsilons of the largest |x|
_JITTER_SEED = 12  # its own stream, so the run's other random draws stay as they were


def tied_values(x: np.ndarray) -> np.ndarray:
    """Boolean mask (x's shape): elements whose value occurs again in the same sample and
    channel, i.e. the same ``x[n, c]`` for x of 3 or more dimensions, ``x[n]`` otherwise."""
    groups = x.reshape(x.shape[0], x.shape[1], -1) if x.ndim >= 3 else x.reshape(len(x), 1, -1)
    order = np.argsort(groups, axis=-1, kind="stable")
    ranked = np.take_along_axis(groups, order, axis=-1)
    repeated = ranked[..., 1:] == ranked[..., :-1]
    tied_ranked = np.zeros(ranked.shape, dtype=bool)
    tied_ranked[..., 1:] |= repeated
    tied_ranked[..., :-1] |= repeated
    tied = np.empty_like(tied_ranked)
    np.put_along_axis(tied, order, tied_ranked, axis=-1)
    return tied.reshape(x.shape)


def _break_ties(x: np.ndarray) -> np.ndarray:
    """x plus a tiny random perturbation, the same on both sides: no two values stay equal."""
    size = _JITTER_EPS * float(np.finfo(x.dtype).eps) * (float(np.abs(x).max()) or 1.0)
    noise = np.random.default_rng(_JITTER_SEED).uniform(-1, 1, size=x.shape)
    return x + (size * noise).astype(x.dtype)


def tie_evidence(probe: Probe, tol: Tolerance, tdtype: torch.dtype) -> dict | None:
    """The numbers behind ``tied_maxima`` for a probe whose input gradient differs, or None
    when the test does not fit. Returns {"differing", "tied_inputs", "after_breaking_ties"}."""
    x, out = probe.ref.input, probe.ref.output
    ours, ref = probe.ours.grad_input, probe.ref.grad_input
    if x is None or out is None or ours is None or ref is None or probe.upstream is None:
        return None
    if x.ndim < 2 or out.size >= x.size or np.shape(ours) != x.shape:
        return None
    differing = tol.mismatch(ours, ref)
    tied = tied_values(x)
    if not differing.any() or (differing & ~tied).any():
        return None
    jittered = _break_ties(x)
    ours_after = run_numpy.probe_layer(probe.pair.layer, jittered, probe.upstream, probe.warm)
    ref_after = run_torch.probe_module(probe.pair, jittered, probe.upstream, tdtype)
    ours_grad, ref_grad = ours_after.grad_input, ref_after.grad_input
    if ours_grad is None or ref_grad is None or not tol.matches(ours_grad, ref_grad):
        return None
    return {
        "differing": int(differing.sum()),
        "tied_inputs": int(tied.sum()),
        "after_breaking_ties": "agrees",
    }


@dataclass
class TiedMaxima:
    """Names a pooling layer's input gradient that differs only at tied maxima."""

    tdtype: torch.dtype

    def __call__(self, ctx: Context) -> None:
        for row, probe in _diverging(ctx):
            if row.quantity != "grad_input" or row.layer == "loss":
                continue
            if row.diagnosis not in _REPLACEABLE:
                continue
            found = tie_evidence(probe, ctx.tolerance, self.tdtype)
            if found is None:
                continue
            row.diagnosis = TIED_MAXIMA
            row.detail["ties"] = found
            row.message = (
                f"the input gradient differs only at inputs tied with another value of the "
                f"same sample and channel ({found['differing']} elements), and agrees once the "
                "ties are broken: ours routes a window's gradient to every tied maximum (or "
                "splits it), the reference to one"
            )
            row.fix = (
                "route each window's gradient to one maximum, e.g. the first argmax of the "
                "window as torch does; or leave it if ties cannot occur in your data"
            )
