"""The diagnosis labels: stable identifiers that report.json writes; ``detail`` carries the
numbers behind each."""

from __future__ import annotations

# Named by the value tests of ``comparison.diagnose`` (shapes agree).
NONFINITE = "nonfinite"
ZERO = "zero"
SIGN_FLIPPED = "sign_flipped"
BATCH_REDUCTION = "batch_reduction"  # off by the batch size or its inverse: mean vs sum
SCALED = "scaled"
TRANSPOSED = "transposed"
MISSING_LOCAL_DERIVATIVE = "missing_local_derivative"  # equals the upstream gradient
# Named by the shape tests of ``comparison.diagnose``.
NOT_REDUCED = "not_reduced"  # an extra batch axis, e.g. a bias gradient not summed
SHAPE_MISMATCH = "shape_mismatch"
# Named by the harness: they need several steps or calls, or the call itself.
ACCUMULATED = "accumulated"  # gradients not zeroed between steps
STALE = "stale"  # equals an earlier step's or call's value
MUTATES_INPUT = "mutates_input"
RAISED = "raised"  # the code threw, or gave a value that cannot be compared
# The last resort, with the error statistics.
UNEXPLAINED = "unexplained"
# A warning, never a divergence: a function returned gradients that share memory.
ALIASED = "aliased"

# Every label a diverging row may carry.
LABELS = (
    TRANSPOSED,
    SIGN_FLIPPED,
    SCALED,
    BATCH_REDUCTION,
    NOT_REDUCED,
    ZERO,
    NONFINITE,
    MISSING_LOCAL_DERIVATIVE,
    ACCUMULATED,
    STALE,
    SHAPE_MISMATCH,
    MUTATES_INPUT,
    RAISED,
    UNEXPLAINED,
)
