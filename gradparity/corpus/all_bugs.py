"""Every layer bug of the corpus in one list: ``layer_bugs``'s (dense networks) first, then
those of the convolution, normalisation and dropout, embedding and activation, and recurrent
and residual layers (issue 15). The self-test and its tests run ``ALL_BUGS`` against the torch
mirror, and ``AUTODIFF_BUGS`` once more against autodiff of ours' own forward."""

from __future__ import annotations

from gradparity.corpus import conv_bugs, layer_bugs, misc_bugs, norm_bugs, recurrent_bugs
from gradparity.corpus.layer_bugs import Bug

ALL_BUGS: list[Bug] = [
    *layer_bugs.BUGS,
    *conv_bugs.BUGS,
    *norm_bugs.NORM_BUGS,
    *misc_bugs.BUGS,
    *recurrent_bugs.BUGS,
]

# Why a bug is left out of the autodiff run: what autodiff of ours' own forward cannot see or
# label (measured; each would be a finding elsewhere, or none, there).
NOT_THROUGH_AUTODIFF: dict[str, str] = {
    "running_momentum_inverted": "autodiff compares gradients, not running statistics",
    "dropout_not_scaled": "autodiff runs ours' own forward, so the missing scale is found in "
    "the input gradient, not in the output",
    "embedding_grad_overwritten": "integer indices do not run on tensors as a float input",
    "rnn_bptt_truncated": "the truncation test reruns a torch recurrent module, which autodiff "
    "has not got",
}

AUTODIFF_BUGS: list[Bug] = [b for b in ALL_BUGS if b.name not in NOT_THROUGH_AUTODIFF]
