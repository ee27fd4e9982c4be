"""``Row``: one compared tensor, the unit of the report table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradparity.core.address import Address
from gradparity.core.status import Status
from gradparity.core.tolerance import element_errors, ratio_to_allowed

# The columns a person reads (renderings pick from these; table.csv has every field).
DISPLAY_COLUMNS = [
    "mode",
    "layer",
    "type",
    "quantity",
    "status",
    "diagnosis",
    "shape_ours",
    "shape_ref",
    "max_abs",
    "max_rel",
    "cosine",
    "mismatch_frac",
    "worst_index",
]
# Typed facts one stage leaves for the next: the pipeline decides on them, and report.json's
# rows leave them out (a finding's ``detail`` shows the ones a reader wants).
PIPELINE_FIELDS = (
    "referee",
    "follows_forward",
    "broadcasts",
    "module",
    "module_index",
    "reference_parameter",
    "batch_size",
    "ours_reduction",
)


@dataclass
class Row:
    """One compared tensor: the unit of the report table (design schema plus extras).

    ``detail`` holds the numbers a reader wants (a diagnosis's factor, an error's message); the
    pipeline never decides on it. It decides on the typed fields after ``detail``:
    ``referee``: the central-difference referee's verdict ("ours", "reference", "both",
    "neither"), None where none ran; ``follows_forward``: ours' backward matches central
    differences of ours' own diverging forward, so this gradient differs only because the
    forward does; ``broadcasts``: right values in a shape an in-place update still takes;
    ``module`` and ``module_index``: a tap's reference module and its position in forward
    order; ``reference_parameter``: the reference's name of the parameter of a gradient row;
    ``batch_size``: the batch size a diverging row was diagnosed with; ``ours_reduction``: for a
    ``batch_reduction``, how ours reduces over the batch ("sum" or "mean").
    """

    mode: str
    layer: str
    type: str
    quantity: str
    shape_ours: list[int] | None
    shape_ref: list[int] | None
    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    mismatch_frac: float | None = None
    worst_index: list[int] | None = None
    ours_at_worst: float | None = None
    ref_at_worst: float | None = None
    allowed_at_worst: float | None = None
    status: Status = Status.OK
    diagnosis: str | None = None
    message: str = ""
    fix: str = ""
    conversion: str = ""
    step: int | None = None  # training: the optimisation step (from 1); None for compare()
    detail: dict = field(default_factory=dict)
    referee: str | None = None
    follows_forward: bool = False
    broadcasts: bool = False
    module: str | None = None
    module_index: int | None = None
    reference_parameter: str | None = None
    batch_size: int | None = None
    ours_reduction: str | None = None

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # a row read back from report.json holds a string

    @property
    def diverged(self) -> bool:
        return self.status != Status.OK

    @property
    def address(self) -> Address:
        """The compared tensor as an ``Address`` (ValueError for a quantity that is none)."""
        return Address.parse(self.quantity, self.layer)

    def error_ratio(self) -> float | None:
        """|ours - reference| at the worst element divided by the error allowed there; None
        when the row has no values (shape mismatch, raised, missing).

        Above 1 means out of tolerance; NaN against a number counts as infinitely far, and equal
        non-finite values as a match (``Tolerance.errors``' rule). An empty tensor gives 0.
        """
        if self.max_abs is None:
            return None
        worst = (self.ours_at_worst, self.ref_at_worst, self.allowed_at_worst)
        if worst[0] is None or worst[1] is None or worst[2] is None or self.max_abs == 0.0:
            return 0.0  # max_abs 0: every error below tensor_diff's noise floor
        error = element_errors(np.float64(worst[0]), np.float64(worst[1]))
        return float(ratio_to_allowed(error, worst[2]))

    def as_dict(self) -> dict:
        """Every field, by name (``Row(**row.as_dict())`` is a copy)."""
        # Shallow on purpose: dataclasses.asdict deep-copies, and reports have 10^4 rows.
        return dict(self.__dict__)

    def as_record(self) -> dict:
        """The fields report.json and table.csv write: all but ``detail`` and the pipeline's
        typed facts."""
        record = self.as_dict()
        for name in ("detail", *PIPELINE_FIELDS):
            del record[name]
        record["status"] = Status(self.status).value  # also for a status set as a plain word
        return record
