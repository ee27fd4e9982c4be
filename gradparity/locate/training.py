"""The locator of one training step: a step whose code raised, a loss that is not finite,
and why the first divergent step diverged, most specific explanation first: gradients that
repeat earlier steps (see ``evidence.training_repeats``), a backprop bug localised by
``compare`` on that step's batch and weights, or an optimiser bug (the updates diverge while
the gradients agree)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gradparity.core.address import Kind, kind_of
from gradparity.core.finding import Finding, finding_from_row
from gradparity.core.records import failure_words
from gradparity.core.source import source_of

if TYPE_CHECKING:  # type hints only: they load torch
    from gradparity.core.plan import Context
    from gradparity.core.row import Row
    from gradparity.sides.training_steps import StepResult

REPEAT_LABELS = ("accumulated", "stale")
# The optimiser methods that hold an update's arithmetic, the most specific first: a
# ``step()`` usually loops over the parameters and hands each to one of the others.
UPDATE_METHODS = ("_update", "update", "step")


def _explain(rows: list[Row], localise: Callable[[], list[Finding]]) -> list[Finding]:
    """Why a step diverged, most specific explanation first."""
    bad = [r for r in rows if r.diverged]
    if any(kind_of(r.quantity) in (Kind.LOSS, Kind.GRAD) for r in bad):
        repeats = [r for r in bad if r.diagnosis in REPEAT_LABELS]
        if repeats:
            return [finding_from_row(r, "train") for r in repeats]
        localised = localise()
        if localised:
            return localised
    updates = [r for r in bad if kind_of(r.quantity) in (Kind.PARAM, Kind.STATE)]
    return [finding_from_row(r, "train") for r in (updates or bad)]


@dataclass
class StepLocator:
    """Findings of ``step``; divergences are explained only at the first divergent step
    (``first``). ``localise(ours)``: the root causes ``compare`` finds on this step's batch
    and the weights ours had before the step."""

    step: int
    first: bool
    localise: Callable[[StepResult], list[Finding]]

    def __call__(self, ctx: Context) -> None:
        ours: StepResult = ctx.captures["ours"]
        if ours.error is not None:
            problem, fix = failure_words(ours.error)
            ctx.root_causes.append(
                Finding(
                    "model", "step", "raised", ours.error, step=self.step, mode="train",
                    message=f"step {self.step}: {problem}; {fix}",
                )
            )  # fmt: skip
            return
        if not np.isfinite(ours.loss):
            kind = "both sides" if not np.isfinite(ctx.captures["reference"].loss) else "ours"
            ctx.root_causes.append(
                Finding(
                    "loss", "loss", "nonfinite", {"loss": str(ours.loss)}, step=self.step,
                    mode="train",
                    message=f"step {self.step}: the loss of {kind} is not finite; "
                    "lower the learning rate or look for a log of 0",
                )
            )  # fmt: skip
            return
        if self.first and any(r.diverged for r in ctx.rows):
            found = _explain(ctx.rows, lambda: self.localise(ours))
            for finding in found:
                finding.step = self.step
            ctx.root_causes += found


def defined_method(obj: Any, names: tuple[str, ...]) -> Any:
    """The method of ``obj`` among ``names`` defined by the most derived class of its type
    (the user's override rather than the base class it extends), earlier names first within
    one class; None when no class defines one."""
    for cls in type(obj).__mro__:
        if cls is object:
            break
        for name in names:
            if callable(vars(cls).get(name)):
                return getattr(obj, name)
    return None


def training_sources(
    layers: dict[str, Any], optimizer: Any, code: Callable[[Any, str], Any]
) -> Callable[[Context], None]:
    """A locator giving each root cause of a training report without one the source to read:
    for a parameter update or optimiser state, the optimiser's update method
    (``UPDATE_METHODS``); for gradients that were never cleared (``accumulated``), its
    ``zero_grad``; for another gradient, the layer's code behind it (``code(layer,
    quantity)``, as ``compare`` gives); for the loss value, the loss layer's forward (``layers``
    holds it as "loss"). Steps that raised or a loss that is not finite keep
    none: the message says where to look."""

    def method_for(found: Finding) -> Any:
        kind = kind_of(found.quantity)
        if kind in (Kind.PARAM, Kind.STATE):
            return defined_method(optimizer, UPDATE_METHODS)
        if found.diagnosis == "accumulated":
            return defined_method(optimizer, ("zero_grad",))
        layer = layers.get(found.layer)
        if layer is None or kind not in (Kind.GRAD, Kind.LOSS):
            return None
        return code(layer, "output" if kind == Kind.LOSS else found.quantity)

    def add_sources(ctx: Context) -> None:
        for found in ctx.root_causes:
            method = method_for(found) if found.source is None else None
            if method is not None:
                found.source = source_of(method)

    return add_sources
