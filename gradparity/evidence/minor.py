"""The minor tier: a diverging quantity whose difference is small against the tensor's scale
and smooth (the two sides point the same way) is consistent with a small constant, an epsilon
inside a log or a square root, a variance epsilon or a clipping bound, rather than a bug.

``small_difference`` is the numeric test (on a row's own statistics, any pipeline);
``EpsilonFits`` is the evidence step of ``compare`` that sees each layer's input and fits the
constant's size where the layer's form allows it. A row judged minor carries the label
``epsilon`` and ``detail["minor"]`` (its scale-relative error and any fitted constant); the
locator ``locate.minor`` then lists its finding as minor, not as a root cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradparity.core.labels import EPSILON, SCALED, UNEXPLAINED
from gradparity.core.plan import Context
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.evidence import epsilon_fits
from gradparity.sides.isolation import Probe

# The largest max|ours - reference| / max|reference| a minor difference may have. The minor
# examples measure 6.8e-7 (a loss's log(y + 1e-7)), 5e-6 (batch norm, 2e-5 vs 1e-5) and 1e-5
# (a clip to [1e-5, 1 - 1e-5]); the smallest corpus bug 0.461, 4.6e4 times above the largest
# (benchmarks/minor_margin.py).
MINOR_LIMIT = 1e-4
# The cosine of ours and the reference a minor difference keeps at least: a constant moves
# values a little, it does not turn them.
MINOR_COSINE = 1 - 1e-6
# Labels a minor difference may have been given before its size was looked at: none, or a
# scalar "scaled" by a factor within MINOR_LIMIT of 1.
_OPEN_LABELS = (None, UNEXPLAINED)

# How much larger than the scale-relative error the largest elementwise relative error must be
# for a difference no constant could be fitted to: a constant inside a log, a square root or a
# clip moves some elements relatively more than others, while ours = (1 + e) * reference
# moves them all alike, which is a factor (a learning rate, a scale), not an epsilon.
NONUNIFORM = 1.5

GENERIC_HINT = (
    "differs by {rel:.2g} of the tensor's scale, smoothly (cosine {cos:.8f}): consistent with "
    "a different epsilon or clipping constant; no size could be fitted"
)
GENERIC_FIX = "make the constant the same on both sides if exact parity matters (or run strict)"


def scale_relative(row: Row, tol: Tolerance) -> float | None:
    """max|ours - reference| / max|reference| of ``row``, from its statistics: the allowance
    at the worst element is rtol * (|reference there| + max|reference|) + atol. None when the
    row has no values or the tolerance has no rtol. A row judged by its own float32 budget
    carries its scale in ``detail["float32_budget"]``."""
    if row.max_abs is None or row.allowed_at_worst is None or row.ref_at_worst is None:
        return None
    budget = row.detail.get("float32_budget")
    if budget is not None and budget["scale"] > 0:  # judged by its own budget, not by ``tol``
        return row.max_abs / budget["scale"]
    if tol.rtol <= 0:
        return None
    scale = (row.allowed_at_worst - tol.atol) / tol.rtol - abs(row.ref_at_worst)
    return row.max_abs / scale if scale > 0 else None


def _open(row: Row) -> bool:
    """Whether ``row``'s label leaves room for a small constant."""
    if row.diagnosis in _OPEN_LABELS:
        return True
    factor = row.detail.get("factor")
    return row.diagnosis == SCALED and factor is not None and abs(factor - 1) < MINOR_LIMIT


def small_difference(row: Row, tol: Tolerance) -> float | None:
    """The scale-relative error of a diverging ``row`` that is minor (at most ``MINOR_LIMIT``,
    cosine at least ``MINOR_COSINE``, label unexplained or none); None for any other row."""
    if not row.diverged or not _open(row):
        return None
    if row.cosine is not None and not row.cosine >= MINOR_COSINE:
        return None
    rel = scale_relative(row, tol)
    return rel if rel is not None and rel <= MINOR_LIMIT else None


def uneven(row: Row, rel: float) -> bool:
    """Whether ``row``'s difference changes elements unevenly (largest elementwise relative
    error well above ``rel``, the scale-relative one), as a small constant does and a factor
    does not: the condition for the generic hint, where no constant was fitted."""
    return row.max_rel is not None and row.max_rel > NONUNIFORM * rel


def mark_minor(row: Row, rel: float, message: str, fix: str, **fitted: Any) -> None:
    """Label ``row`` a minor ``epsilon`` difference, with its message and the fitted numbers."""
    row.diagnosis = EPSILON
    row.detail["minor"] = {"scale_relative": rel, **fitted}
    row.message, row.fix = message, fix


def mark_generic(row: Row, rel: float) -> None:
    """A minor difference whose constant could not be fitted: the generic hint."""
    cosine = 1.0 if row.cosine is None else row.cosine
    mark_minor(row, rel, GENERIC_HINT.format(rel=rel, cos=cosine), GENERIC_FIX)


def is_minor(row: Row) -> bool:
    """Whether an evidence step or the locator judged ``row`` minor."""
    return "minor" in row.detail


@dataclass
class EpsilonFits:
    """Evidence step of ``compare``: each small isolate difference gets the constant behind
    it where the layer's form allows a fit (the loss's log epsilon, a normalisation's variance
    epsilon, a clipping bound), checked by recomputing ours' value; the layer's gradient rows
    that are equally small share its output's finding and hint."""

    target: np.ndarray

    def __call__(self, ctx: Context) -> None:
        probes: dict[str, Probe] = ctx.captures["probes"]
        fitted: dict[str, Row] = {}
        for row in ctx.rows_of("isolate"):
            rel = small_difference(row, ctx.tolerance)
            if rel is None or row.follows_forward or row.layer not in probes:
                continue
            if row.quantity == "output" and self._fit(row, rel, probes[row.layer], ctx.tolerance):
                fitted[row.layer] = row
            elif uneven(row, rel):
                mark_generic(row, rel)
        for row in ctx.rows_of("isolate"):
            source = fitted.get(row.layer)
            if source is not None and row is not source and is_minor(row):
                estimate = {
                    k: v for k, v in source.detail["minor"].items() if k != "scale_relative"
                }
                row.detail["minor"].update(estimate)
                row.message = f"follows the output's difference: {source.message}"
                row.fix = source.fix

    def _fit(self, row: Row, rel: float, probe: Probe, tol: Tolerance) -> bool:
        """Fit the constant behind a small output difference; True when one was found."""
        ours, ref = probe.ours.output, probe.ref.output
        if ours is None or ref is None:
            return False
        if row.layer == "loss":
            return _fit_loss(row, rel, probe, self.target, tol)
        return _fit_variance(row, rel, probe, tol) or _fit_clip(row, rel, ours, ref, tol)


def _fit_loss(row: Row, rel: float, probe: Probe, target: np.ndarray, tol: Tolerance) -> bool:
    logits = probe.ref.input
    if logits is None:
        return False
    ours, ref = float(np.asarray(probe.ours.output)), float(np.asarray(probe.ref.output))
    eps = epsilon_fits.loss_epsilon(logits, target, ours, ref, tol)
    if eps is None:
        return False
    mark_minor(
        row,
        rel,
        f"ours' loss is the reference's with an epsilon of about {eps:.2g} inside the log, "
        f"-log(y + {eps:.2g}) (refitted loss matches ours); {rel:.2g} of the loss' value",
        "a harmless guard against log(0); drop it (or clip y instead) if exact parity matters",
        epsilon=eps,
    )
    return True


def _batch_variance(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Per-feature biased variance of ``x`` (features on axis 1) and the axes it runs over."""
    axes = (0, *range(2, x.ndim))
    return np.asarray(x, dtype=np.float64).var(axis=axes), axes


def _fit_variance(row: Row, rel: float, probe: Probe, tol: Tolerance) -> bool:
    module = probe.pair.torch_module
    ref_eps, x = getattr(module, "eps", None), probe.ref.input
    if not isinstance(ref_eps, float) or x is None or x.ndim < 2:
        return False
    variance, axes = _batch_variance(x)
    running = getattr(module, "running_var", None)
    if running is not None and not module.training:  # eval mode divides by running statistics
        variance = running.detach().cpu().numpy()
    if variance.size != x.shape[1]:
        return False
    assert probe.ours.output is not None and probe.ref.output is not None  # checked by _fit
    eps = epsilon_fits.variance_epsilon(
        variance, probe.ours.output, probe.ref.output, ref_eps, axes, tol
    )
    if eps is None:
        return False
    mark_minor(
        row,
        rel,
        f"ours' variance epsilon is about {eps:.2g}, the reference's {ref_eps:.2g} "
        f"(outputs scale by sqrt((var + {ref_eps:.2g}) / (var + {eps:.2g})) per feature); "
        f"{rel:.2g} of the output's scale",
        "use the reference's epsilon if exact parity matters",
        epsilon=eps,
        reference_epsilon=ref_eps,
    )
    return True


def _fit_clip(row: Row, rel: float, ours: np.ndarray, ref: np.ndarray, tol: Tolerance) -> bool:
    bound = epsilon_fits.clip_bound(ours, ref, tol)
    if bound is None:
        return False
    low, high = bound["low"], bound["high"]
    small = (low is not None and abs(low) < epsilon_fits.LARGEST_EPSILON) or (
        high is not None and abs(1 - high) < epsilon_fits.LARGEST_EPSILON
    )
    if not small:
        return False
    words = " and ".join(
        f"{name} {value:.3g}"
        for name, value in (("below", low), ("above", high))
        if value is not None
    )
    mark_minor(
        row,
        rel,
        f"differs only where {bound['side']} sits on a clipping bound ({words}): one side "
        f"clips, the other does not; {rel:.2g} of the tensor's scale",
        "clip on both sides, or on neither, if exact parity matters",
        clip=bound,
    )
    return True
