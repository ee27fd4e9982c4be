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
# Named by the value and evidence tests added for issue 12 (each with a numeric test).
WEIGHT_DECAY = "weight_decay"  # ours minus the reference is c times the parameter itself
MASK_MISSING = "mask_missing"  # differs only where the reference is exactly 0
MASK_INVERTED = "mask_inverted"  # zero patterns of the two sides are complementary
EPSILON = "epsilon"  # minor: consistent with a small constant (log, sqrt, variance epsilon)
REDUCTION_COUNT = "reduction_count"  # factor is a count (elements, features, N x C), not N
TIED_MAXIMA = "tied_maxima"  # differs only in pooling windows whose maximum is tied
UPSTREAM_IGNORED = "upstream_ignored"  # the local derivative alone, upstream not multiplied in
ELEMENTWISE_DERIVATIVE = "elementwise_derivative"  # diagonal Jacobians whose diagonals differ
MISSING_CROSS_TERMS = "missing_cross_terms"  # ours' Jacobian lacks the off-diagonal terms
EXTRA_ACTIVATION_DERIVATIVE = "extra_activation_derivative"  # s (1 - s) multiplied in again
GRADIENT_WRT_PROBABILITIES = "gradient_wrt_probabilities"  # dL/dp returned where dL/dz belongs
KRONECKER_INVERTED = "kronecker_inverted"  # a Jacobian's delta_ij written as 1 - delta_ij
NO_EFFECT = "no_effect"  # minor: a tap differs but nothing downstream of it does
# Named for running statistics (issue 14): the update's momentum, or a biased batch variance.
RUNNING_MOMENTUM = "running_momentum"  # ours = (1 - m') old + m' batch with m' != momentum
BIASED_RUNNING_VAR = "biased_running_var"  # the batch variance divided by N, not N - 1
# Named by the structure tests of the layers of issue 15 (``evidence.structure_labels``).
SKIP_PATH_MISSING = "skip_path_missing"  # ours + the upstream gradient is the reference
MISSING_MEAN_TERM = "missing_mean_term"  # ours less its own mean (batch or feature) is it
REPEATS_OVERWRITTEN = "repeats_overwritten"  # a repeated index's row keeps one occurrence
FLIPPED_KERNEL = "flipped_kernel"  # the reference's gradient with the kernel flipped 180 deg
PADDING_NOT_REMOVED = "padding_not_removed"  # the padded input's gradient cut at its corner
STRIDE_IGNORED = "stride_ignored"  # grad_out laid on the input grid at stride 1
TRUNCATED_BPTT = "truncated_bptt"  # backprop through time cut after one step
GATE_DERIVATIVE = "gate_derivative"  # one LSTM gate's rows of the input weight gradient differ
# The last resort, with the error statistics.
UNEXPLAINED = "unexplained"
# A warning, never a divergence: a function returned gradients that share memory.
ALIASED = "aliased"
# A warning: ours' layer states a mode (train/eval) other than its reference module's.
MODE_MISMATCH = "mode_mismatch"
# A warning: ours' dropout layer draws a mask it neither takes nor keeps, so no mask is shared.
DROPOUT_MASK_UNSHARED = "dropout_mask_unshared"
# A warning: a dropout module called several times in one forward applies one mask at every
# call (the same on both sides), where torch draws one per call.
DROPOUT_CALLS_SHARE_MASK = "dropout_calls_share_mask"

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
    WEIGHT_DECAY,
    MASK_MISSING,
    MASK_INVERTED,
    EPSILON,
    REDUCTION_COUNT,
    TIED_MAXIMA,
    UPSTREAM_IGNORED,
    ELEMENTWISE_DERIVATIVE,
    MISSING_CROSS_TERMS,
    EXTRA_ACTIVATION_DERIVATIVE,
    GRADIENT_WRT_PROBABILITIES,
    KRONECKER_INVERTED,
    NO_EFFECT,
    RUNNING_MOMENTUM,
    BIASED_RUNNING_VAR,
    SKIP_PATH_MISSING,
    MISSING_MEAN_TERM,
    REPEATS_OVERWRITTEN,
    FLIPPED_KERNEL,
    PADDING_NOT_REMOVED,
    STRIDE_IGNORED,
    TRUNCATED_BPTT,
    GATE_DERIVATIVE,
    UNEXPLAINED,
)
