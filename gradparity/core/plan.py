"""The plain data that travels between the engine's stages.

A front end fills a ``Plan``; each stage is a callable stored in it, so a new kind of side,
evidence or locator is one new function registered in a plan, not an edit of the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradparity.core.finding import Finding
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance

# What the sides recorded, by name ("ours_chain", "probes", ...): each side adds its records
# and may read those of the sides run before it (the isolate run needs the reference's inputs).
# Notes a side leaves under "notes" open the report's notes, after the plan's; a Tolerance it
# leaves under "tolerance" replaces the plan's for the stages (training's float32 shadow
# widens it by the reference's own drift).
Captures = dict[str, Any]
Side = Callable[[Captures], None]


@dataclass
class TensorPair:
    """One tensor to compare: where it is (mode, layer, type, quantity), ours' value and the
    reference's value already in ours' layout, and what the compare step needs to name a
    divergence (batch size, the upstream gradient fed to backward, the parameter's shape, the
    layout conversion)."""

    mode: str
    layer: str
    type_name: str
    quantity: str
    ours: np.ndarray | None  # None: ours never produced it
    reference: np.ndarray
    batch_size: int | None = None
    upstream: np.ndarray | None = None
    param_shape: tuple[int, ...] | None = None
    conversion: str = ""  # the layout, for the diagnosis' wording
    shown_conversion: str | None = None  # the row's conversion column, when not ``conversion``
    detail: dict = field(default_factory=dict)  # added to the row's detail after comparing
    module: str | None = None  # a tap's reference module (Row.module)
    module_index: int | None = None  # its position in the reference's forward order
    reference_parameter: str | None = None  # the reference's name of a gradient's parameter
    step: int | None = None
    keep_arrays: bool = False  # keep ours' and the reference's value for the report's plots
    # The row's own tolerance, where it is not the run's (a float32 budget measured for it).
    tolerance: Tolerance | None = None


# A pairing step's output, in report order: a tensor pair to compare, or a row already judged
# (code that raised, a gradient never recorded), which the compare step passes through.
Entry = TensorPair | Row
Pairing = Callable[[Captures], list[Entry]]


@dataclass
class Context:
    """Everything the stages after the compare step read and add to: the rows (in report
    order), the captures, the values behind rows (for plots), notes, findings, and report
    fields a stage sets (``first_divergence``, ``unmapped_taps``, ...)."""

    plan: Plan
    captures: Captures
    rows: list[Row]
    tolerance: Tolerance  # the plan's, or what a side widened it to for this run
    arrays: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    root_causes: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    # The row an evidence step is examining, and those it is done with (by id): when the step
    # raises, the engine notes the error on that row and runs the step again past them.
    probing: Row | None = None
    probed: set[int] = field(default_factory=set)

    @property
    def rng(self) -> np.random.Generator:
        return self.plan.rng

    def rows_of(self, mode: str) -> list[Row]:
        """The rows of one mode ("chain", "isolate", ...), in report order."""
        return [r for r in self.rows if r.mode == mode]

    def each_probed(self, rows: Iterable[Row]) -> Iterator[Row]:
        """``rows`` for an evidence step to examine one at a time, less those it is done with;
        an error while one is examined is pinned to that row (see ``engine.guard``)."""
        for row in rows:
            if id(row) in self.probed:
                continue
            self.probing = row
            yield row
            self.probed.add(id(row))  # reached only once the step is done with the row
        self.probing = None


# Evidence adds to rows (detail, a sharper diagnosis), arrays and notes; a locator sets row
# statuses and adds root causes and warnings. Both run in the order the plan lists them.
Evidence = Callable[[Context], None]
Locator = Callable[[Context], None]


@dataclass
class Plan:
    """One comparison, ready to run: what it is (name, dtype, tolerance, seed, batch size), the
    stages that run it, and what its report carries besides their results (``meta`` after the
    common block, ``notes`` before the stages' notes, ``fields`` for the report type)."""

    name: str
    dtype: str
    tolerance: Tolerance
    seed: int
    batch_size: int | None
    rng: np.random.Generator
    sides: Sequence[Side]
    pair: Pairing
    evidence: Sequence[Evidence] = ()
    locators: Sequence[Locator] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    report_type: type | None = None  # a Report subclass to build; None: Report itself
    # Diagnose a diverging chain row only where the locate stage can name it (the chain's
    # first divergence, or a place that also diverges alone): the rest are inherited, and a
    # diagnosis tries dozens of hypotheses on each.
    lazy_chain_diagnosis: bool = False
